"""The node's image cache: one folder of entry files and one shared index, for all workers.

Layout under the cache folder::

    index.sqlite3        keys, sizes, eviction state (ypws.index)
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

**Torn entries.** Entries are not fsynced (a cache is not worth a sync per fill),
so after a crash or power loss a file may be whole-looking but torn: cut short, a
run of zeros in the middle, bytes changed. Nothing torn is ever sent as good:

- the preamble carries an xxh3 of the header, so a damaged header (key, length,
  digests, content type) is a miss;
- a file whose size is not the header's is a miss (a cut file never gets as far
  as a status line);
- a small body (``INLINE_MAX``) is read whole and checked against its digest;
- a large body, streamed from the file, carries one xxh3 per block
  (``BLOCK_SIZE``; more per block past ``MAX_BLOCKS`` blocks) in its header.
  Every block is read, checked, and only then sent, so the check costs hashing
  alone (xxh3 runs at memory speed), not a second read of the file. The first
  block is checked before the answer starts, so a damaged head turns into a
  normal miss (the entry is dropped, storage answers); a block damaged further
  in is found mid-answer, after the status line went out: the entry is dropped
  and the connection is cut short of its Content-Length, so the client sees an
  incomplete response, never a complete 200 with wrong bytes. A Range answer
  reads and checks the blocks it overlaps before it starts (damaged: a miss).
  HEAD reads no body: its headers come from the checked header and are true.

Checking every block on every hit was chosen over the alternatives: reading the
file twice (check, then send) doubles the I/O of every large hit; trusting
entries written since this node booted would also trust a disk that lies, and a
torn entry is exactly the case where the file system's word cannot be taken.
Measured on this project's 2-core box (warm page cache, 500 rounds), reading a
2 MB entry in 256 KiB blocks took 0.553 ms unchecked and 0.561 ms checked (xxh3
of 2 MB: 0.05 ms): under 2 % of the read alone, nothing next to sending 2 MB.

**A full or failing disk.** A cache write (entry, temp file, index, lock file)
that fails with ENOSPC, EIO or any other OS or SQLite error never fails the
request: the body is served uncached from the bytes in hand, the failure is
counted (``write_failures``; ``bypassed`` for fills served uncached), and for
``retry_after`` seconds this process does not try to write again (nor while the
file system has less than ``FULL_MARGIN`` free): then caching resumes by itself.
``degraded()`` says why the cache takes no entries now (for readiness and the
``ypws_cache_degraded`` gauge). A read error of an entry file counts as damage:
the entry is dropped and the request is a miss.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import struct
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import xxhash
from cachetools import LRUCache

from .index import open_index
from .metrics import NodeMetrics

log = logging.getLogger("ypws.cache")

MAGIC = b"YPC2"
PREAMBLE = struct.Struct("<4sIIQ")  # magic, header length, body length, xxh3-64 of the header
LOCK_STRIPES = 256
#: bodies up to this size are read whole (and checked against their digest) on each hit
INLINE_MAX = 1 << 20
MAX_HEADER = 16384
#: larger bodies are checked block by block as they are sent: one xxh3 per block
BLOCK_SIZE = 256 * 1024
MAX_BLOCKS = 512  # past this many, blocks grow (the digests must fit in MAX_HEADER)
#: below this much free space on its file system the cache takes no new entries
FULL_MARGIN = 1 << 20


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def body_digest(body: bytes | memoryview) -> str:
    """The strong validator of an entry's bytes (also its ETag)."""
    return xxhash.xxh3_64_hexdigest(body)


