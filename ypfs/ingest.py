"""The upload core (no HTTP): validate a received photo and store it durably.

The photo record is the commit point: it is what makes a photo exist for every
other component, and it is written only after the original is durably stored
and the image has passed validation. The original's PUT runs while the image is
being validated (the two overlap, so an upload costs about the longer of them,
not their sum); a rejected image's original is deleted again. The duplicate
check (same user, same bytes) is a store read that runs beside them too: a
client retry, the rare case, pays for a PUT it then deletes, so the first
upload does not pay for the lookup. A crash at any
point therefore leaves at worst an unreferenced whole object (never served),
never a record without its original. The caller acknowledges only after the
record is stored; the de-duplication entry comes last.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Sequence

from cluster import deadline
from cluster.config import LimitsSection
from cluster.profiles import SizeProfile
from storage import BlobStore, NotFound, StorageError
from storage.ids import new_secret
from storage.keys import CONTENT_TYPES, PhotoRef, dedupe_key, timeline_key
from storage.records import PhotoRecord, original_url, rendition_url

from cluster.pool import background
from media.formats import SUPPORTED
from media.placeholders import Placeholder, placeholder_for, placeholder_from
from media.probe import ImageRejected, ProbeResult, probe
from media.sniff import headless_heif, sniff
from .spool import Spool

log = logging.getLogger("ypfs.ingest")


def _beside(fn: Callable, *args) -> Future:
    """Run ``fn`` on the worker's helper pool, under this request's deadline (cluster.deadline)."""
    return background().submit(contextvars.copy_context().run, fn, *args)


@dataclass(frozen=True)
class UploadMeta:
    title: str = ""
    private: bool = False


class Ingestor:
    def __init__(self, limits: LimitsSection, store: BlobStore, next_id: Callable[[], str],
                 clock: Callable[[], float] = time.time):
        self.limits = limits
        self.store = store
        self.next_id = next_id
        self.clock = clock

    def ingest(self, user: str, spool: Spool, meta: UploadMeta, allow_originals: bool = True) -> tuple[PhotoRecord, bool]:
        """Store the photo; return (record, created). Same user + same bytes → the existing photo."""
        lookup = _beside(self._existing, user, spool.sha256)
        fmt = sniff(spool.head)
        if fmt is None:
            if (existing := lookup.result()) is not None:
                return existing, False
            if headless_heif(spool.head):
                raise ImageRejected(422, "undecodable", "HEIF data without the ftyp box a HEIF file starts with")
            raise ImageRejected(415, "unsupported_format",
                                f"not a supported image (by its content); accepted: {', '.join(SUPPORTED)}")
        ref = PhotoRef(user, self.next_id(), new_secret())
        stored = _beside(self._put_original, ref, spool, fmt)
        try:
            info = probe(spool.source, fmt, self.limits)
            existing = lookup.result()
        except BaseException:
            self._take_back(ref, stored)
            raise
        if existing is not None:
            self._take_back(ref, stored)
            return existing, False
        placeholder = self._placeholder(spool, fmt, info)
        stored.result()  # StorageError if the original could not be stored
        rec = PhotoRecord(
            id=ref.photo_id, owner=user, secret=ref.secret, format=fmt, width=info.width, height=info.height,
            bytes=spool.size, sha256=spool.sha256, uploaded_at=self.clock(), title=meta.title,
            taken_at=info.taken_at, camera=info.camera, exposure=info.exposure, pages=info.pages, private=meta.private,
            original_public=allow_originals,
            thumbhash=placeholder.thumbhash if placeholder else None, color=placeholder.color if placeholder else None,
        )
        # The dedupe and timeline entries are written beside the record: a dedupe entry
        # whose record is missing reads as "no duplicate" (see _existing), a timeline entry
        # (the home page) as nothing. Last writer wins if the same bytes race in twice;
        # both photos stay valid.
        dedupe = _beside(self.store.put, dedupe_key(user, rec.sha256),
                         json.dumps({"id": rec.id}).encode(), "application/json")
        timeline = None if rec.private else _beside(self.store.put, timeline_key(rec.id, user), b"")
        rec.save(self.store)
        dedupe.result()
        if timeline is not None:
            timeline.result()
        return rec, True

    def _placeholder(self, spool: Spool, fmt: str, info: ProbeResult) -> Placeholder | None:
        """From the check's own decode where it made a preview; else (Pillow's formats, the
        first frame of an animation) a tiny decode of its own, while the original's PUT may
        still be going. Only an accepted image gets this far, so a hostile one never reaches
        it. Best effort: at most half the request's time left, so the record still gets written."""
        if info.preview is not None:
            return placeholder_from(info.preview, fmt)
        left = deadline.remaining()
        budget = self.limits.decode_timeout if left is None else min(self.limits.decode_timeout, left / 2)
        return placeholder_for(spool.source, fmt, budget) if budget > 0.05 else None

    def _take_back(self, ref: PhotoRef, stored: Future) -> None:
        """Delete an original that will have no record (waits for its PUT to end).

        Best effort: the caller is already answering with the real reason (a refused
        image, a storage failure); an original left behind is unreachable and
        ``ypfs gc`` removes it.
        """
        if stored.exception() is None:
            try:
                self.store.delete(ref.original_key)
            except StorageError as exc:
                log.warning("could not take back %s (gc will): %s", ref.original_key, exc)

    def _put_original(self, ref: PhotoRef, spool: Spool, fmt: str) -> None:
        with spool.reader() as body:
            self.store.put(ref.original_key, body, CONTENT_TYPES[fmt])

    def _existing(self, user: str, sha256: str) -> PhotoRecord | None:
        try:
            photo_id = json.loads(self.store.get(dedupe_key(user, sha256)))["id"]
            return PhotoRecord.load(self.store, user, photo_id)
        except (NotFound, KeyError, ValueError):
            return None


def photo_view(public_url: str, sizes: Sequence[SizeProfile], rec: PhotoRecord) -> dict:
    """The public JSON of a photo: what the upload answer and the API return. No GPS, ever.

    ``public_url`` is Config.public_url and ``sizes`` the profiles its rendition URLs name."""
    ref = rec.ref
    urls = {p.name: rendition_url(public_url, ref, p) for p in sizes}
    if rec.original_public:
        urls["original"] = original_url(public_url, ref, rec.format)
    return {
        "id": rec.id, "owner": rec.owner, "secret": rec.secret, "title": rec.title,
        "width": rec.width, "height": rec.height, "format": rec.format, "bytes": rec.bytes, "sha256": rec.sha256,
        "pages": rec.pages, "taken_at": rec.taken_at, "camera": rec.camera, "exposure": rec.exposure,
        "private": rec.private, "thumbhash": rec.thumbhash, "color": rec.color,
        "original_public": rec.original_public, "uploaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.uploaded_at)),
        "urls": urls,
    }

