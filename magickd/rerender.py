"""`python -m magickd rerender`: re-render one size of many photos across the pool, resumably.

Photos are listed from storage in key order (time order per user) and fanned
out to the magickd nodes through RenderClient, a bounded number at a time. After
each photo the size's renditions of other versions are deleted and a purge of
that size is logged (every cache node applies it) and pushed to the nodes. A checkpoint records the key below which
every photo is done, plus the failures, so Ctrl-C or a crash loses nothing:
running the same command again resumes there. An on-demand size (`eager = false`) is
re-rendered only for the photos that have it: the others get it on their first view.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from tqdm import tqdm

from cluster.profiles import SizeProfile, Sizes, profile_version
from storage.purge import Purger
from storage import StorageError
from storage.base import BlobStore
from storage.keys import EXTENSIONS, FORMAT_BY_EXT, PhotoRef

from . import catalog
from .checkpoint import Checkpoint
from .client import RenderClient, RenderError, RenderUnavailable

SAVE_EVERY = 1.0  # seconds between checkpoint writes


@dataclass(frozen=True)
class RerenderJob:
    size: str
    user: str | None = None          # None: every user (--all)
    since: float | None = None       # only photos uploaded at or after this unix time
    concurrency: int = 4
    force: bool = False              # render even when the current version exists
    purge: bool = True

    def key(self, version: str) -> dict:
        """What identifies this job's checkpoint (concurrency does not change the work)."""
        return {"command": "rerender", "size": self.size, "version": version, "user": self.user,
                "since": self.since, "force": self.force}


@dataclass
class PhotoResult:
    key: str
    rendered: bool = False
    skipped: bool = False
    failure: str | None = None
    purge_failure: str | None = None


@dataclass
class Summary:
    seen: int = 0
    rendered: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    purge_failures: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    dry_run: bool = False
    checkpoint: str = ""


def checkpoint_dir(data_dir: Path) -> Path:
    """Where a cluster's re-render checkpoints live: ``{data_dir}/rerender``."""
    return data_dir / "rerender"


