"""The cache index every worker of a node shares: keys, sizes, eviction state.

SQLite in WAL mode: readers never block, writers take turns with a busy timeout,
and the file survives restarts, so the cache comes back warm. The eviction state
is that of the matching in-memory policy of ``ypws.policies`` (same moves, same
order; a test replays one trace through both and expects the same hits): each
entry has a queue (``seg``), a ``tick`` (larger is nearer the head; a global tick
counter orders every move) and, for S3-FIFO, a hit credit count (``freq``).

* ``SegmentedIndex``: segmented LRU ("lru", "s2lru", "s4lru").
* ``SieveIndex``: SIEVE (``freq`` is the visited bit, the hand's place is a tick in
  ``meta``), with optional AdaptSize or nth-miss admission ("sieve+adaptsize", "sieve+nthmiss").
* ``S3FIFOIndex``: S3-FIFO (``seg`` 0 is the small FIFO, 1 the main one; the ghost
  FIFO is its own table), with optional AdaptSize or nth-miss admission ("s3fifo+adaptsize",
  "s3fifo+nthmiss"). Nth-miss admission counts the misses of keys not yet admitted in the
  ``rejected`` table (at most ``NTHMISS_MEMORY`` rows, oldest first out).

The index is only written on fills, purges, and batched hit reports (workers
queue their hits and send them every fraction of a second), never per request.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from .policies import (ADAPTSIZE_C, NTHMISS_C, NTHMISS_MEMORY, S3FIFO_MAX_FREQ, S3FIFO_SMALL, SEGMENTS,
                       adaptsize_admits, nthmiss_needed, split_policy)

#: the policies the shared index runs (``ypws.cache_policy``; cluster.config.CACHE_POLICIES)
INDEX_POLICIES = (*SEGMENTS, "sieve", "sieve+adaptsize", "sieve+nthmiss", "s3fifo", "s3fifo+adaptsize",
                  "s3fifo+nthmiss")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key  TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    seg  INTEGER NOT NULL,
    tick INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_age ON entries (seg, tick);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ghost (key TEXT PRIMARY KEY, tick INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ghost_by_age ON ghost (tick);
CREATE TABLE IF NOT EXISTS rejected (key TEXT PRIMARY KEY, misses INTEGER NOT NULL, tick INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rejected_by_age ON rejected (tick);
"""


def open_index(path: str | os.PathLike, max_bytes: int, policy: str, busy_timeout: float = 30.0) -> Index:
    """The shared index for a policy name of the config."""
    if policy not in INDEX_POLICIES:
        raise ValueError(f"cache policy {policy!r} does not run in the shared index; one of {', '.join(INDEX_POLICIES)}")
    eviction, admission = split_policy(policy)
    if eviction in SEGMENTS:
        return SegmentedIndex(path, max_bytes, SEGMENTS[eviction], busy_timeout)
    if eviction == "sieve":
        return SieveIndex(path, max_bytes, admission, busy_timeout)
    return S3FIFOIndex(path, max_bytes, admission, busy_timeout)


