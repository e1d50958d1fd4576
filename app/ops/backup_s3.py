"""The backup tool's S3 side: object names, error messages, streaming downloads and retention."""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import zlib
from datetime import date, datetime, timedelta
from pathlib import Path

from app.core import aws
from app.core.settings import Settings
from app.ops import backup_crypto
from app.ops.backup_files import CHUNK, BackupError, NoBackup

# the backup tool logs as one logger, whichever of its modules speaks
log = logging.getLogger("app.ops.backup")


def latest_key(settings: Settings) -> str:
    return f"{settings.app_name}.db.gz"


def dated_key(settings: Settings, kind: str, now: datetime) -> str:
    stamp = now.strftime("%y%m%d" if kind == "date" else "%y%m%d%H%M%S")
    return f"{settings.app_name}_{stamp}.db.gz"


def key_date(settings: Settings, key: str) -> date | None:
    """The date in a dated copy's key (YYMMDD or YYMMDDhhmmss), or None for any other key."""
    match = re.fullmatch(rf"{re.escape(settings.app_name)}_(\d{{6}})(\d{{6}})?\.db\.gz", key)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%y%m%d").date()
    except ValueError:
        return None


def s3_client(settings: Settings) -> aws.Client:
    return aws.client(settings, "s3")


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def s3_problem(exc: BaseException, settings: Settings) -> str:
    """One line for a boto3/botocore failure; never the keys."""
    from botocore import exceptions as bce

    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, bce.ClientError) and isinstance(cause, bce.ClientError):
        exc = cause  # boto3's S3UploadFailedError wraps the ClientError
    endpoint = settings.aws_endpoint_url or f"AWS S3 ({settings.aws_region})"
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectTimeoutError | bce.ConnectionClosedError):
        return f"cannot reach S3 at {endpoint}: {exc}"
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or give the host a role)"
    code = _error_code(exc)
    if code == "NoSuchBucket":
        return f"bucket {settings.backup_s3_bucket!r} does not exist at {endpoint}"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return f"S3 refused the request ({code}): check the AWS keys and the bucket policy"
    if code:
        message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return f"S3 error {code}: {message}".rstrip(": ")
    return f"S3 failed: {type(exc).__name__}: {exc}"


def is_s3_error(exc: BaseException) -> bool:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, BotoCoreError | ClientError | Boto3Error)


class _Counting:
    """Wraps a response body to count the compressed bytes read through it."""

    def __init__(self, body: backup_crypto.Reader) -> None:
        self._body = body
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._body.read(size)
        self.count += len(data)
        return data


class _Prefixed:
    """A reader that gives back bytes already read from a stream before the rest of it."""

    def __init__(self, head: bytes, body: backup_crypto.Reader) -> None:
        self._head = head
        self._body = body

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            data: bytes = self._body.read(size)
            return data
        if size < 0:
            data, self._head = self._head + self._body.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


def download(
    s3: aws.Client, bucket: str, key: str, dest: Path, encryption_key: str = ""
) -> tuple[dict[str, str], int]:
    """Stream s3://bucket/key (decrypted when it was encrypted) through gunzip into dest; returns
    (metadata, bytes downloaded). Plain and encrypted backups both restore, told apart by their
    first bytes.

    Raises NoBackup when the key is missing, BackupError("corrupt …") for bad gzip data, and
    BackupError for an encrypted backup without the right key.
    """
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _error_code(exc) in ("NoSuchKey", "404"):
            raise NoBackup(f"no backup at s3://{bucket}/{key}") from None
        raise
    body = _Counting(response["Body"])
    head = body.read(len(backup_crypto.MAGIC))
    try:
        if head == backup_crypto.MAGIC:
            source: backup_crypto.Reader = backup_crypto.DecryptingReader(encryption_key, body)
        else:
            source = _Prefixed(head, body)
        # typeshed asks a gzip source for seek() too; reading forward, gzip never calls it, and these
        # stream readers cannot offer it.
        with (
            gzip.GzipFile(fileobj=source, mode="rb") as unzipped,  # type: ignore[call-overload]
            open(dest, "wb") as out,
        ):
            shutil.copyfileobj(unzipped, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
    except backup_crypto.DecryptError as exc:
        raise BackupError(f"s3://{bucket}/{key}: {exc}") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise BackupError(f"corrupt download s3://{bucket}/{key}: not a complete gzip file ({exc})") from None
    metadata = {k.lower(): v for k, v in (response.get("Metadata") or {}).items()}
    return metadata, body.count


def apply_retention(settings: Settings, s3: aws.Client, today: date) -> list[str]:
    """Delete dated copies whose key date is more than BACKUP_RETENTION_DAYS before today."""
    cutoff = today - timedelta(days=settings.backup_retention_days)
    old = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.backup_s3_bucket, Prefix=f"{settings.app_name}_"):
        for item in page.get("Contents", []):
            day = key_date(settings, item["Key"])
            # the latest object and anything not named like a dated copy never match
            if day is not None and day < cutoff:
                old.append(item["Key"])
    for start in range(0, len(old), 1000):
        batch = old[start : start + 1000]
        response = s3.delete_objects(
            Bucket=settings.backup_s3_bucket,
            Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
        )
        errors = response.get("Errors") or []
        if errors:
            raise BackupError(f"could not delete {errors[0].get('Key')}: {errors[0].get('Message')}")
    for key in old:
        log.info("retention: deleted s3://%s/%s", settings.backup_s3_bucket, key)
    return old
