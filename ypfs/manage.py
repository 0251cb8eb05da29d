"""The owner's actions on a stored photo: edit its title and visibility, or delete it.

The record is the commit point, as on upload. An edit is one record write. A
delete removes the record first: from then on ypws serves no miss of the photo
(it reads the record on every miss), and the API and the gallery list it no
more. The original, every rendition and the duplicate entry go next; a crash in
between leaves only objects nothing can reach, never a photo half there, and a
retried DELETE finds nothing to do (404).

The cache tier is told afterwards by the HTTP layer (one PURGE of the whole photo
through hashproxy): ypws keeps each cached entry's private flag, so a photo made
private, or deleted, must not go on being served from a cache.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from storage import BlobStore, NotFound
from storage.keys import InvalidName, dedupe_key
from storage.records import PhotoRecord


class BadChanges(ValueError):
    """An edit the API refuses (400), with the reason."""


@dataclass(frozen=True)
class PhotoChanges:
    """Fields an owner may change; None leaves a field as it is."""

    title: str | None = None
    private: bool | None = None
    original_public: bool | None = None

    #: whether cached copies may now be wrong (visibility is cached with every entry)
    @property
    def touches_cache(self) -> bool:
        return self.private is not None or self.original_public is not None

    @classmethod
    def from_json(cls, body: Any, max_title_chars: int) -> "PhotoChanges":
        if not isinstance(body, dict) or not body:
            raise BadChanges("send a JSON object with one or more of: title, private, original_public")
        unknown = sorted(set(body) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise BadChanges(f"unknown field(s): {', '.join(unknown)}; editable: title, private, original_public")
        for flag in ("private", "original_public"):
            if flag in body and not isinstance(body[flag], bool):
                raise BadChanges(f"'{flag}' must be true or false")
        title = body.get("title")
        if title is not None:
            if not isinstance(title, str):
                raise BadChanges("'title' must be a string")
            title = "".join(ch for ch in title if ch.isprintable()).strip()
            if len(title) > max_title_chars:
                raise BadChanges(f"the title is longer than {max_title_chars} characters")
        return cls(title, body.get("private"), body.get("original_public"))


def apply_changes(store: BlobStore, rec: PhotoRecord, changes: PhotoChanges) -> PhotoRecord:
    """The record with ``changes`` applied, written back (one PUT: all or nothing)."""
    updates = {k: v for k, v in dataclasses.asdict(changes).items() if v is not None}
    new = dataclasses.replace(rec, **updates)
    if new != rec:
        new.save(store)
    return new


def delete_photo(store: BlobStore, rec: PhotoRecord) -> int:
    """Remove the photo: record first (the commit point), then its bytes. Returns the objects removed."""
    ref = rec.ref
    store.delete(ref.record_key)
    doomed = [ref.original_key, *store.list(ref.rendition_prefix)]
    try:
        key = dedupe_key(rec.owner, rec.sha256)
        if json.loads(store.get(key)).get("id") == rec.id:  # a later upload of the same bytes keeps its own
            doomed.append(key)
    except (NotFound, InvalidName, ValueError, AttributeError):
        pass
    for key in doomed:
        store.delete(key)
    return 1 + len(doomed)