def block_size_for(size: int) -> int:
    """The block a large body is checked in: ``BLOCK_SIZE``, or larger to stay within ``MAX_BLOCKS``."""
    per = -(-size // MAX_BLOCKS)
    return max(BLOCK_SIZE, -(-per // BLOCK_SIZE) * BLOCK_SIZE)


class CorruptEntry(Exception):
    """A cache entry's bytes did not match its digests, or could not be read; it has been dropped."""


@dataclass(slots=True)
class Entry:
    key: str
    meta: dict[str, Any]
    digest: str
    size: int                        # body bytes
    body: bytes | memoryview | None  # the body when inline (<= INLINE_MAX), else None
    path: str | None
    offset: int                      # where the body starts in the file
    block: int = 0                   # large bodies: the size of a checked block
    blocks: tuple[str, ...] = ()     # large bodies: the xxh3 of each block
    ino: int = 0                     # the entry file's inode (so only this file is dropped when damaged)
    cache: "DiskCache | None" = None

    def open_body(self) -> "CheckedBody":
        """The body as a file whose every block is checked before it is returned; the caller closes it.

        The first block is read (and checked) now: damage there raises ``CorruptEntry``
        before anything is sent. The entry may be evicted meanwhile: the open file keeps
        its bytes readable.
        """
        try:
            fh = open(self.path, "rb")
        except OSError as exc:
            self.damaged(f"open failed: {exc}")
        body = CheckedBody(self, fh)
        try:
            body.prefetch()
        except BaseException:
            body.close()
            raise
        return body

    def read_range(self, start: int, length: int) -> bytes:
        if self.body is not None:
            return bytes(self.body[start:start + length])
        first, last = start // self.block, (start + length - 1) // self.block
        try:
            with open(self.path, "rb") as fh:
                data = os.pread(fh.fileno(), min(self.size, (last + 1) * self.block) - first * self.block,
                                self.offset + first * self.block)
        except OSError as exc:
            self.damaged(f"read failed: {exc}")
        view = memoryview(data)
        for i in range(first, last + 1):
            at = (i - first) * self.block
            self.check(i, view[at:at + self.block])
        at = start - first * self.block
        return bytes(view[at:at + length])

    def check(self, i: int, data: bytes | memoryview) -> None:
        """Raise ``CorruptEntry`` (dropping the entry) unless ``data`` is block ``i`` as written."""
        want = min(self.block, self.size - i * self.block)
        if len(data) != want:
            self.damaged(f"block {i} is {len(data)} bytes, not {want}")
        if xxhash.xxh3_64_hexdigest(data) != self.blocks[i]:
            self.damaged(f"block {i} does not match its digest")

    def damaged(self, why: str):
        if self.cache is not None:
            self.cache.drop_damaged(self.key, self.path, self.ino, why)
        raise CorruptEntry(f"cache entry {self.key!r}: {why}")


class CheckedBody:
    """A large entry's body, read block by block; each block is checked before any of it is returned."""

    def __init__(self, entry: Entry, fh) -> None:
        self.entry, self.fh = entry, fh
        self.next_block = 0
        self.data = b""
        self.pos = 0

    def prefetch(self) -> None:
        if not self.data and self.next_block < len(self.entry.blocks):
            self._load()

    def _load(self) -> None:
        e, i = self.entry, self.next_block
        try:
            data = os.pread(self.fh.fileno(), min(e.block, e.size - i * e.block), e.offset + i * e.block)
        except OSError as exc:
            e.damaged(f"read failed: {exc}")
        e.check(i, data)
        self.data, self.pos, self.next_block = data, 0, i + 1

    def read(self, n: int = -1) -> bytes:
        if self.pos >= len(self.data):
            if self.next_block >= len(self.entry.blocks):
                return b""
            self._load()
        if n is None or n < 0:
            parts = [self.data[self.pos:]]
            self.pos = len(self.data)
            while self.next_block < len(self.entry.blocks):
                self._load()
                parts.append(self.data)
                self.pos = len(self.data)
            return b"".join(parts)
        if self.pos == 0 and n >= len(self.data):
            self.pos = len(self.data)
            return self.data
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> "CheckedBody":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DiskCache:
    """Byte-bounded, shared by every process opening the same folder, warm across restarts."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, policy: str = "s4lru", *,
                 memo_bytes: int = 32 << 20, flush_interval: float = 0.5, flush_batch: int = 4096,
                 retry_after: float = 5.0, clock: Callable[[], float] = time.monotonic, node: str = ""):
        """``node``: the ``node`` label of the cache's metrics (default: the folder's name, which
        is the node's name under ``ypws.cache_dir``)."""
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.policy = policy
        self.index = open_index(self.root / "index.sqlite3", max_bytes, policy)
        self.stats = NodeMetrics(node or self.root.name)  # counted here, pushed by flush()
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self.retry_after = retry_after
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
        # key -> ((inode, mtime_ns, size), entry): least recently used out first, ``memo_bytes`` in all;
        # the event loop and the worker's threads share it, and cachetools' caches are not thread-safe
        self._memo: LRUCache[str, tuple[tuple[int, int, int], Entry]] = LRUCache(
            maxsize=max(1, memo_bytes), getsizeof=lambda memo: memo[0][2])
        self._memo_lock = threading.Lock()
        self._hits: list[str] = []
        self._hits_lock = threading.Lock()
        self._last_flush = clock()
        self._held = threading.local()  # lock stripes this thread holds (fill_lock is re-entrant)
        self._fault: tuple[str, float] | None = None  # the last failed write: (why, when)

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
        A damaged or unreadable entry is dropped and reads as a miss.
        """
        path = self.path_for(key)
        with self._memo_lock:
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
        except OSError as exc:
            self.drop_damaged(key, path, 0, f"open failed: {exc}")
            return None
        try:
            st = os.fstat(fd)
            total = st.st_size
            data = os.read(fd, total if total <= INLINE_MAX + MAX_HEADER else MAX_HEADER)
        except OSError as exc:
            self.drop_damaged(key, path, 0, f"read failed: {exc}")
            return None
        finally:
            os.close(fd)
        entry = self._parse(key, path, data, total)
        if entry is None:
            old = data[:4] == b"YPC1"  # the format before block digests: dropped once, on first read
            self.drop_damaged(key, path, st.st_ino, "written by an older version" if old else "damaged header or body")
            return None
        entry.ino, entry.cache = st.st_ino, self
        if entry.body is not None and total <= self.memo_bytes:
            with self._memo_lock:
                self._memo[key] = ((st.st_ino, st.st_mtime_ns, total), entry)
        if touch:
            self.touch(key)
        return entry

    def _forget(self, key: str) -> None:
        with self._memo_lock:
            self._memo.pop(key, None)

    @staticmethod
    def _parse(key: str, path: str, data: bytes, total: int) -> Entry | None:
        if len(data) < PREAMBLE.size:
            return None
        magic, hlen, blen, hdigest = PREAMBLE.unpack_from(data)
        start = PREAMBLE.size + hlen
        if magic != MAGIC or start + blen != total or hlen > MAX_HEADER or len(data) < start:
            return None
        raw = data[PREAMBLE.size:start]
        if xxhash.xxh3_64_intdigest(raw) != hdigest:
            return None
        try:
            header = json.loads(raw)
        except ValueError:
            return None
        if header.get("key") != key:
            return None
        if len(data) == total:
            body = memoryview(data)[start:]
            if body_digest(body) != header["digest"]:
                return None
            return Entry(key, header["meta"], header["digest"], blen, body, path, start)
        block, blocks = header.get("block", 0), tuple(header.get("blocks", ()))
        if block <= 0 or len(blocks) != -(-blen // block):
            return None
        return Entry(key, header["meta"], header["digest"], blen, None, path, start, block, blocks)

    def drop_damaged(self, key: str, path: str, ino: int, why: str) -> None:
        """Remove a damaged entry file (only if it is still the file found damaged: ``ino``, 0 for any)."""
        log.warning("cache entry %r dropped: %s", key, why)
        self._forget(key)
        with self.fill_lock(key):
            try:
                if not ino or os.stat(path).st_ino == ino:
                    _unlink(path)
            except OSError:
                pass
            try:
                self.index.remove([key])
            except sqlite3.Error as exc:
                self._failed("removing a damaged entry from the index", exc)
        self.stats.inc("corrupt")

    # -- writes --------------------------------------------------------------------------
    def put(self, key: str, body: bytes, meta: dict[str, Any]) -> Entry | None:
        """Store an entry (call under ``fill_lock(key)``).

        None if it is too large to admit, if the policy's admission rule turns it away,
        or if the disk cannot take it now (full or failing): the caller then serves the
        bytes it has, uncached.
        """
        digest = body_digest(body)
        fields: dict[str, Any] = {"key": key, "digest": digest, "meta": meta}
        block, blocks = 0, ()
        if len(body) > INLINE_MAX:
            block = block_size_for(len(body))
            view = memoryview(body)
            blocks = tuple(xxhash.xxh3_64_hexdigest(view[i:i + block]) for i in range(0, len(body), block))
            fields.update(block=block, blocks=blocks)
        header = json.dumps(fields, separators=(",", ":")).encode()
        total = PREAMBLE.size + len(header) + len(body)
        if total > self.entry_capacity or len(header) > MAX_HEADER:
            return None
        if not self._may_write(total):
            self.stats.inc("bypassed")
            return None
        path = self.path_for(key)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self._tmp)
            with os.fdopen(fd, "wb") as fh:
                fh.write(PREAMBLE.pack(MAGIC, len(header), len(body), xxhash.xxh3_64_intdigest(header)))
                fh.write(header)
                fh.write(body)
            os.replace(tmp, path)
            tmp = None
            ino = os.stat(path).st_ino
        except OSError as exc:
            self._failed("writing a cache entry", exc)
            self.stats.inc("bypassed")
            return None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        self._forget(key)
        try:
            evicted = self.index.insert(key, total)
        except sqlite3.Error as exc:
            try:  # no row, no file: an entry the index does not count would escape the byte bound
                _unlink(path)
            except OSError:
                pass
            self._failed("adding an entry to the cache index", exc)
            self.stats.inc("bypassed")
            return None
        if evicted is None:  # the admission rule said no: served this once, not kept
            try:
                _unlink(path)
            except OSError:
                pass
            self.stats.inc("not_admitted")
            return None
        self._unlink(evicted, keep=key)
        self.stats.inc("fills")
        inline = body if len(body) <= INLINE_MAX else None
        return Entry(key, meta, digest, len(body), inline, path, PREAMBLE.size + len(header), block, blocks, ino, self)

    # -- faults ----------------------------------------------------------------------------
    def _failed(self, what: str, exc: BaseException, count: bool = True) -> None:
        """Count a failed write and stop writing for ``retry_after`` seconds."""
        if count:
            self.stats.inc("write_failures")
        self._degrade(f"{what}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")

    def _degrade(self, why: str) -> None:
        if self._fault is None or self.clock() - self._fault[1] >= self.retry_after:
            log.warning("cache degraded, serving uncached for %.1fs: %s", self.retry_after, why)
        self._fault = (why, self.clock())

    def _free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _may_write(self, size: int) -> bool:
        """Whether to try writing ``size`` bytes now: not within ``retry_after`` of a failure, nor
        onto a file system that would be left with less than ``FULL_MARGIN`` free."""
        fault = self._fault
        if fault is not None and self.clock() - fault[1] < self.retry_after:
            return False
        try:
            free = self._free_bytes()
        except OSError as exc:
            self._failed("checking free space", exc, count=False)
            return False
        if free < size + FULL_MARGIN:
            self._degrade(f"cache disk full: {free} bytes free")
            return False
        return True

    def degraded(self) -> str | None:
        """Why this cache takes no new entries now (its disk is full, or a write failed in the
        last ``retry_after`` seconds in this process); None when it is healthy."""
        try:
            free = self._free_bytes()
        except OSError as exc:
            return f"cache disk unreadable: {exc.strerror or exc}"
        if free < FULL_MARGIN:
            return f"cache disk full: {free} bytes free"
        fault = self._fault
        if fault is not None and self.clock() - fault[1] < self.retry_after:
            return fault[0]
        return None

    @contextmanager
    def fill_lock(self, key: str, timeout: float = 120.0) -> Iterator[None]:
        """Node-wide exclusive lock for one key (striped): concurrent misses fill once.

        Re-entrant within a thread (a fill may drop a damaged entry of the same stripe).
        If the lock file cannot be opened (disk failing), the fill goes on unlocked: at
        worst two workers fill the same key, which wastes a read, never correctness.
        """
        stripe = xxhash.xxh32_intdigest(key.encode()) % LOCK_STRIPES
        held = self._held.__dict__.setdefault("stripes", set())
        if stripe in held:
            yield
            return
        try:
            fd = os.open(self._locks / f"{stripe:03d}", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._failed("opening a fill lock", exc)
            fd = -1
        if fd < 0:
            yield
            return
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
            held.add(stripe)
            try:
                yield
            finally:
                held.discard(stripe)
        finally:
            os.close(fd)  # releases the lock

    def purge(self, keys: list[str]) -> list[str]:
        """Remove entries; return the keys that were held. The files go first: an index that
        cannot be written (disk full) leaves rows without files, which read as misses."""
        removed = []
        for key in keys:
            with self.fill_lock(key):
                self._forget(key)
                had_file = _unlink(self.path_for(key))
                try:
                    had_row = bool(self.index.remove([key]))
                except sqlite3.Error as exc:
                    self._failed("removing a purged entry from the index", exc)
                    had_row = False
                if had_row or had_file:
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
        try:
            removed = len(self.index.remove(self.index.keys()))
        except sqlite3.Error as exc:
            self._failed("emptying the cache index", exc)
            removed = 0
        for sub in self._entries.iterdir():
            for p in sub.iterdir():
                p.unlink(missing_ok=True)
        with self._memo_lock:
            self._memo.clear()
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
        """Send queued hits to the index (one transaction) and this process's counts to prometheus.

        If the index cannot be written (disk full or failing), the hits are dropped (the
        eviction order lags a little); the counts never need the index.
        """
        with self._hits_lock:
            hits, self._hits = self._hits, []
            self._last_flush = self.clock()
        try:
            if hits:
                try:
                    evicted = self.index.report(hits)
                except sqlite3.Error as exc:
                    self._failed("writing the cache index", exc)
                    return
                self._unlink(evicted)
        finally:
            self.stats.push()

    # -- lifecycle -----------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """At start-up: drop temp files, files the index does not know, and index rows without a file;
        then re-apply the size bound (the config may have shrunk it). A full disk does not stop
        the node: what cannot be written now is left for the next start."""
        removed_tmp = 0
        for p in self._tmp.iterdir():
            p.unlink(missing_ok=True)
            removed_tmp += 1
        try:
            known = {self.path_for(k): k for k in self.index.keys()}
        except sqlite3.Error as exc:  # no index to check the files against: keep them all
            self._failed("reading the cache index", exc, count=False)
            return {"tmp": removed_tmp, "orphans": 0, "missing": 0, "evicted": 0}
        orphans = 0
        for sub in self._entries.iterdir():
            for p in sub.iterdir():
                if str(p) not in known:
                    p.unlink(missing_ok=True)
                    orphans += 1
        missing = [k for p, k in known.items() if not os.path.exists(p)]
        evicted: list[str] = []
        try:
            self.index.remove(missing)
            evicted = self.index.rebalance()
        except sqlite3.Error as exc:
            self._failed("recovering the cache index", exc)
        self._unlink(evicted)
        return {"tmp": removed_tmp, "orphans": orphans, "missing": len(missing), "evicted": len(evicted)}

    def connect(self) -> None:
        """Open this process's index connection now (a worker, as it starts): SQLite creates its
        WAL and shared-memory files with the first connection, which a full disk would refuse."""
        try:
            self.index.totals()
        except sqlite3.Error as exc:
            self._failed("opening the cache index", exc)

    def totals(self) -> dict[str, float]:
        """Node-wide figures from the shared index: bytes and entries held, the size bound, and
        whether the cache is degraded (the counters are prometheus metrics: ``ypws.metrics``).
        An index that cannot be read gives 0 bytes and entries."""
        try:
            size, entries = self.index.totals()
        except sqlite3.Error as exc:
            self._failed("reading the cache index", exc, count=False)
            size, entries = 0, 0
        return {"bytes": size, "entries": entries, "max_bytes": self.max_bytes,
                "degraded": 1.0 if self.degraded() else 0.0}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.index.close()
