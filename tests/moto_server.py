"""moto's AWS server on a free port, for tests that drive the real boto3 over HTTP (S3, SQS, SNS)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.support import free_port

# moto accepts any keys; these make boto3 sign requests without looking for real credentials.
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's threaded server; yields its URL (use it as AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def aws_env(url: str, region: str = "eu-west-1") -> dict[str, str]:
    """Settings environment that points the hub's boto3 clients at moto."""
    return {"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": region, **TEST_KEYS}
