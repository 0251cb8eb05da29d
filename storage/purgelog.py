"""The purge log: cache purges as objects in the store, which every cache node follows.

A purge (a deleted or hidden photo, a re-rendered size, an admin's flush) is
committed when its entry is stored here, not when some proxy managed to reach
some nodes: every ypws node applies the log from its own checkpoint
(ypws/purgeapply.py), so a node that was down, or that a front never heard of,
still applies every purge before it serves again. Pushing the purge to the nodes
directly stays as the fast path (storage/purge.py).

Entries are small JSON objects under ``purgelog/`` with time-ordered keys
(storage/keys.py). Time order across writers needs care: an entry becomes
visible when its PUT completes, which may be after a reader has listed past its
key's time. So a reader re-reads the last ``settle`` seconds on every pass
(applying each entry once), and a writer whose PUT took longer than half of
``settle`` writes the entry again under a fresh key, so a stored entry is always
listed by a reader at least once. Clocks of writers and readers must agree to
well within ``settle / 2`` (NTP does).

Old entries are removed after the retention period (``trim``); a reader whose
checkpoint is older than that cannot know what it missed and flushes its cache.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Container, Iterator, Sequence

from .base import BlobStore, NotFound, StorageUnavailable
from .keys import (IMAGE_PATH_PREFIX, PURGE_LOG_PREFIX, InvalidName, parse_image_path, purge_log_floor, purge_log_key,
                   purge_log_time)

MAX_PATHS = 64
MAX_PATH_LEN = 300
MAX_ENTRY_BYTES = 64 * 1024
APPEND_ATTEMPTS = 3


@dataclass(frozen=True)
class PurgeEntry:
    key: str
    at_ms: int
    paths: tuple[str, ...]
    reason: str = ""
    origin: str = ""


def check_path(path: str) -> str:
    """A purge path: ``/photos/`` (everything), ``/photos/{user}/{id}_{secret}/`` (a photo),
    ``.../{size}`` (every format of a size) or ``.../{size}.{ext}`` (one URL); ValueError otherwise."""
    if not isinstance(path, str) or len(path) > MAX_PATH_LEN or not path.startswith(IMAGE_PATH_PREFIX):
        raise ValueError("a purge path starts with /photos/")
    if path == IMAGE_PATH_PREFIX:
        return path
    try:
        parse_image_path(path, bare_size=True, whole_photo=True)
    except InvalidName as exc:
        raise ValueError(f"not a purge path ({exc}): /photos/, /photos/{{user}}/{{id}}_{{secret}}/ or "
                         "/photos/{user}/{id}_{secret}/{size}[.{ext}]") from None
    return path


def check_paths(paths: Sequence[str]) -> tuple[str, ...]:
    if not paths or len(paths) > MAX_PATHS:
        raise ValueError(f"a purge holds 1..{MAX_PATHS} paths")
    return tuple(check_path(p) for p in paths)


class PurgeLog:
    """Append, read and trim the purge log of one store. Safe to share between threads."""

    def __init__(self, store: BlobStore, settle: float = 10.0, clock: Callable[[], float] = time.time):
        self.store = store
        self.settle = settle
        self.clock = clock

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def append(self, paths: Sequence[str], reason: str = "", origin: str = "") -> PurgeEntry:
        """Store one entry; once this returns, every cache node will apply it.

        Raises StorageError when the entry could not be stored in time: then the purge
        is not committed and the caller must say so (or retry).
        """
        paths = check_paths(paths)
        for _ in range(APPEND_ATTEMPTS):
            at = self.now_ms()
            entry = PurgeEntry(purge_log_key(at, secrets.token_hex(6)), at, paths, reason[:64], origin[:64])
            body = json.dumps({"paths": list(paths), "reason": entry.reason, "origin": entry.origin}).encode()
            self.store.put(entry.key, body, "application/json")
            if self.now_ms() - at <= self.settle * 500:  # readers re-read the last `settle` s
                return entry
            # too slow: a reader may have passed this key's time already; write a fresh copy
        raise StorageUnavailable(f"purge log writes took longer than {self.settle / 2:.1f} s {APPEND_ATTEMPTS} times")

    def read(self, after: str, known: Container[str] = ()) -> Iterator[PurgeEntry]:
        """Entries with keys after ``after`` (a floor or an entry key), oldest first, except
        the ``known`` ones (not fetched again: a reader re-lists the last ``settle`` seconds).

        An entry removed meanwhile (trimmed) or unreadable is skipped: there is nothing
        a reader could do with it.
        """
        for key in self.store.list(PURGE_LOG_PREFIX, start_after=after):
            if key in known:
                continue
            try:
                at = purge_log_time(key)
                data = json.loads(self.store.get(key)[:MAX_ENTRY_BYTES])
                yield PurgeEntry(key, at, check_paths(data["paths"]), str(data.get("reason", "")),
                                 str(data.get("origin", "")))
            except NotFound:
                continue
            except (InvalidName, ValueError, KeyError, TypeError):
                continue  # not ours, or damaged: never let one bad object stop every cache node

    def trim(self, before_ms: int, limit: int = 10000) -> int:
        """Remove up to ``limit`` entries written before ``before_ms``; how many went."""
        floor = purge_log_floor(before_ms)
        removed = 0
        for key in self.store.list(PURGE_LOG_PREFIX):
            if key >= floor or removed >= limit:
                break
            self.store.delete(key)
            removed += 1
        return removed