class Index:
    """What every policy's index shares: the connection, transactions, lookups, removal.

    A policy subclass sets ``segments`` (how many queues it keeps byte totals for) and
    implements ``insert``, ``_hits_batched``, ``_balance`` and ``max_entry``.
    """

    segments = 1

    def __init__(self, path: str | os.PathLike, max_bytes: int, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    @property
    def max_entry(self) -> int:
        """The largest entry the policy holds."""
        return self.max_bytes

    # -- connection (one per process: never carried across fork) -------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # a lost last commit costs a few cache entries, never consistency
            conn.executescript(SCHEMA)
            if "freq" not in {row[1] for row in conn.execute("PRAGMA table_info(entries)")}:
                try:  # a cache folder from before S3-FIFO: one more column, no data moved
                    conn.execute("ALTER TABLE entries ADD COLUMN freq INTEGER NOT NULL DEFAULT 0")
                except sqlite3.OperationalError as exc:  # another worker added it first
                    if "duplicate column" not in str(exc):
                        raise
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _write(self, fn, *args):
        """Run ``fn(db, *args)`` in one IMMEDIATE transaction (one writer at a time, node-wide)."""
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db, *args)
                db.execute("COMMIT")
                return result
            except BaseException:
                if db.in_transaction:  # SQLite has already rolled back after some errors (SQLITE_FULL)
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    # -- the policy (subclasses) -----------------------------------------------------------
    def insert(self, key: str, size: int) -> list[str] | None:
        """Fill an entry (after a miss); return the keys evicted, or None if it is not admitted."""
        raise NotImplementedError

    def _hits_batched(self, db: sqlite3.Connection, keys: list[str]) -> list[str]:
        raise NotImplementedError

    def _balance(self, db: sqlite3.Connection, seg_bytes: list[int]) -> list[str]:
        """Evict (and move) until the bounds hold; return the evicted keys."""
        raise NotImplementedError

    def _admits(self, db: sqlite3.Connection, key: str, size: int) -> bool:
        """Admit-all for segmented LRU; see ``WholeCacheIndex`` for the admission rules."""
        return True

    # Per-queue byte totals are kept in ``meta`` (bytes0, bytes1, ...) and loaded into a
    # list for the length of one transaction, so no move has to sum a queue.
    def _load_bytes(self, db: sqlite3.Connection) -> list[int]:
        rows = dict(db.execute("SELECT name, value FROM meta WHERE name LIKE 'bytes%'").fetchall())
        if len(rows) != self.segments or any(f"bytes{i}" not in rows for i in range(self.segments)):
            return self._recount(db)
        return [rows[f"bytes{i}"] for i in range(self.segments)]

    def _recount(self, db: sqlite3.Connection) -> list[int]:
        """Per-queue totals from the entries (first use, or after a change of policy)."""
        db.execute("DELETE FROM meta WHERE name LIKE 'bytes%'")
        out = [0] * self.segments
        for seg, total in db.execute("SELECT seg, SUM(size) FROM entries GROUP BY seg"):
            out[min(seg, self.segments - 1)] += total
        return out

    def _store_bytes(self, db: sqlite3.Connection, seg_bytes: list[int]) -> None:
        db.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                       [(f"bytes{i}", b) for i, b in enumerate(seg_bytes)])

    def _removed(self, seg_bytes: list[int], size: int, seg: int) -> None:
        """Account for an entry deleted from queue ``seg`` (a purge, or a file found missing)."""
        seg_bytes[min(seg, self.segments - 1)] -= size

    @staticmethod
    def _next(db: sqlite3.Connection, name: str) -> int:
        """Increment a meta counter and return its new value."""
        row = db.execute(
            "INSERT INTO meta (name, value) VALUES (?, 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value", (name,)
        ).fetchone()
        return row[0]

    @classmethod
    def _next_tick(cls, db: sqlite3.Connection) -> int:
        return cls._next(db, "tick")

    # -- maintenance -------------------------------------------------------------------
    def remove(self, keys: Iterable[str]) -> list[str]:
        """Delete entries; return those that were present."""
        keys = list(keys)

        def run(db: sqlite3.Connection) -> list[str]:
            seg_bytes = self._load_bytes(db)
            gone = []
            for key in keys:
                row = db.execute("DELETE FROM entries WHERE key = ? RETURNING size, seg", (key,)).fetchone()
                if row:
                    self._removed(seg_bytes, row[0], row[1])
                    gone.append(key)
            self._store_bytes(db, seg_bytes)
            return gone

        return self._write(run) if keys else []

    def keys_with_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db().execute(
                "SELECT key FROM entries WHERE key >= ? AND key < ? ORDER BY key", (prefix, prefix + "\U0010ffff")
            ).fetchall()
        return [r[0] for r in rows]

    def keys(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db().execute("SELECT key FROM entries")]

    def get(self, key: str) -> tuple[int, int] | None:
        """(size, segment) of an entry, or None."""
        with self._lock:
            row = self._db().execute("SELECT size, seg FROM entries WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else None

    def rebalance(self) -> list[str]:
        """Re-apply the bounds after a restart with another size or policy; return the evicted keys."""

        def run(db: sqlite3.Connection) -> list[str]:
            db.execute("UPDATE entries SET seg = ? WHERE seg >= ?", (self.segments - 1, self.segments))
            seg_bytes = self._recount(db)
            evicted = self._balance(db, seg_bytes)
            self._store_bytes(db, seg_bytes)
            return evicted

        return self._write(run)

    def totals(self) -> tuple[int, int]:
        """(bytes, entries) held."""
        with self._lock:
            row = self._db().execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM entries").fetchone()
        return row[0], row[1]

    def report(self, hit_keys: list[str]) -> list[str]:
        """One transaction for a worker's batch of hits (promotions); return the keys evicted."""
        if not hit_keys:
            return []
        return self._write(self._hits_batched, hit_keys)


class SegmentedIndex(Index):
    """Byte-bounded segmented LRU: the moves of ``ypws.policies.SegmentedLRUCache``."""

    def __init__(self, path: str | os.PathLike, max_bytes: int, segments: int, busy_timeout: float = 30.0):
        super().__init__(path, max_bytes, busy_timeout)
        self.segments = segments
        self.capacity = max_bytes // segments

    @property
    def max_entry(self) -> int:
        return self.capacity

    def insert(self, key: str, size: int) -> list[str]:
        """Add (or replace) an entry at the head of segment 0; return the keys evicted."""
        if size > self.capacity:
            raise ValueError("entry larger than one segment")
        return self._write(self._insert, key, size)

    def _insert(self, db: sqlite3.Connection, key: str, size: int) -> list[str]:
        seg_bytes = self._load_bytes(db)
        old = db.execute("DELETE FROM entries WHERE key = ? RETURNING size, seg", (key,)).fetchone()
        if old:
            seg_bytes[min(old[1], self.segments - 1)] -= old[0]
        db.execute("INSERT INTO entries (key, size, seg, tick) VALUES (?, ?, 0, ?)", (key, size, self._next_tick(db)))
        seg_bytes[0] += size
        evicted = self._balance(db, seg_bytes)
        self._store_bytes(db, seg_bytes)
        return evicted

    def _hits_batched(self, db: sqlite3.Connection, keys: list[str]) -> list[str]:
        """A batch of hits from one worker: a key hit n times rises n segments (capped), in the
        order of its last hit, and the segments are balanced once at the end. The same moves as
        the in-memory policy when the batch holds one hit; within a larger batch, demotions
        interleave differently."""
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.pop(key, 0) + 1  # re-insert: dict order = order of last hit
        seg_bytes = self._load_bytes(db)
        top = self.segments - 1
        for key, n in counts.items():
            row = db.execute("SELECT seg, size FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                continue
            seg, size = row
            new = min(seg + n, top)
            db.execute("UPDATE entries SET seg = ?, tick = ? WHERE key = ?", (new, self._next_tick(db), key))
            seg_bytes[seg] -= size
            seg_bytes[new] += size
        evicted = self._balance(db, seg_bytes)
        self._store_bytes(db, seg_bytes)
        return evicted

    def _balance(self, db: sqlite3.Connection, seg_bytes: list[int]) -> list[str]:
        """Demote overflowing tails one segment down, top first; evict the tail of segment 0."""
        for seg in range(self.segments - 1, 0, -1):
            while seg_bytes[seg] > self.capacity:
                key, size = db.execute("SELECT key, size FROM entries WHERE seg = ? ORDER BY tick LIMIT 1", (seg,)).fetchone()
                db.execute("UPDATE entries SET seg = ?, tick = ? WHERE key = ?", (seg - 1, self._next_tick(db), key))
                seg_bytes[seg] -= size
                seg_bytes[seg - 1] += size
        evicted = []
        while seg_bytes[0] > self.capacity:
            key, size = db.execute("SELECT key, size FROM entries WHERE seg = 0 ORDER BY tick LIMIT 1").fetchone()
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            seg_bytes[0] -= size
            evicted.append(key)
        return evicted


class WholeCacheIndex(Index):
    """SIEVE and S3-FIFO: any entry up to the whole cache, filled behind the admission rule
    ("" admits all, "adaptsize", "nthmiss"); a subclass says only where an admitted entry goes
    (``_place``)."""

    def __init__(self, path: str | os.PathLike, max_bytes: int, admission: str = "", busy_timeout: float = 30.0):
        super().__init__(path, max_bytes, busy_timeout)
        if admission not in ("", "adaptsize", "nthmiss"):
            raise ValueError(f"unknown admission rule {admission!r}")
        self.admission = admission
        self.adaptsize_c = ADAPTSIZE_C * max_bytes
        self.nthmiss_c = NTHMISS_C * max_bytes

    def _admits(self, db: sqlite3.Connection, key: str, size: int) -> bool:
        """The admission decision, made as the in-memory policy makes it (same coins, same counts)."""
        if not self.admission:
            return True
        decision = self._next(db, "decisions")
        if self.admission == "adaptsize":
            return adaptsize_admits(key, size, decision, self.adaptsize_c)
        row = db.execute("SELECT misses FROM rejected WHERE key = ?", (key,)).fetchone()
        misses = (row[0] if row else 0) + 1
        if misses >= nthmiss_needed(size, self.nthmiss_c):
            if row:
                db.execute("DELETE FROM rejected WHERE key = ?", (key,))
            return True
        if row:  # a key remembered keeps its place: a FIFO of first misses
            db.execute("UPDATE rejected SET misses = ? WHERE key = ?", (misses, key))
            return False
        db.execute("INSERT INTO rejected (key, misses, tick) VALUES (?, 1, ?)", (key, self._next_tick(db)))
        excess = db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0] - NTHMISS_MEMORY  # at most 1025 rows
        if excess > 0:
            db.execute("DELETE FROM rejected WHERE key IN (SELECT key FROM rejected ORDER BY tick LIMIT ?)", (excess,))
        return False

    def insert(self, key: str, size: int) -> list[str] | None:
        if size > self.max_bytes:
            raise ValueError("entry larger than the cache")
        return self._write(self._insert, key, size)

    def _insert(self, db: sqlite3.Connection, key: str, size: int) -> list[str] | None:
        seg_bytes = self._load_bytes(db)
        old = db.execute("DELETE FROM entries WHERE key = ? RETURNING size, seg", (key,)).fetchone()
        if old:
            self._removed(seg_bytes, old[0], old[1])
        if not self._admits(db, key, size):
            self._store_bytes(db, seg_bytes)
            return None
        evicted = self._evict_until(db, seg_bytes, self.max_bytes - size)
        self._place(db, key, size, seg_bytes)
        self._store_bytes(db, seg_bytes)
        return evicted

    def _place(self, db: sqlite3.Connection, key: str, size: int, seg_bytes: list[int]) -> None:
        raise NotImplementedError


class SieveIndex(WholeCacheIndex):
    """SIEVE, optionally behind an admission rule: the moves of ``ypws.policies.SieveCache``.

    Entries are in insertion order (``tick``); the hand is the tick of the last entry it
    looked at (0: start from the oldest). A hit sets the visited bit, so batches are exact.
    """

    def _place(self, db: sqlite3.Connection, key: str, size: int, seg_bytes: list[int]) -> None:
        db.execute("INSERT INTO entries (key, size, seg, tick, freq) VALUES (?, ?, 0, ?, 0)", (key, size, self._next_tick(db)))
        seg_bytes[0] += size

    def _hits_batched(self, db: sqlite3.Connection, keys: list[str]) -> list[str]:
        db.executemany("UPDATE entries SET freq = 1 WHERE key = ?", [(key,) for key in set(keys)])
        return []

    def _balance(self, db: sqlite3.Connection, seg_bytes: list[int]) -> list[str]:
        return self._evict_until(db, seg_bytes, self.max_bytes)

    def _evict_until(self, db: sqlite3.Connection, seg_bytes: list[int], limit: int) -> list[str]:
        evicted = []
        if seg_bytes[0] <= limit:
            return evicted
        row = db.execute("SELECT value FROM meta WHERE name = 'hand'").fetchone()
        hand = row[0] if row else 0
        while seg_bytes[0] > limit:
            row = db.execute("SELECT key, size, freq, tick FROM entries WHERE seg = 0 AND tick > ? ORDER BY tick LIMIT 1",
                             (hand,)).fetchone()
            if row is None:  # past the newest: back to the oldest
                if hand == 0:
                    raise RuntimeError("cache index: byte total without entries")
                hand = 0
                continue
            key, size, visited, hand = row
            if visited:
                db.execute("UPDATE entries SET freq = 0 WHERE key = ?", (key,))
                continue
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            seg_bytes[0] -= size
            evicted.append(key)
        db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('hand', ?)", (hand,))
        return evicted


class S3FIFOIndex(WholeCacheIndex):
    """S3-FIFO, optionally behind an admission rule: the moves of ``ypws.policies.S3FIFOCache``.

    A hit only raises the entry's credit count (capped), so a batch of hits has exactly the
    effect of the same hits one by one, whatever their order.
    """

    segments = 2  # 0: small FIFO, 1: main FIFO
    #: the state loaded for one transaction: bytes per queue, then entries held and keys in the ghost
    STATE = ("bytes0", "bytes1", "entries", "ghost_entries")

    def __init__(self, path: str | os.PathLike, max_bytes: int, admission: str = "", busy_timeout: float = 30.0):
        super().__init__(path, max_bytes, admission, busy_timeout)
        self.small_target = int(max_bytes * S3FIFO_SMALL)

    def _place(self, db: sqlite3.Connection, key: str, size: int, seg_bytes: list[int]) -> None:
        seg = 0
        if db.execute("DELETE FROM ghost WHERE key = ? RETURNING key", (key,)).fetchone():
            seg = 1  # dropped from small lately, asked for again: straight to main
            seg_bytes[3] -= 1
        seg_bytes[2] += 1
        db.execute("INSERT INTO entries (key, size, seg, tick, freq) VALUES (?, ?, ?, ?, 0)",
                   (key, size, seg, self._next_tick(db)))
        seg_bytes[seg] += size

    def _hits_batched(self, db: sqlite3.Connection, keys: list[str]) -> list[str]:
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        db.executemany(f"UPDATE entries SET freq = MIN(freq + ?, {S3FIFO_MAX_FREQ}) WHERE key = ?",
                       [(n, key) for key, n in counts.items()])
        return []

    def _balance(self, db: sqlite3.Connection, seg_bytes: list[int]) -> list[str]:
        return self._evict_until(db, seg_bytes, self.max_bytes)

    def _load_bytes(self, db: sqlite3.Connection) -> list[int]:
        rows = dict(db.execute("SELECT name, value FROM meta WHERE name IN (?, ?, ?, ?)", self.STATE).fetchall())
        if len(rows) != len(self.STATE):
            return self._recount(db)
        return [rows[name] for name in self.STATE]

    def _recount(self, db: sqlite3.Connection) -> list[int]:
        db.execute("DELETE FROM meta WHERE name LIKE 'bytes%'")
        state = [0, 0, 0, 0]
        for seg, total, n in db.execute("SELECT MIN(seg, 1), SUM(size), COUNT(*) FROM entries GROUP BY MIN(seg, 1)"):
            state[seg] = total
            state[2] += n
        state[3] = db.execute("SELECT COUNT(*) FROM ghost").fetchone()[0]
        return state

    def _store_bytes(self, db: sqlite3.Connection, seg_bytes: list[int]) -> None:
        db.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", list(zip(self.STATE, seg_bytes)))

    def _removed(self, seg_bytes: list[int], size: int, seg: int) -> None:
        seg_bytes[min(seg, 1)] -= size
        seg_bytes[2] -= 1

    def _to_ghost(self, db: sqlite3.Connection, state: list[int], key: str) -> None:
        """Remember a key dropped from small; the ghost holds at most as many keys as the cache holds entries."""
        if not db.execute("DELETE FROM ghost WHERE key = ? RETURNING 1", (key,)).fetchone():
            state[3] += 1
        db.execute("INSERT INTO ghost (key, tick) VALUES (?, ?)", (key, self._next_tick(db)))
        excess = state[3] - state[2]
        if excess > 0:
            db.execute("DELETE FROM ghost WHERE key IN (SELECT key FROM ghost ORDER BY tick LIMIT ?)", (excess,))
            state[3] -= excess

    def _evict_until(self, db: sqlite3.Connection, seg_bytes: list[int], limit: int) -> list[str]:
        """Evict (S3-FIFO's order) until the entries hold at most ``limit`` bytes."""
        evicted = []
        while seg_bytes[0] + seg_bytes[1] > limit:
            if seg_bytes[0] > self.small_target or not seg_bytes[1]:
                key, size, freq = db.execute(
                    "SELECT key, size, freq FROM entries WHERE seg = 0 ORDER BY tick LIMIT 1").fetchone()
                seg_bytes[0] -= size
                if freq >= 1:  # hit while in small: on to main, credits spent
                    db.execute("UPDATE entries SET seg = 1, freq = 0, tick = ? WHERE key = ?", (self._next_tick(db), key))
                    seg_bytes[1] += size
                    continue
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                seg_bytes[2] -= 1
                self._to_ghost(db, seg_bytes, key)
                evicted.append(key)
                continue
            key, size, freq = db.execute("SELECT key, size, freq FROM entries WHERE seg = 1 ORDER BY tick LIMIT 1").fetchone()
            if freq > 0:  # hit while in main: one more round
                db.execute("UPDATE entries SET freq = freq - 1, tick = ? WHERE key = ?", (self._next_tick(db), key))
                continue
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
            seg_bytes[1] -= size
            seg_bytes[2] -= 1
            evicted.append(key)
        return evicted
