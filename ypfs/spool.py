"""Receive an upload body with bounded memory: in RAM up to a threshold, then on disk.

While the bytes stream in they are counted against the size limit (the request
is refused the moment it passes it), hashed with SHA-256 for de-duplication,
and their first bytes kept for format sniffing.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from media.sniff import HEAD_BYTES

CHUNK = 1024 * 1024  # falcon's multipart stream finds the boundary per read: fewer, larger reads


class TooLarge(Exception):
    """The body passed the byte limit; nothing more is read."""


class Spool:
    """One received file: ``source`` is its bytes (small) or a path on disk (large)."""

    def __init__(self, threshold: int, spool_dir: Path):
        self.threshold = threshold
        self.spool_dir = spool_dir
        self._mem: io.BytesIO | None = io.BytesIO()
        self._file: BinaryIO | None = None
        self.path: Path | None = None
        self.size = 0
        self.head = b""
        self._sha = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]
        self._sha.update(chunk)
        self.size += len(chunk)
        if self._mem is not None and self.size > self.threshold:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="upload-", dir=self.spool_dir)
            self._file, self.path = os.fdopen(fd, "w+b"), Path(name)
            self._file.write(self._mem.getbuffer())
            self._mem = None
        (self._mem if self._mem is not None else self._file).write(chunk)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def source(self) -> bytes | Path:
        if self._mem is not None:
            return self._mem.getvalue()
        self._file.flush()
        return self.path

    def reader(self) -> BinaryIO:
        """A stream of the whole body from its start (for the store)."""
        if self._mem is not None:
            return io.BytesIO(self._mem.getbuffer())
        self._file.flush()
        return open(self.path, "rb")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.path.unlink(missing_ok=True)
            self._file = None
        self._mem = None

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def receive(stream: BinaryIO, spool: Spool, limit: int) -> Spool:
    """Copy ``stream`` into ``spool``; TooLarge as soon as it passes ``limit`` bytes."""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return spool
        if spool.size + len(chunk) > limit:
            raise TooLarge(f"the photo is larger than the {limit} byte limit")
        spool.write(chunk)
