"""The blob-store interface every backend implements, and its errors.

One small contract (tests/test_storage_contract.py runs the same suite against
every backend): whole-object puts that are atomic (a reader sees the old object,
no object, or the whole new one, never a part), reads of whole objects, ranges
and streams, stat, delete, sorted listing by prefix, create-if-absent, copy, and
compare-and-swap (``get_versioned`` then ``replace``) for documents that several
writers edit (a photo's record: its owner, the placeholder backfill, a delete).
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from cluster.errors import BackendError, BackendMissing

KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
MAX_KEY_LEN = 512


class StorageError(BackendError):
    """Base class of storage failures (a BackendError: the web layer answers 503 unless caught)."""


class NotFound(StorageError, BackendMissing, KeyError):
    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "not found"


class AlreadyExists(StorageError):
    """put_if_absent found the key taken."""


class Conflict(StorageError):
    """replace found the object changed (or gone) since it was read: read it again, redo the
    change. Uncaught, it is a 503 with Retry-After like any storage failure."""


class StorageUnavailable(StorageError):
    """The backend could not be reached or kept failing after retries."""


class StorageAuthError(StorageError):
    """The backend refused our credentials."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # unix seconds
    etag: str = ""


def check_key(key: str) -> str:
    """Defence in depth: keys come from storage.keys, but no backend trusts that blindly."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LEN or not KEY_RE.fullmatch(key) or ".." in key:
        raise ValueError(f"invalid storage key: {key!r}"[:160])
    return key


def check_prefix(prefix: str) -> str:
    if prefix == "":
        return prefix
    check_key(prefix.rstrip("/"))
    return prefix


Data = bytes | bytearray | memoryview | BinaryIO


def as_stream(data: Data) -> BinaryIO:
    return io.BytesIO(bytes(data)) if isinstance(data, (bytes, bytearray, memoryview)) else data


class BlobStore(ABC):
    """An object store. Implementations are safe to share between threads."""

    name: str = "abstract"

    @abstractmethod
    def put(self, key: str, data: Data, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store the whole object atomically and durably; return its info once stored."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Like put, but raise AlreadyExists if the key is taken (best effort on S3)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; NotFound if absent."""

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object; the caller closes it."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time; NotFound if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; absent keys are not an error."""

    @abstractmethod
    def list(self, prefix: str = "", start_after: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in lexicographic order, after ``start_after``."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The whole object and its version tag (the etag ``replace`` compares); NotFound if absent."""

    @abstractmethod
    def replace(self, key: str, data: bytes, etag: str, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Like put, but only over the very version ``get_versioned`` returned as ``etag``:
        Conflict if the object was written or deleted since (nothing is written then)."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Store the object at ``src`` under ``dst`` too, atomically and durably; NotFound if
        ``src`` is absent. Each backend copies where the bytes are (a hard link, S3
        CopyObject): the bytes never travel through this process."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except NotFound:
            return False

    def close(self) -> None:
        """Release connections; the default holds none."""
