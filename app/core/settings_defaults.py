"""Setting names and defaults (config/app.conf) and the error naming a bad one, shared below settings.py.

settings.py builds the typed Settings from these; its 1Password source (onepassword.py) needs the same
names and error, and sits below settings.py, so they live here rather than in either.
"""

from __future__ import annotations

import configparser
from pathlib import Path

CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "app.conf"
# 1Password Connect: these three together switch it on; they are read only from the environment/.env.
OP_CONNECT_NAMES = ("OP_CONNECT_SERVER", "OP_CONNECT_TOKEN", "OP_VAULT")


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"setting {name}: {problem}")
        self.name = name


class _CaseKeeping(configparser.ConfigParser):
    """Keeps each setting name's case (ConfigParser lowercases names; ours are upper case)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def config_defaults() -> dict[str, str]:
    """Every setting name in config/app.conf with its default, sections flattened."""
    parser = _CaseKeeping(interpolation=None)
    parser.read(CONFIG_FILE)
    defaults: dict[str, str] = {}
    for section in parser.sections():
        defaults.update(parser.items(section))
    return defaults
