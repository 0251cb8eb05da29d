"""The cache index every worker of a node shares: keys, sizes, segmented-LRU state, counters.

SQLite in WAL mode: readers never block, writers take turns with a busy timeout,
and the file survives restarts, so the cache comes back warm. The eviction
state is that of ``ypws.policies.SegmentedLRUCache`` (same moves, same order, a
test replays one trace through both): each entry has a segment and a ``tick``
(larger is nearer the head); a global tick counter orders every move.

The index is only written on fills, purges, and batched hit reports (workers
queue their hits and send them every fraction of a second), never per request.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key  TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    seg  INTEGER NOT NULL,
    tick INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_age ON entries (seg, tick);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
"""


class Index:
    """Byte-bounded segmented LRU over SQLite; safe across processes and threads."""

    def __init__(self, path: str | os.PathLike, max_bytes: int, segments: int, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.segments = segments
        self.capacity = max_bytes // segments
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    # -- connection (one per process: never carried across fork) -------------------------
    def _db(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # a lost last commit costs a few cache entries, never consistency
            conn.executescript(SCHEMA)
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

    # -- the policy --------------------------------------------------------------------
    # Per-segment byte totals are kept in ``meta`` (bytes0, bytes1, ...) and loaded into a
    # list for the length of one transaction, so no move has to sum a segment.
    def insert(self, key: str, size: int) -> list[str]:
        """Add (or replace) an entry at the head of segment 0; return the keys evicted."""
        if size > self.capacity:
            raise ValueError("entry larger than one segment")
        return self._write(self._insert, key, size)

    def _insert(self, db: sqlite3.Connection, key: str, size: int) -> list[str]:
        seg_bytes = self._load_bytes(db)
        old = db.execute("DELETE FROM entries WHERE key = ? RETURNING size, seg", (key,)).fetchone()
        if old:
            seg_bytes[old[1]] -= old[0]
        db.execute("INSERT INTO entries (key, size, seg, tick) VALUES (?, ?, 0, ?)", (key, size, self._next_tick(db)))
        seg_bytes[0] += size
        evicted = self._balance(db, seg_bytes)
        self._store_bytes(db, seg_bytes)
        return evicted

    def hits(self, keys: Iterable[str]) -> list[str]:
        """Promote each key (in order) one segment up; return the keys evicted by the cascade."""
        keys = list(keys)
        return self._write(self._hits, keys) if keys else []

    def _hits(self, db: sqlite3.Connection, keys: list[str]) -> list[str]:
        """Apply hits one after another, exactly as the in-memory policy would."""
        seg_bytes = self._load_bytes(db)
        top = self.segments - 1
        evicted: list[str] = []
        for key in keys:
            row = db.execute("SELECT seg, size FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                continue  # evicted or purged since the hit
            seg, size = row
            new = min(seg + 1, top)
            db.execute("UPDATE entries SET seg = ?, tick = ? WHERE key = ?", (new, self._next_tick(db), key))
            seg_bytes[seg] -= size
            seg_bytes[new] += size
            evicted += self._balance(db, seg_bytes)
        self._store_bytes(db, seg_bytes)
        return evicted

    def _hits_batched(self, db: sqlite3.Connection, keys: list[str]) -> list[str]:
        """A batch of hits from one worker: a key hit n times rises n segments (capped), in the
        order of its last hit, and the segments are balanced once at the end. The same moves as
        ``_hits`` up to the interleaving of demotions within one batch."""
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

    def _load_bytes(self, db: sqlite3.Connection) -> list[int]:
        rows = dict(db.execute("SELECT name, value FROM meta WHERE name LIKE 'bytes%'").fetchall())
        if len(rows) != self.segments or any(f"bytes{i}" not in rows for i in range(self.segments)):
            return self._recount(db)
        return [rows[f"bytes{i}"] for i in range(self.segments)]

    def _recount(self, db: sqlite3.Connection) -> list[int]:
        """Per-segment totals from the entries (first use, or after a change of policy)."""
        db.execute("DELETE FROM meta WHERE name LIKE 'bytes%'")
        out = [0] * self.segments
        for seg, total in db.execute("SELECT seg, SUM(size) FROM entries GROUP BY seg"):
            out[min(seg, self.segments - 1)] += total
        return out

    def _store_bytes(self, db: sqlite3.Connection, seg_bytes: list[int]) -> None:
        db.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                       [(f"bytes{i}", b) for i, b in enumerate(seg_bytes)])

    @staticmethod
    def _next_tick(db: sqlite3.Connection) -> int:
        row = db.execute(
            "INSERT INTO meta (name, value) VALUES ('tick', 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value"
        ).fetchone()
        return row[0]

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
                    seg_bytes[row[1]] -= row[0]
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

    def segment_bytes(self) -> list[int]:
        with self._lock:
            return self._load_bytes(self._db())

    # -- counters ----------------------------------------------------------------------
    def add_counters(self, deltas: dict[str, float], db: sqlite3.Connection | None = None) -> None:
        if not deltas:
            return
        if db is None:
            self._write(self.add_counters, deltas)
            return
        db.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            list(deltas.items()),
        )

    def report(self, hit_keys: list[str], deltas: dict[str, float]) -> list[str]:
        """One transaction for a worker's batch: its hits (promotions) and counter deltas."""
        if not hit_keys and not deltas:
            return []

        def run(db: sqlite3.Connection) -> list[str]:
            self.add_counters(deltas, db)
            return self._hits_batched(db, hit_keys) if hit_keys else []

        return self._write(run)

    def counters(self) -> dict[str, float]:
        with self._lock:
            return dict(self._db().execute("SELECT name, value FROM counters").fetchall())
