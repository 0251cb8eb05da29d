"""`python -m magickd verify [--repair]`: every photo has every size, and every rendition decodes.

For each photo record, each eager size's rendition in its default format (and any
rendition already made: variant formats, on-demand sizes) under the current version must exist,
decode with Pillow (independently of the engine that made it) and have the
size the profile gives for the photo. With ``--repair`` missing ones are
rendered and broken ones re-rendered (``force``) through the pool.
"""

from __future__ import annotations

import io
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image
from tqdm import tqdm

from cluster.profiles import Sizes, box_for, profile_version
from media.formats import pillow_ids
from storage import NotFound, StorageError
from storage.base import BlobStore
from storage.keys import PhotoRef
from storage.purge import Purger
from storage.records import PhotoRecord

from . import catalog
from .client import RenderClient, RenderError, RenderUnavailable

@dataclass
class Problem:
    key: str          # rendition key
    size: str
    fmt: str
    kind: str         # missing | undecodable | wrong_size
    detail: str = ""


@dataclass
class PhotoReport:
    record_key: str
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    repair_failures: list[str] = field(default_factory=list)


def check_rendition(data: bytes, fmt: str, expect: tuple[int, int]) -> str | None:
    """Why these bytes are not a good rendition, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Image.open(io.BytesIO(data), formats=pillow_ids(fmt)) as im:
                im.load()
                size = im.size
    except Exception as exc:  # any decoder complaint means broken
        return f"undecodable: {exc.__class__.__name__}: {str(exc)[:120]}"
    if size != expect:
        return f"wrong_size: {size[0]}x{size[1]}, expected {expect[0]}x{expect[1]}"
    return None


class Verifier:
    def __init__(self, sizes: Sizes, store: BlobStore, client: RenderClient | None, purger: Purger | None = None):
        """Checks every photo against ``sizes`` (the configured profiles); ``client`` and ``purger``
        repair (None: check only)."""
        self.sizes, self.store, self.client, self.purger = sizes, store, client, purger

    def photo(self, record_key: str, repair: bool) -> PhotoReport:
        report = PhotoReport(record_key)
        try:
            record = catalog.load_record(self.store, record_key)
            if record is None:
                return report
            self._check(record, report)
            if repair and report.problems:
                self._repair(record.ref, report)
        except StorageError as exc:
            report.problems.append(Problem(record_key, "", "", "storage", str(exc)))
        return report

    def _check(self, record: PhotoRecord, report: PhotoReport) -> None:
        ref = record.ref
        present = set(self.store.list(ref.rendition_prefix))
        for profile in self.sizes.values():
            version = profile_version(profile)
            # an on-demand size (eager = false) is rendered on its first view: checked once it exists
            formats = [f for f in profile.formats
                       if (f == profile.format and profile.eager) or ref.rendition_key(profile.name, version, f) in present]
            box = box_for(profile, record.width, record.height)
            for fmt in formats:
                key = ref.rendition_key(profile.name, version, fmt)
                try:
                    data = self.store.get(key)
                except NotFound:
                    report.problems.append(Problem(key, profile.name, fmt, "missing"))
                    continue
                why = check_rendition(data, fmt, (box.out_w, box.out_h))
                if why:
                    kind, _, detail = why.partition(": ")
                    report.problems.append(Problem(key, profile.name, fmt, kind, detail))

    def _repair(self, ref: PhotoRef, report: PhotoReport) -> None:
        assert self.client is not None
        by_call: dict[tuple[str, bool], list[str]] = {}
        for p in report.problems:
            if p.size:
                by_call.setdefault((p.fmt, p.kind != "missing"), []).append(p.size)
        for (fmt, force), sizes in by_call.items():
            try:
                self.client.render(ref, sizes, [fmt], force=force)
                report.repaired += [f"{s}.{fmt}" for s in sizes]
            except (RenderError, RenderUnavailable) as exc:
                report.repair_failures += [f"{s}.{fmt}: {exc}" for s in sizes]
        repaired = sorted({r.split(".")[0] for r in report.repaired})
        if repaired and self.purger is not None:  # caches may hold the broken bytes
            try:
                self.purger.purge([ref.purge_path(s) for s in repaired], "verify --repair")
            except StorageError as exc:
                report.repair_failures.append(f"cache purge not logged: {exc}")

    def run(self, user: str | None = None, repair: bool = False, concurrency: int = 4,
            out=sys.stderr, progress: bool = True) -> list[PhotoReport]:
        keys = list(catalog.record_keys(self.store, user))
        reports: list[PhotoReport] = []
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
                tqdm(total=len(keys), unit="photo", desc="verify", file=out, disable=not progress) as bar:
            for report in pool.map(lambda k: self.photo(k, repair), keys):
                reports.append(report)
                bar.update(1)
        return reports


def format_reports(reports: list[PhotoReport], repair: bool, limit: int = 30) -> tuple[str, int]:
    """(summary text, exit code): 0 when everything is (now) in place."""
    bad = [r for r in reports if r.problems]
    problems = [p for r in bad for p in r.problems]
    lines = [f"verify: {len(reports)} photo(s), {len(bad)} with problems, {len(problems)} problem(s)"]
    kinds: dict[str, int] = {}
    for p in problems:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    if kinds:
        lines.append("by kind: " + ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())))
    for p in problems[:limit]:
        lines.append(f"  {p.kind:<12} {p.key} {p.detail}".rstrip())
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    unrepaired = [f for r in reports for f in r.repair_failures]
    if repair:
        repaired = sum(len(r.repaired) for r in reports)
        lines.append(f"repaired {repaired} rendition(s); {len(unrepaired)} could not be repaired")
        for f in unrepaired[:limit]:
            lines.append(f"  {f}")
        return "\n".join(lines), 0 if not unrepaired else 1
    return "\n".join(lines), 0 if not problems else 1
