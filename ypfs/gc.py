"""Finding and removing the objects no photo reaches: what crashes and races leave behind.

A photo's record is its commit point: ypfs stores the original first and the record
last, and a delete removes the record first. So an original or a rendition whose
record is missing (or names another secret), and a duplicate entry naming a photo
that is gone, and a home-page (timeline) entry of a photo that is gone or private, are
garbage that nothing serves: an upload killed between its two
writes, a delete cut short by a storage error, a render that finished after its
photo was deleted. Garbage is removed only once it is older than ``grace``: an upload
in flight has stored its original but not yet its record, and must not lose it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterator

from storage import BlobStore, NotFound
from storage.keys import (DEDUPE_PREFIX, ORIGINALS_PREFIX, RENDITIONS_PREFIX, TIMELINE_PREFIX, InvalidName,
                          parse_dedupe_key, parse_timeline_key, photo_of_key, record_key)
from storage.records import PhotoRecord

PREFIXES = (ORIGINALS_PREFIX, RENDITIONS_PREFIX, DEDUPE_PREFIX, TIMELINE_PREFIX)


@dataclass
class SweepReport:
    examined: int = 0
    orphans: list[str] = field(default_factory=list)   # garbage old enough to go
    young: int = 0                                      # garbage inside the grace period, kept
    removed: int = 0


def sweep(store: BlobStore, grace: float, *, dry_run: bool = False, now: float | None = None,
          on_key: Callable[[str], None] | None = None) -> SweepReport:
    """Walk originals, renditions and duplicate entries; remove (unless ``dry_run``) old garbage."""
    now = time.time() if now is None else now
    secret_of = _record_secrets(store)
    report = SweepReport()
    for key in _keys(store):
        report.examined += 1
        if on_key is not None:
            on_key(key)
        if not _is_garbage(store, key, secret_of):
            continue
        try:
            if store.stat(key).mtime > now - grace:
                report.young += 1
                continue
        except NotFound:
            continue
        report.orphans.append(key)
        if not dry_run:
            store.delete(key)
            report.removed += 1
    return report


def _keys(store: BlobStore) -> Iterator[str]:
    for prefix in PREFIXES:
        yield from store.list(prefix)


def _record_secrets(store: BlobStore) -> Callable[[str, str], str | None]:
    """(user, photo id) -> the secret its record holds, None without a record. Cached: a
    photo's renditions list together, so one record read serves them all."""

    @lru_cache(maxsize=4096)
    def secret_of(user: str, photo_id: str) -> str | None:
        try:
            return PhotoRecord.from_json(store.get(record_key(user, photo_id))).secret
        except (NotFound, InvalidName, ValueError, TypeError):
            return None

    return secret_of


def _is_garbage(store: BlobStore, key: str, secret_of: Callable[[str, str], str | None]) -> bool:
    if key.startswith(TIMELINE_PREFIX):  # a home-page entry of a photo that is gone or private now
        try:
            photo_id, user = parse_timeline_key(key)
            return PhotoRecord.load(store, user, photo_id).private
        except NotFound:
            return True
        except (InvalidName, ValueError, TypeError):
            return False  # not ours to judge
    if key.startswith(DEDUPE_PREFIX):
        try:
            user, _ = parse_dedupe_key(key)
        except InvalidName:
            user = None
        try:
            photo_id = json.loads(store.get(key))["id"]
            return user is None or secret_of(user, str(photo_id)) is None
        except NotFound:
            return False  # gone since it was listed
        except (ValueError, KeyError, TypeError):
            return True  # not an entry ypfs wrote
    try:
        ref = photo_of_key(key)
    except InvalidName:
        return False  # not ours to judge (keys outside the scheme are left alone)
    return secret_of(ref.user, ref.photo_id) != ref.secret
