"""Following the purge log (storage/purgelog.py) on one ypws node.

One applier per node, not per worker: every worker runs ``PurgeApplier.run`` in a
thread, and the one holding the flock on ``{cache}/purgelog.lock`` applies the
log while the others wait for the lock (a worker that dies, even by SIGKILL,
frees it). The checkpoint lives with the cache it describes
(``{cache}/purgelog.state``), so a node restarted on the same cache resumes
where it stopped, and one given a fresh or foreign cache flushes it first.

Each pass lists the log after the checkpoint, applies every entry not applied
yet, and moves the checkpoint to ``settle`` seconds before the pass began
(entries whose writes were still in flight are then read again next pass; see
purgelog.py). An entry is applied when first seen and once more when the
checkpoint passes it, which also removes what a fill racing with the first
application (a miss that read the old bytes just before the change) put back.
A crash anywhere repeats work from the last checkpoint; purging twice is
harmless, so nothing is ever skipped.

A checkpoint older than the log's retention (the node was down longer than
that), or none at all, means the entries since cannot be known: the whole cache
is flushed and the node starts from now.

Readiness: the state file also records the node's boot (one id per ``ypws
serve``) and when the last pass completed. Until a pass completed in this boot,
the node's cache is not trusted (image requests get 503) and ``/readyz`` says
not ready; afterwards ``/readyz`` says ready while passes keep completing.
Bound: a purge logged while the node is up applies within one pass (about
``poll_interval`` plus one listing); a node that was down applies it before it
reports ready.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cluster.locks import try_flock
from storage import StorageError
from storage.keys import IMAGE_PATH_PREFIX, InvalidName, parse_image_path, purge_log_floor, purge_log_time
from storage.purgelog import PurgeEntry, PurgeLog

log = logging.getLogger("ypws.purge")

STATE_FILE = "purgelog.state"
STATE_BYTES = 512  # every state file is this long (padded), so one can be rewritten in place
LOCK_FILE = "purgelog.lock"
TRIM_EVERY = 60.0


@dataclass(frozen=True)
class SyncState:
    after: str          # the checkpoint: entries after this key are still to be read
    synced_at: float    # wall time the last pass completed
    boot: str           # which run of the node completed it

    @classmethod
    def load(cls, root: Path) -> "SyncState | None":
        try:
            data = json.loads((root / STATE_FILE).read_text())
            state = cls(str(data["after"]), float(data["synced_at"]), str(data["boot"]))
            purge_log_time(state.after)
            return state
        except (OSError, ValueError, KeyError, TypeError, InvalidName):
            return None  # none, or damaged: the cache cannot say what it missed

    def save(self, root: Path) -> None:
        """Write a new state file and rename it over the old one; on a full cache disk (no room for
        a new file) overwrite the old one in place: every state is padded to ``STATE_BYTES``, so
        the old file's space holds the new one. A reader racing with that write may see it torn,
        which reads as no checkpoint for a moment (the gate re-reads it a tenth of a second later)."""
        data = json.dumps({"after": self.after, "synced_at": self.synced_at, "boot": self.boot}).encode()
        data = data.ljust(STATE_BYTES)  # JSON allows the trailing spaces
        tmp = root / f".{STATE_FILE}.{os.getpid()}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, root / STATE_FILE)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            fd = os.open(root / STATE_FILE, os.O_WRONLY)  # no O_CREAT: only an old file has room
            try:
                if os.fstat(fd).st_size != len(data) or os.pwrite(fd, data, 0) != len(data):
                    raise
            finally:
                os.close(fd)


def apply_path(service, path: str) -> int:
    """Drop what one purge path names from the node's cache; how many entries went."""
    if path == IMAGE_PATH_PREFIX:
        return service.cache.purge_all()
    try:
        target = parse_image_path(path, bare_size=True, whole_photo=True)
    except InvalidName:
        return 0
    if not target.size:  # /photos/{user}/{id}_{secret}/: the whole photo
        return len(service.purge_photo(target.ref))
    return len(service.purge(target))


