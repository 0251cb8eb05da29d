"""The node's image cache: one folder of entry files and one shared index, for all workers.

Layout under the cache folder::

    index.sqlite3        keys, sizes, eviction state, counters (ypws.index)
    entries/ab/cdef...   one file per entry, named by the xxh3-128 of its key
    tmp/                 entries being written (renamed into entries/ when whole)
    locks/NN             flock stripes: one fill per key at a time, node-wide

A hit is served from the entry file alone, with no index read: the file exists
only once it is whole (written to tmp/, then renamed), and its header carries
its key, body length and xxh3 digest, checked when it is read, so neither a torn
write nor a hash collision can be served. Each process remembers the entries it
read recently (bounded, ``memo_bytes``) and re-serves them after one ``stat``
shows the shared file is still the same file; an evicted or purged entry fails
that check at once. Hits are reported to the index in batches (the eviction
order lags by at most ``flush_interval``). Eviction happens in the index first,
then the files go.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import xxhash

from .index import open_index
from .stats import Stats

MAGIC = b"YPC1"
PREAMBLE = struct.Struct("<4sII")  # magic, header length, body length
LOCK_STRIPES = 256
#: bodies up to this size are read whole (and checked against their digest) on each hit
INLINE_MAX = 1 << 20
MAX_HEADER = 16384


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def body_digest(body: bytes | memoryview) -> str:
    """The strong validator of an entry's bytes (also its ETag)."""
    return xxhash.xxh3_64_hexdigest(body)


@dataclass(slots=True)
class Entry:
    key: str
    meta: dict[str, Any]
    digest: str
    size: int                        # body bytes
    body: bytes | memoryview | None  # the body when inline (<= INLINE_MAX), else None
    path: str | None
    offset: int                      # where the body starts in the file

    def open_body(self) -> BinaryIO:
        """A file positioned at the body (for bodies too large to be inline); the caller closes it.

        The entry may be evicted meanwhile: the open file keeps its bytes readable.
        """
        fh = open(self.path, "rb")
        fh.seek(self.offset)
        return fh

    def read_range(self, start: int, length: int) -> bytes:
        if self.body is not None:
            return bytes(self.body[start:start + length])
        with open(self.path, "rb") as fh:
            return os.pread(fh.fileno(), length, self.offset + start)


