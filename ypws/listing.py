"""Newest first, in pages, without listing everything: a user's photo records, or the site's timeline.

Store listings run oldest first (keys sort as text and ids are time-ordered, with
one width: storage.ids), and only forwards from a key. So the newest photos are
found by listing time windows backwards from now: the last day, then the four
days before it, the sixteen before those, and so on down to the id epoch. A user
who uploads often costs one short listing per page; one whose photos are years
old costs a handful of empty ones; nobody costs a listing of all their photos. The
site-wide timeline (``timeline/{id}_{user}``, the home page) is paged the same way.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

from storage import BlobStore
from storage.ids import ID_OFFSET, TIME_SHIFT, first_id_at
from storage.keys import photo_prefix, timeline_prefix

FIRST_WINDOW_MS = 24 * 3600 * 1000
GROWTH = 4


def newest_record_keys(store: BlobStore, user: str, epoch_ms: int, now_ms: Callable[[], int],
                       before: str | None = None) -> Iterator[str]:
    """Record keys of ``user``'s photos, newest first; with ``before``, only older ids than that."""
    return newest_keys(store, photo_prefix(user), epoch_ms, now_ms, before)


def newest_timeline_keys(store: BlobStore, epoch_ms: int, now_ms: Callable[[], int],
                         before: str | None = None) -> Iterator[str]:
    """Timeline keys of every user's public photos, newest first; with ``before``, only older ids."""
    return newest_keys(store, timeline_prefix(), epoch_ms, now_ms, before)


def newest_keys(store: BlobStore, prefix: str, epoch_ms: int, now_ms: Callable[[], int],
                before: str | None = None) -> Iterator[str]:
    """Keys ``{prefix}{id}...`` newest first, listing time windows back from now."""
    upper = int(before) if before else None  # None: no upper bound (a node's clock may run ahead)
    top = upper if upper is not None else first_id_at(now_ms(), epoch_ms)
    window = FIRST_WINDOW_MS
    while True:
        lower = max(ID_OFFSET, top - (window << TIME_SHIFT))
        keys = store.list(prefix, start_after=f"{prefix}{lower}")  # ids >= lower: "{id}.json" > "{id}"
        if upper is not None:
            stop = f"{prefix}{upper}"
            keys = itertools.takewhile(lambda k: k < stop, keys)
        yield from reversed(list(keys))
        if lower <= ID_OFFSET:
            return
        upper = top = lower
        window *= GROWTH
