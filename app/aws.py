"""boto3 clients built from the settings, so keys and endpoints from 1Password or .env reach boto3."""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def client(settings: Settings, service: str, **config: Any) -> Any:
    """A boto3 client for `service` (s3, sqs, sns).

    Explicit settings win; anything left empty falls back to boto3's own chain, which reads
    AWS_ENDPOINT_URL, the key variables, ~/.aws and instance roles by itself.
    """
    import boto3  # heavy: only the features that talk to AWS import it
    from botocore.config import Config

    kwargs: dict[str, Any] = {"region_name": settings.aws_region}
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        kwargs["aws_access_key_id"] = settings.aws_access_key_id
        kwargs["aws_secret_access_key"] = settings.aws_secret_access_key
    defaults = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 3, "mode": "standard"}}
    return boto3.client(service, config=Config(**{**defaults, **config}), **kwargs)