class DiskCache:
    """Byte-bounded, shared by every process opening the same folder, warm across restarts."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, policy: str = "s4lru", *,
                 memo_bytes: int = 32 << 20, flush_interval: float = 0.5, flush_batch: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.policy = policy
        self.index = open_index(self.root / "index.sqlite3", max_bytes, policy)
        self.stats = Stats()
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self.clock = clock
        self._entries = self.root / "entries"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        for d in (self._tmp, self._locks):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self._entries / f"{i:02x}").mkdir(parents=True, exist_ok=True)
        self._entries_s = str(self._entries)
        self.memo_bytes = memo_bytes
        self._memo: dict[str, tuple[tuple[int, int, int], Entry]] = {}
        self._memo_size = 0
        self._hits: list[str] = []
        self._hits_lock = threading.Lock()
        self._last_flush = clock()

    # -- paths ---------------------------------------------------------------------------
    def path_for(self, key: str) -> str:
        h = xxhash.xxh3_128_hexdigest(key.encode())
        return f"{self._entries_s}/{h[:2]}/{h[2:]}"

    @property
    def entry_capacity(self) -> int:
        """The largest entry the policy can hold (one segment's worth for segmented LRU)."""
        return self.index.max_entry

    # -- reads ---------------------------------------------------------------------------
    def get(self, key: str, touch: bool = True) -> Entry | None:
        """The entry, or None on a miss. ``touch`` reports the hit to the eviction policy.

        Entries this process read recently are kept as checked bytes (``memo_bytes`` in
        all) and re-served after one ``stat`` shows the shared entry file is still the
        same file (inode, mtime, size): evicted or purged entries are never served.
        """
        path = self.path_for(key)
        memo = self._memo.get(key)
        if memo is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self._forget(key)
                return None
            if memo[0] == (st.st_ino, st.st_mtime_ns, st.st_size):
                if touch:
                    self.touch(key)
                return memo[1]
            self._forget(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            total = st.st_size
            data = os.read(fd, total if total <= INLINE_MAX + MAX_HEADER else MAX_HEADER)
        finally:
            os.close(fd)
        entry = self._parse(key, path, data, total)
        if entry is None:
            self._drop_corrupt(key, path)
            return None
        if entry.body is not None and self.memo_bytes:
            if self._memo_size + total > self.memo_bytes:
                self._memo.clear()
                self._memo_size = 0
            self._memo[key] = ((st.st_ino, st.st_mtime_ns, total), entry)
            self._memo_size += total
        if touch:
            self.touch(key)
        return entry

    def _forget(self, key: str) -> None:
        memo = self._memo.pop(key, None)
        if memo is not None:
            self._memo_size -= memo[0][2]

    @staticmethod
    def _parse(key: str, path: str, data: bytes, total: int) -> Entry | None:
        if len(data) < PREAMBLE.size:
            return None
        magic, hlen, blen = PREAMBLE.unpack_from(data)
        start = PREAMBLE.size + hlen
        if magic != MAGIC or start + blen != total or hlen > MAX_HEADER or len(data) < start:
            return None
        try:
            header = json.loads(data[PREAMBLE.size:start])
        except ValueError:
            return None
        if header.get("key") != key:
            return None
        body = None
        if len(data) == total:
            body = memoryview(data)[start:]
            if body_digest(body) != header["digest"]:
                return None
        return Entry(key, header["meta"], header["digest"], blen, body, path, start)

    def _drop_corrupt(self, key: str, path: str) -> None:
        with self.fill_lock(key):
            _unlink(path)
            self.index.remove([key])
        self.stats.inc("corrupt")

    # -- writes --------------------------------------------------------------------------
    def put(self, key: str, body: bytes, meta: dict[str, Any]) -> Entry | None:
        """Store an entry (call under ``fill_lock(key)``); None if it is too large or the policy's
        admission rule turns it away (the caller serves the body once without keeping it)."""
        digest = body_digest(body)
        header = json.dumps({"key": key, "digest": digest, "meta": meta}, separators=(",", ":")).encode()
        total = PREAMBLE.size + len(header) + len(body)
        if total > self.entry_capacity or len(header) > MAX_HEADER:
            return None
        path = self.path_for(key)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(PREAMBLE.pack(MAGIC, len(header), len(body)))
                fh.write(header)
                fh.write(body)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        evicted = self.index.insert(key, total)
        if evicted is None:  # the admission rule said no: served this once, not kept
            _unlink(path)
            self.stats.inc("not_admitted")
            return None
        self._unlink(evicted, keep=key)
        self.stats.inc("fills")
        inline = body if len(body) <= INLINE_MAX else None
        return Entry(key, meta, digest, len(body), inline, path, PREAMBLE.size + len(header))

    @contextmanager
    def fill_lock(self, key: str, timeout: float = 120.0) -> Iterator[None]:
        """Node-wide exclusive lock for one key (striped): concurrent misses fill once."""
        stripe = xxhash.xxh32_intdigest(key.encode()) % LOCK_STRIPES
        fd = os.open(self._locks / f"{stripe:03d}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cache fill lock for {key!r} held too long") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock

    def purge(self, keys: list[str]) -> list[str]:
        """Remove entries; return the keys that were held."""
        removed = []
        for key in keys:
            with self.fill_lock(key):
                had_file = _unlink(self.path_for(key))
                if self.index.remove([key]) or had_file:
                    removed.append(key)
        if removed:
            self.stats.inc("purged", len(removed))
        return removed

    def purge_all(self) -> int:
        """Empty the cache (PURGE /photos/): how hashproxy replays purges it could not keep track of.

        Index rows go in one transaction, then every entry file, including files the
        index never heard of; a fill racing with this leaves at worst a row without a
        file, which reads as a miss. Returns the entries the index held.
        """
        removed = len(self.index.remove(self.index.keys()))
        for sub in self._entries.iterdir():
            for p in sub.iterdir():
                p.unlink(missing_ok=True)
        self._memo.clear()
        self._memo_size = 0
        self.stats.inc("purged", removed)
        return removed

    def _unlink(self, keys: list[str], keep: str | None = None) -> None:
        for key in keys:
            if key != keep:
                _unlink(self.path_for(key))
        if keys:
            self.stats.inc("evictions", len(keys))

    # -- batched reporting ------------------------------------------------------------------
    def touch(self, key: str) -> None:
        self._hits.append(key)
        if len(self._hits) >= self.flush_batch or self.clock() - self._last_flush >= self.flush_interval:
            self.flush()

    def maybe_flush(self) -> None:
        if self.clock() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        """Send queued hits and counter deltas to the index (one transaction)."""
        with self._hits_lock:
            hits, self._hits = self._hits, []
            self._last_flush = self.clock()
        deltas = self.stats.drain()
        if hits or deltas:
            self._unlink(self.index.report(hits, deltas))

    # -- lifecycle -----------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """At start-up: drop temp files, files the index does not know, and index rows without a file;
        then re-apply the size bound (the config may have shrunk it)."""
        removed_tmp = 0
        for p in self._tmp.iterdir():
            p.unlink(missing_ok=True)
            removed_tmp += 1
        known = {self.path_for(k): k for k in self.index.keys()}
        orphans = 0
        for sub in self._entries.iterdir():
            for p in sub.iterdir():
                if str(p) not in known:
                    p.unlink(missing_ok=True)
                    orphans += 1
        missing = [k for p, k in known.items() if not os.path.exists(p)]
        self.index.remove(missing)
        evicted = self.index.rebalance()
        self._unlink(evicted)
        return {"tmp": removed_tmp, "orphans": orphans, "missing": len(missing), "evicted": len(evicted)}

    def totals(self) -> dict[str, float]:
        """Node-wide figures: bytes and entries held, plus every counter (after flushing ours)."""
        self.flush()
        size, entries = self.index.totals()
        return {"bytes": size, "entries": entries, "max_bytes": self.max_bytes, **self.index.counters()}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.index.close()
