"""Where the raw setting values come from: config/app.conf defaults, 1Password, .env and the environment."""

from __future__ import annotations

import os
from pathlib import Path

from app.core import settings_parsers
from app.core.settings_defaults import OP_CONNECT_NAMES, SettingsError, config_defaults


def raw_values(env: dict[str, str] | None, dotenv_path: str | os.PathLike[str] | None) -> dict[str, str]:
    """Defaults < 1Password (when configured) < .env < the real environment."""
    defaults = config_defaults()
    local: dict[str, str] = {}
    path = Path(dotenv_path) if dotenv_path is not None else Path(".env")
    if path.is_file():
        from dotenv import dotenv_values  # python-dotenv (~2 ms of start-up): only where a .env file is

        local.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    source = os.environ if env is None else env
    local.update({k: v for k, v in source.items() if k in defaults or k.startswith(("OUTPUT_TYPE_",))})
    values = {**defaults, **local}
    op = {name: values.get(name, "").strip() for name in OP_CONNECT_NAMES}
    if any(op.values()):
        missing = [name for name, value in op.items() if not value]
        if missing:
            together = ", ".join(OP_CONNECT_NAMES)
            raise SettingsError(missing[0], f"must be set too when any of {together} is")
        from app.core import onepassword  # only a 1Password deployment pays for httpx

        fetched = onepassword.read(
            server=op["OP_CONNECT_SERVER"],
            token=op["OP_CONNECT_TOKEN"],
            vault=op["OP_VAULT"],
            app_name=values.get("APP_NAME", "").strip() or defaults["APP_NAME"],
            aws_region=values.get("AWS_DEFAULT_REGION", "").strip() or defaults["AWS_DEFAULT_REGION"],
            known=frozenset(defaults),
            attempts=settings_parsers.whole(values, "OP_CONNECT_ATTEMPTS", 1, 100),
            timeout=settings_parsers.seconds(values, "OP_CONNECT_TIMEOUT", 0.1, 300),
        ).values()
        # An empty line in .env (`TELEGRAM_BOT_TOKEN=`, as .env.example has) means "not set here", so it
        # must not blank a value the vault holds; a non-empty one still wins.
        overrides = {k: v for k, v in local.items() if v.strip() or k not in fetched}
        values = {**defaults, **fetched, **overrides, "_ONEPASSWORD": f"1Password (vault {op['OP_VAULT']})"}
    return values
