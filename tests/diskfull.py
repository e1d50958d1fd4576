"""A real full disk for tests: a small tmpfs mounted on a fresh directory, filled and freed on demand."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FILLER = "filler"
CHUNK = b"\0" * 65536


@contextmanager
def small_tmpfs(size_mb: int = 16) -> Iterator[Path]:
    """Mount a tmpfs of size_mb on a new temporary directory; always unmounted afterwards.

    Needs root (CAP_SYS_ADMIN). Where mounting is not permitted the test fails and says why: a
    skipped disk-full test would look like a passing one.
    """
    where = Path(tempfile.mkdtemp(prefix="ep-diskfull-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        # Lazy: an engine the test forgot to dispose must not leave the mount behind.
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
        where.rmdir()


def fill(where: Path) -> int:
    """Write a filler file until the file system is full; returns its size in bytes."""
    written = 0
    with open(where / FILLER, "wb", buffering=0) as out:
        while True:
            try:
                written += out.write(CHUNK)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # The last partial blocks: byte by byte would be slow, so halve the chunk until nothing fits.
        size = len(CHUNK) // 2
        while size:
            try:
                written += out.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2
    return written


def free(where: Path) -> None:
    """Delete the filler: space returns."""
    os.unlink(where / FILLER)
