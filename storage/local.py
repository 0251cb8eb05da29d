"""The embedded store: objects as files under one root folder.

Writes are atomic and durable: bytes go to a temp file in the destination folder,
which is fsynced, renamed over the key, and the folder fsynced, so a crash at any
point leaves either the old object or the new one, never a partial file under
the key. Temp files start with ``.tmp-`` and are never listed.

Nothing is world-readable: objects are written 0640 and folders created 0750
(originals of private photos, GPS included, live here), so only the cluster's
user, and its group, can read the store.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat as stat_mode
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .base import (AlreadyExists, BlobStore, Conflict, Data, NotFound, ObjectInfo, as_stream, check_key,
                   check_prefix)

TMP_PREFIX = ".tmp-"
COPY_CHUNK = 1024 * 1024
FILE_MODE = 0o640
DIR_MODE = 0o750


def _etag(st: os.stat_result) -> str:
    """A file's version: every put writes a new file, so its mtime (ns) and size change."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Renames into ``folder`` take turns, so ``replace`` compares and renames with no write in
    between: an flock on the folder itself, held by its fd (freed if the process dies)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(BlobStore):
    name = "local"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self.root.mkdir(mode=DIR_MODE, exist_ok=True)

    def _make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents below the root, each DIR_MODE (mkdir -p ignores the mode)."""
        missing = []
        while folder != self.root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, DIR_MODE)
            except FileExistsError:
                pass

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_temp(self, path: Path, data: Data) -> str:
        for attempt in range(3):  # a delete may remove the folder, empty, between mkdir and mkstemp
            try:
                self._make_dirs(path.parent)
                fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as fh:
                if isinstance(data, (bytes, bytearray, memoryview)):
                    fh.write(data)
                else:
                    shutil.copyfileobj(as_stream(data), fh, COPY_CHUNK)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, FILE_MODE)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    @staticmethod
    def _commit(tmp: str | Path, path: Path, etag: str | None = None) -> None:
        """Rename a finished temporary file over ``path``, durably (the folder synced too); with
        ``etag``, only over that version of it (Conflict otherwise, and nothing renamed)."""
        try:
            with _folder_lock(path.parent):
                if etag is not None:
                    try:
                        current = _etag(os.stat(path))
                    except FileNotFoundError:
                        raise Conflict(f"{path.name}: deleted since it was read") from None
                    if current != etag:
                        raise Conflict(f"{path.name}: changed since it was read")
                os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def put(self, key: str, data: Data, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._path(key)
        self._commit(self._write_temp(path, data), path)
        return self.stat(key)

    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic create-if-absent
        except FileExistsError:
            raise AlreadyExists(key) from None
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)
        return self.stat(key)

    def copy(self, src: str, dst: str) -> None:
        # objects are never written in place (put replaces the file), so two keys may share
        # one file: a hard link under a temporary name, renamed over ``dst`` as put does
        source, path = self._path(src), self._path(dst)
        if not source.is_file():
            raise NotFound(src)
        for attempt in range(3):  # a delete may remove the folder, empty, between mkdir and link
            tmp = path.parent / f"{TMP_PREFIX}{os.urandom(6).hex()}"
            try:
                self._make_dirs(path.parent)
                os.link(source, tmp)
                break
            except FileNotFoundError:
                if not source.is_file():
                    raise NotFound(src) from None
                if attempt == 2:
                    raise
        self._commit(tmp, path)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            with open(self._path(key), "rb") as fh:
                st = os.fstat(fh.fileno())  # the very file read: a put meanwhile renames a new one in
                if not stat_mode.S_ISREG(st.st_mode):
                    raise NotFound(key)
                return fh.read(), _etag(st)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None

    def replace(self, key: str, data: bytes, etag: str, content_type: str = "application/octet-stream") -> ObjectInfo:
        path = self._path(key)
        try:
            self._commit(self._write_temp(path, data), path, etag)
        except Conflict:
            self._remove_empty_parents(path.parent)  # a deleted object's folder, made again for the temp file
            raise
        return self.stat(key)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(key) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self.open(key) as fh:
            fh.seek(start)
            return fh.read(length)

    def open(self, key: str) -> BinaryIO:
        try:
            path = self._path(key)
            if path.is_dir():
                raise NotFound(key)
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None
        if not os.path.isfile(self._path(key)):
            raise NotFound(key)
        return ObjectInfo(key=key, size=st.st_size, mtime=st.st_mtime, etag=_etag(st))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        _fsync_dir(path.parent)
        self._remove_empty_parents(path.parent)

    def _remove_empty_parents(self, folder: Path) -> None:
        """Folders left empty go too, so time-bucketed prefixes (the purge log) do not leave
        one empty folder per minute behind. A folder holding a writer's temp file is not empty."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): stop here
                return
            folder = folder.parent

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[str]:
        check_prefix(prefix)
        # Walk only the folder the prefix points into, in sorted order, so the
        # output is lexicographic like S3's and memory stays per-folder.
        base_dir, _, _ = prefix.rpartition("/")
        start = self.root / base_dir if base_dir else self.root
        yield from self._walk(start, base_dir + "/" if base_dir else "", prefix, start_after)

    def _walk(self, folder: Path, rel: str, prefix: str, start_after: str) -> Iterator[str]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name + ("/" if e.is_dir() else ""))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX):
                continue
            key = rel + entry.name
            if entry.is_dir():
                sub = key + "/"
                # descend only where the prefix and start_after can still match
                if (sub.startswith(prefix) or prefix.startswith(sub)) and not (start_after and sub < start_after[: len(sub)]):
                    yield from self._walk(Path(entry.path), sub, prefix, start_after)
            elif key.startswith(prefix) and key > start_after:
                yield key
