"""Client-side encryption of backups with Fernet (the `cryptography` library), in chunks so a large
database never has to sit in memory whole.

Layout: MAGIC, then records of a 4-byte big-endian length and one Fernet token. Each token holds
an 8-byte chunk number, a 1-byte "last chunk" flag and up to CHUNK bytes of the gzip stream, so a
record that is dropped, repeated, reordered or cut off is refused, not silently restored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

MAGIC = b"EPBACKUP-FERNET-1\n"
CHUNK = 1024 * 1024
_LENGTH = struct.Struct(">I")
_HEADER = struct.Struct(">QB")
# A Fernet token of CHUNK bytes is about 4/3 of it plus a little; anything far larger is not ours.
MAX_TOKEN = CHUNK * 2


class DecryptError(ValueError):
    """An encrypted backup that cannot be read with the configured key; the message says why."""


def generate_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


class Reader(Protocol):
    """What the backup streams are read through: a file, an S3 body, or the readers wrapping them."""

    def read(self, size: int = -1, /) -> bytes: ...


def _fernet(key: str) -> Fernet:
    from cryptography.fernet import Fernet

    return Fernet(key.encode("ascii"))


def encrypt_file(key: str, source: IO[bytes], out: IO[bytes]) -> None:
    """Encrypt the whole of `source` into `out`."""
    fernet = _fernet(key)
    out.write(MAGIC)
    index = 0
    chunk = source.read(CHUNK)
    while True:
        following = source.read(CHUNK)
        last = not following
        token = fernet.encrypt(_HEADER.pack(index, 1 if last else 0) + chunk)
        out.write(_LENGTH.pack(len(token)))
        out.write(token)
        if last:
            return
        chunk, index = following, index + 1


def _read_exact(stream: Reader, size: int) -> bytes:
    parts = []
    while size:
        data = stream.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


class DecryptingReader:
    """A file-like reader of the plaintext behind an encrypted stream whose MAGIC was already read."""

    def __init__(self, key: str | None, stream: Reader) -> None:
        if not key:
            raise DecryptError(
                "the backup is encrypted: set BACKUP_ENCRYPTION_KEY to the key it was made with"
            )
        self._fernet = _fernet(key)
        self._stream = stream
        self._chunks = self._plain_chunks()
        self._buffer = b""
        self._done = False

    def _plain_chunks(self) -> Iterator[bytes]:
        from cryptography.fernet import InvalidToken

        index = 0
        while True:
            length_bytes = _read_exact(self._stream, _LENGTH.size)
            if len(length_bytes) < _LENGTH.size:
                raise DecryptError("the encrypted backup is cut off (no last chunk)")
            (length,) = _LENGTH.unpack(length_bytes)
            if not 0 < length <= MAX_TOKEN:
                raise DecryptError("the encrypted backup is damaged (a chunk length is impossible)")
            token = _read_exact(self._stream, length)
            if len(token) < length:
                raise DecryptError("the encrypted backup is cut off in the middle of a chunk")
            try:
                plain = self._fernet.decrypt(token)
            except InvalidToken:
                raise DecryptError(
                    "cannot decrypt the backup: BACKUP_ENCRYPTION_KEY is not the key it was made with, "
                    "or the file was changed"
                ) from None
            number, last = _HEADER.unpack(plain[: _HEADER.size])
            if number != index:
                raise DecryptError(f"the encrypted backup is damaged (chunk {number} where {index} belongs)")
            yield plain[_HEADER.size :]
            if last:
                if self._stream.read(1):
                    raise DecryptError("the encrypted backup has data after its last chunk")
                return
            index += 1

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                self._done = True
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data
