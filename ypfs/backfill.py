"""Give photos stored before placeholders existed their ThumbHash and dominant colour.

``python -m ypfs placeholders [--user U]`` runs this: every photo record without a
placeholder gets one, made from its original exactly as an upload makes it
(media/placeholders.py). Records that have one are left alone, so a second run,
or a run cut short and started again, does only what is left.

ypfs is the records' one writer, and an owner may edit a photo (PATCH) while
this runs. So the placeholder is computed first (the slow part), then the
record is read again and written back with only the two fields set on that
fresh copy, only if it still names the same secret and still has no
placeholder, and only over the very version just read (a compare-and-swap,
storage ``replace``): an edit or a delete landing between the re-read and the
write wins, and the photo is counted as changed meanwhile, to be filled by the
next run, as is a photo made private meanwhile (a new secret, its objects moved).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterator

from cluster.config import LimitsSection
from media.placeholders import placeholder_for
from storage import BlobStore, Conflict, NotFound
from storage.keys import InvalidName, parse_record_key, parse_user_key, photo_prefix, user_prefix
from storage.records import PhotoRecord


@dataclass
class BackfillReport:
    examined: int = 0
    filled: int = 0
    had_one: int = 0
    changed_meanwhile: int = 0       # the photo moved to a new secret (or was deleted) while this ran
    failed: list[str] = field(default_factory=list)  # "user/id: why" (original missing, not decodable)


def _users(store: BlobStore) -> Iterator[str]:
    for key in store.list(user_prefix()):
        try:
            yield parse_user_key(key)
        except InvalidName:
            continue  # not a user record of ours


def backfill(limits: LimitsSection, store: BlobStore, user: str | None = None,
             on_photo: Callable[[str], None] = lambda _key: None) -> BackfillReport:
    """Fill in every missing placeholder (of one user, or of everyone); see the module doc."""
    report = BackfillReport()
    for name in [user] if user else _users(store):
        for key in store.list(photo_prefix(name)):
            try:
                parse_record_key(key)
                rec = PhotoRecord.read(store, key)
            except (InvalidName, NotFound, ValueError):
                continue
            on_photo(key)
            report.examined += 1
            if rec.thumbhash is not None:
                report.had_one += 1
                continue
            try:
                original = store.get(rec.ref.original_key)
            except NotFound:
                original = None
            placeholder = None if original is None else placeholder_for(original, rec.format, limits.decode_timeout)
            fresh = _reread(store, key)
            if fresh is None or fresh.secret != rec.secret:
                report.changed_meanwhile += 1  # moved to a new secret (made private) or deleted
            elif fresh.thumbhash is not None:
                report.had_one += 1
            elif original is None:
                report.failed.append(f"{rec.owner}/{rec.id}: its original is missing")
            elif placeholder is None:
                report.failed.append(f"{rec.owner}/{rec.id}: its {rec.format} original could not be decoded")
            else:
                try:  # only over the version just read: an edit or a delete meanwhile wins
                    dataclasses.replace(fresh, thumbhash=placeholder.thumbhash, color=placeholder.color).save(store)
                    report.filled += 1
                except Conflict:
                    report.changed_meanwhile += 1
    return report


def _reread(store: BlobStore, key: str) -> PhotoRecord | None:
    try:
        return PhotoRecord.read(store, key)
    except NotFound:
        return None
