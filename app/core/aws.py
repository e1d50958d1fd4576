"""boto3 clients built from the settings, so keys and endpoints from 1Password or .env reach boto3."""

from __future__ import annotations

from typing import Any, TypeAlias

from app.core.settings import Settings

# boto3 ships no type hints (its stubs are separate packages, heavy and per service): a client is
# Any to mypy, under this one name so every use of one is easy to find.
Client: TypeAlias = Any


def client(settings: Settings, service: str, **config: object) -> Client:
    """A boto3 client for `service` (s3, sqs, sns).

    Explicit settings win; anything left empty falls back to boto3's own chain, which reads
    AWS_ENDPOINT_URL, the key variables, ~/.aws and instance roles by itself.
    """
    import boto3  # heavy: only the features that talk to AWS import it
    from botocore.config import Config

    kwargs: dict[str, str | None] = {"region_name": settings.aws_region}
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        kwargs["aws_access_key_id"] = settings.aws_access_key_id
        kwargs["aws_secret_access_key"] = settings.aws_secret_access_key
    defaults: dict[str, object] = {
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"max_attempts": 3, "mode": "standard"},
    }
    return boto3.client(service, config=Config(**{**defaults, **config}), **kwargs)