class PurgeApplier:
    """Applies the purge log to one node's cache; ``sync`` is one pass, ``run`` the worker thread."""

    def __init__(self, log_: PurgeLog, service, root: Path, boot: str, *, interval: float = 0.5,
                 retention: float = 604800.0, clock: Callable[[], float] = time.time):
        self.log = log_
        self.service = service
        self.root = Path(root)
        self.boot = boot
        self.interval = interval
        self.retention = retention
        self.clock = clock
        self.pending: dict[str, PurgeEntry] = {}  # applied once, to apply again when the checkpoint passes
        self.applied = 0
        self.flushes = 0
        self._last_trim = 0.0

    def sync(self) -> int:
        """One pass over the log; the number of entries applied. StorageError leaves the checkpoint."""
        started = self.clock()
        now_ms = int(started * 1000)
        settle_ms = int(self.log.settle * 1000)
        state = SyncState.load(self.root)
        after = state.after if state else ""
        if state is None or purge_log_time(after) < now_ms - int(self.retention * 1000) + settle_ms:
            self.flushes += 1
            log.warning("purge log: %s; flushing the whole cache",
                        "no checkpoint" if state is None else "checkpoint older than the log's retention")
            self.service.cache.purge_all()
            self.pending.clear()
            after = purge_log_floor(now_ms - settle_ms)
        count = 0
        for entry in self.log.read(after, known=self.pending):
            self._apply(entry)
            self.pending[entry.key] = entry
            count += 1
        new_after = max(after, purge_log_floor(now_ms - settle_ms))
        for key in sorted(k for k in self.pending if k <= new_after):
            self._apply(self.pending.pop(key))
        SyncState(new_after, self.clock(), self.boot).save(self.root)
        self.applied += count
        if started - self._last_trim >= TRIM_EVERY:
            self._last_trim = started
            self.log.trim(now_ms - int(self.retention * 1000))
        return count

    def _apply(self, entry: PurgeEntry) -> None:
        for path in entry.paths:
            apply_path(self.service, path)

    def run(self, stop: threading.Event) -> None:
        """Wait for the node's applier lock, then apply the log every ``interval`` until ``stop``."""
        fd = None
        try:
            while not stop.is_set():
                fd = try_flock(self.root / LOCK_FILE)
                if fd is not None:
                    break
                stop.wait(self.interval)
            while not stop.is_set():
                began = time.monotonic()
                try:
                    self.sync()
                except StorageError as exc:
                    log.warning("purge log: read failed (%s); retrying", exc.__class__.__name__)
                except Exception:  # never let the thread die: the node would stop applying purges
                    log.exception("purge log: pass failed")
                stop.wait(max(0.0, self.interval - (time.monotonic() - began)))
        finally:
            if fd is not None:
                os.close(fd)

    def start(self) -> threading.Event:
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), name="purge-applier", daemon=True).start()
        return stop


class SyncGate:
    """What every worker asks: may the cache be trusted yet (a pass completed in this boot),
    and is the node ready (passes keep completing)? Reads the state file a few times a second at most."""

    def __init__(self, root: Path, boot: str, interval: float, clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self.boot = boot
        self.stale_after = max(3.0, 4 * interval + 1.0)
        self.clock = clock
        self._open = False
        self._state: SyncState | None = None
        self._read_at = float("-inf")

    def _current(self) -> SyncState | None:
        now = time.monotonic()
        if now - self._read_at >= 0.1:
            self._state, self._read_at = SyncState.load(self.root), now
        return self._state

    def trusted(self) -> bool:
        if not self._open:
            # read afresh, not the 0.1 s memo: once one worker's /readyz has said ready and a
            # proxy routes here, another worker's older read must not answer 503 warming_up
            # (only until the first pass: then the gate stays open and this is never read again)
            state = SyncState.load(self.root)
            self._open = state is not None and state.boot == self.boot
        return self._open

    def ready(self) -> tuple[bool, str]:
        state = self._current()
        if state is None or state.boot != self.boot:
            return False, "purge log not yet applied since the node started"
        age = self.clock() - state.synced_at
        if age > self.stale_after:
            return False, f"purge log last applied {age:.0f} s ago"
        return True, "purge log applied"
