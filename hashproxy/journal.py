"""Pending purges of nodes that were down: one durable journal per ypws node, shared by every worker.

A PURGE that cannot reach a node (it is marked down, or the call fails) is
appended here instead of being lost; the node's disk cache survives its restart,
so without the journal it would serve the purged bytes again on rejoin. Before a
node is given traffic again, one process replays the journal to it (replay.py)
and removes what it replayed.

Files under ``{data_dir}/hashproxy/``, opened per operation (an fd inherited
across fork would share its flock between workers):

    purge-{node}.journal   a 32-byte header, then one path per line
    purge-{node}.lock      flock: appends and commits, a few syscalls each
    purge-{node}.replay    flock held by the one process replaying (non-blocking)

Header: magic, ``flush`` (the whole cache must go), ``gen`` (bumped on each
overflow), ``count`` and ``used`` (line bytes). Lines past ``used`` are a torn
append that was never acknowledged, and are ignored. Past ``max_paths`` or
``max_bytes`` the lines are dropped and ``flush`` is set: a whole-cache flush
covers every path queued before it. Lines queued after an overflow are kept, so
a flush already under way cannot swallow them.
"""

from __future__ import annotations

import fcntl
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from cluster.locks import try_flock

HEADER = struct.Struct("<4sB3xQQQ")  # magic, flush, gen, count, used
MAGIC = b"YPJ1"


@dataclass(frozen=True)
class Pending:
    """What one replay takes from a journal: a whole flush, or these paths; ``end`` bytes of lines."""

    flush: bool
    gen: int
    paths: tuple[str, ...]
    end: int

    def __bool__(self) -> bool:
        return self.flush or bool(self.paths)


class PurgeJournal:
    """Per-node pending purges, bounded in paths and bytes, safe across processes."""

    def __init__(self, names: Sequence[str], directory: Path, max_paths: int = 10000, max_bytes: int = 1 << 20):
        self.names = tuple(names)
        self.directory = Path(directory)
        self.max_paths = max(1, max_paths)
        self.max_bytes = max(64, max_bytes)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, node: int, suffix: str) -> Path:
        return self.directory / f"purge-{self.names[node]}.{suffix}"

    @contextmanager
    def _locked(self, node: int) -> Iterator[None]:
        fd = os.open(self._path(node, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _header(self, fd: int) -> tuple[bool, int, int, int]:
        raw = os.pread(fd, HEADER.size, 0)
        if len(raw) < HEADER.size:
            return False, 0, 0, 0
        magic, flush, gen, count, used = HEADER.unpack(raw)
        if magic != MAGIC:
            return True, 0, 0, 0  # not ours or damaged: do not trust what it claims, flush instead
        return bool(flush), gen, count, used

    def append(self, node: int, paths: Sequence[str]) -> bool:
        """Queue paths for a node, durably; True when the journal overflowed (a whole flush is due)."""
        lines = "".join(f"{p}\n" for p in paths).encode()
        if any("\n" in p for p in paths):
            raise ValueError("a purge path cannot contain a newline")
        with self._locked(node):
            fd = os.open(self._path(node, "journal"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                flush, gen, count, used = self._header(fd)
                overflow = count + len(paths) > self.max_paths or used + len(lines) > self.max_bytes
                if overflow:
                    flush, gen, count, used = True, gen + 1, 0, 0
                    os.ftruncate(fd, HEADER.size)
                else:
                    os.pwrite(fd, lines, HEADER.size + used)
                    count, used = count + len(paths), used + len(lines)
                os.pwrite(fd, HEADER.pack(MAGIC, flush, gen, count, used), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        return overflow

    def pending(self, node: int) -> bool:
        """Anything queued for the node (cheap: one header read, no lock)."""
        try:
            fd = os.open(self._path(node, "journal"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            flush, _, count, used = self._header(fd)
        finally:
            os.close(fd)
        return flush or count > 0 or used > 0

    def snapshot(self, node: int) -> Pending:
        """What is queued now, to replay and then ``commit``."""
        with self._locked(node):
            try:
                fd = os.open(self._path(node, "journal"), os.O_RDONLY)
            except FileNotFoundError:
                return Pending(False, 0, (), 0)
            try:
                flush, gen, _, used = self._header(fd)
                data = os.pread(fd, used, HEADER.size) if used else b""
            finally:
                os.close(fd)
        end = data.rfind(b"\n") + 1
        paths = tuple(dict.fromkeys(data[:end].decode("utf-8", "replace").splitlines()))
        return Pending(flush, gen, paths, end)

    def commit(self, node: int, done: Pending) -> bool:
        """Drop what a replay delivered; True when nothing is left queued.

        An overflow since the snapshot (``gen`` moved) leaves everything in place: the
        flush it asked for has not been sent yet.
        """
        path = self._path(node, "journal")
        with self._locked(node):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                return True
            try:
                flush, gen, count, used = self._header(fd)
                if gen != done.gen:
                    return False
                rest = os.pread(fd, used - done.end, HEADER.size + done.end) if used > done.end else b""
            finally:
                os.close(fd)
            flush = flush and not done.flush
            left = rest.count(b"\n")
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, HEADER.pack(MAGIC, flush, gen, left, len(rest)) + rest)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        return not flush and not rest

    def try_replay_lock(self, node: int) -> int | None:
        """An fd holding the node's replay lock, or None if another process is replaying it."""
        return try_flock(self._path(node, "replay"), 0o600)

    @staticmethod
    def release(fd: int) -> None:
        os.close(fd)