class Rerenderer:
    #: pauses before retrying a photo when no node could take it (all busy: 429, or down)
    BACKOFF = (0.5, 1.0, 2.0, 4.0)

    def __init__(self, sizes: Sizes, checkpoints: Path, store: BlobStore, client: RenderClient, purger: Purger | None,
                 out=sys.stderr, progress: bool = True, sleep: Callable[[float], None] = time.sleep):
        """Re-renders a size of ``sizes`` (the configured profiles), keeping its resumable checkpoints
        in the folder ``checkpoints`` (``{data_dir}/rerender``: see ``checkpoint_dir``)."""
        self.sizes, self.checkpoints = sizes, checkpoints
        self.store, self.client, self.purger = store, client, purger
        self.out = out
        self.progress = progress
        self.sleep = sleep

    def photo(self, job: RerenderJob, profile: SizeProfile, key: str) -> PhotoResult:
        """Re-render one photo's size; every failure becomes a reason, never an exception."""
        result = PhotoResult(key)
        try:
            record = catalog.load_record(self.store, key)
            if record is None:
                result.skipped = True
                return result
            if job.since is not None and record.uploaded_at < job.since:
                result.skipped = True
                return result
            ref = record.ref
            version = profile_version(profile)
            existing = catalog.rendition_versions(self.store, ref, profile.name)
            if not profile.eager and not existing:  # an on-demand size never viewed: its first view renders it
                result.skipped = True
                return result
            formats = [profile.format] + sorted(
                FORMAT_BY_EXT[ext] for exts in existing.values() for ext in exts
                if FORMAT_BY_EXT.get(ext) in profile.variants and FORMAT_BY_EXT[ext] != profile.format)
            formats = list(dict.fromkeys(formats))
            self._render(ref, profile.name, formats, job.force)
            result.rendered = True
            self._prune(ref, profile.name, version, existing)
            if self.purger:
                try:
                    self.purger.purge([ref.purge_path(profile.name)], "rerender")
                except StorageError as exc:  # not logged: cached copies of the old bytes may stay
                    result.purge_failure = f"purge not logged: {exc}"
        except RenderError as exc:
            result.failure = f"{exc.status} {exc.code}: {exc.message}"
        except RenderUnavailable as exc:
            result.failure = f"unavailable: {exc}"
        except StorageError as exc:
            result.failure = f"storage: {exc}"
        return result

    def _render(self, ref: PhotoRef, size: str, formats: list[str], force: bool) -> None:
        """One render through the pool, retried with back-off while every node is busy or down."""
        for attempt in range(len(self.BACKOFF) + 1):
            try:
                self.client.render(ref, [size], formats, force=force)
                return
            except RenderUnavailable:
                if attempt == len(self.BACKOFF):
                    raise
                self.sleep(self.BACKOFF[attempt])

    def _prune(self, ref: PhotoRef, size: str, version: str, existing: dict[str, set[str]]) -> None:
        """Delete the size's renditions of every other version: a stale one is never served again."""
        for old, exts in existing.items():
            if old != version:
                for ext in exts:
                    fmt = FORMAT_BY_EXT.get(ext)
                    if fmt in EXTENSIONS:
                        self.store.delete(ref.rendition_key(size, old, fmt))

    def run(self, job: RerenderJob, restart: bool = False, dry_run: bool = False) -> Summary:
        profile = self.sizes.get(job.size)
        if profile is None:
            raise ValueError(f"unknown size {job.size!r}; configured: {', '.join(self.sizes)}")
        version = profile_version(profile)
        cp = Checkpoint.open(self.checkpoints, job.key(version), restart=restart)
        summary = Summary(failures=dict(cp.failures), purge_failures=dict(cp.purge_failures), dry_run=dry_run,
                          checkpoint=str(cp.path))
        total = sum(1 for _ in catalog.record_keys(self.store, job.user, cp.last_key))
        if dry_run:
            summary.seen = total
            return summary
        bar = tqdm(total=total, unit="photo", desc=f"rerender {job.size}@{version}", file=self.out,
                   disable=not self.progress, dynamic_ncols=True, smoothing=0.1)
        pending: dict[Future, str] = {}
        order: list[str] = []          # keys submitted and not yet below the low-water mark
        finished: set[str] = set()
        last_save = time.monotonic()
        keys = catalog.record_keys(self.store, job.user, cp.last_key)
        window = max(1, job.concurrency) * 2
        pool = ThreadPoolExecutor(max_workers=max(1, job.concurrency), thread_name_prefix="rerender")
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    key = next(keys, None)
                    if key is None:
                        exhausted = True
                        break
                    pending[pool.submit(self.photo, job, profile, key)] = key
                    order.append(key)
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                interrupted = False
                for fut in done:
                    key = pending.pop(fut)
                    try:
                        result = fut.result()
                    except KeyboardInterrupt:  # account every other finished photo first
                        interrupted = True
                        continue
                    self._account(result, summary, cp)
                    finished.add(key)
                    bar.update(1)
                while order and order[0] in finished:  # advance the low-water mark
                    cp.last_key = order.pop(0)
                    finished.discard(cp.last_key)
                if interrupted:
                    raise KeyboardInterrupt
                if time.monotonic() - last_save >= SAVE_EVERY:
                    cp.save()
                    last_save = time.monotonic()
            cp.complete = True
        except KeyboardInterrupt:
            summary.interrupted = True
            for fut in pending:
                fut.cancel()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            # a finished photo above the low-water mark is simply redone on resume (renders are idempotent)
            cp.save()
            bar.close()
        return summary

    @staticmethod
    def _account(result: PhotoResult, summary: Summary, cp: Checkpoint) -> None:
        summary.seen += 1
        cp.done += 1
        if result.failure:
            summary.failures[result.key] = result.failure
            cp.failures[result.key] = result.failure
        else:
            summary.failures.pop(result.key, None)
            cp.failures.pop(result.key, None)
        if result.rendered:
            summary.rendered += 1
            cp.rendered += 1
        if result.skipped:
            summary.skipped += 1
        if result.purge_failure:
            summary.purge_failures[result.key] = result.purge_failure
            cp.purge_failures[result.key] = result.purge_failure


def format_summary(summary: Summary, job: RerenderJob, limit: int = 20) -> str:
    lines = []
    if summary.dry_run:
        lines.append(f"dry run: {summary.seen} photo record(s) would be considered for size {job.size!r} "
                     f"({'user ' + job.user if job.user else 'all users'}"
                     f"{', uploaded since the given date' if job.since else ''}); nothing was rendered")
        return "\n".join(lines)
    state = "interrupted" if summary.interrupted else "done"
    lines.append(f"rerender {job.size}: {state}; {summary.seen} photo(s) this run, {summary.rendered} re-rendered, "
                 f"{summary.skipped} skipped, {len(summary.failures)} failed (all runs of this job)")
    if summary.failures:
        by_reason: dict[str, list[str]] = {}
        for key, reason in summary.failures.items():
            by_reason.setdefault(reason.split(":")[0], []).append(key)
        lines.append("failures:")
        for key, reason in list(summary.failures.items())[:limit]:
            lines.append(f"  {key}: {reason}")
        if len(summary.failures) > limit:
            lines.append(f"  ... and {len(summary.failures) - limit} more (see {summary.checkpoint})")
        lines.append("by reason: " + ", ".join(f"{r} x{len(k)}" for r, k in sorted(by_reason.items())))
    if summary.purge_failures:
        sample = next(iter(summary.purge_failures.values()))
        lines.append(f"cache purge failed for {len(summary.purge_failures)} photo(s) ({sample}); "
                     "the new renditions are written; run again with --force, or PURGE those photos")
    if summary.interrupted:
        lines.append("run the same command again to resume where it stopped")
    lines.append(f"checkpoint: {summary.checkpoint}")
    return "\n".join(lines)
