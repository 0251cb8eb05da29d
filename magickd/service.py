"""The render service: a photo's sizes from its original in storage, written back; no HTTP here.

One request: admission ticket (429 beyond the queue) -> record and secret check
-> failure memory -> the photo's lock -> which renditions already exist (those
are returned as they are: the call is idempotent) -> original -> a render slot
-> the pipeline -> the renditions written under their versioned keys.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

from cluster import deadline
from cluster.config import LimitsSection, MagickdSection
from cluster.profiles import Sizes, box_for
from storage import NotFound, StorageError
from storage.base import BlobStore
from storage.keys import CONTENT_TYPES, InvalidName, PhotoRef
from storage.records import PhotoRecord

from . import pipeline
from .client import Rendition
from .admission import Admission
from .errors import BadRequest, PhotoNotFound, RenderFailure, RenderTimeout, Unavailable
from .failures import FailureMemory
from .options import Limits, RenderOptions, Target, parse_targets

log = logging.getLogger("magickd.service")
#: the one answer for a missing photo, a wrong secret and a missing original
NO_SUCH_PHOTO = "no such photo"


class Hooks:
    """Where the service reports what happened; metrics plug in here, tests may ignore it."""

    def rendered(self, target: Target) -> None: ...
    def outcome(self, outcome: str) -> None: ...
    def waiting(self, delta: int) -> None: ...
    def rendering(self, delta: int) -> None: ...
    def pipeline_time(self, seconds: float) -> None: ...


def node_dir(data_dir: Path, node: str) -> Path:
    """The node's own folder (admission slots, failure memory, metrics): ``{data_dir}/magickd/{node}``."""
    return data_dir / "magickd" / node


class RenderService:
    def __init__(self, settings: MagickdSection, limits: LimitsSection, sizes: Sizes, store: BlobStore,
                 admission: Admission, failures: FailureMemory, hooks: Hooks | None = None,
                 render: Callable[..., list] = pipeline.render):
        """The node's renders from its own section, the upload limits (a render refuses what ypfs
        refuses) and the size profiles it may make; ``settings`` is kept for the app's answers."""
        self.settings = settings
        self.sizes = sizes
        self.store = store
        self.admission = admission
        self.failures = failures
        self.hooks = hooks or Hooks()
        self.limits = Limits.from_config(limits, settings)
        self._render = render

    @classmethod
    def for_node(cls, settings: MagickdSection, limits: LimitsSection, sizes: Sizes, folder: Path, store: BlobStore,
                 hooks: Hooks | None = None) -> "RenderService":
        """The service of the node whose folder (``node_dir``) holds its admission slots and failure memory."""
        admission = Admission(folder, settings.effective_workers, settings.queue_size, settings.queue_wait)
        return cls(settings, limits, sizes, store, admission, FailureMemory(folder / "failures", settings.failure_ttl),
                   hooks)

    def render(self, user: str, photo_id: str, secret: str, sizes: Sequence[str] | None = None,
               formats: Sequence[str] | None = None, force: bool = False) -> list[Rendition]:
        try:
            ref = PhotoRef(user, photo_id, secret)
        except InvalidName as exc:
            raise BadRequest(str(exc)) from None
        targets = parse_targets(self.sizes, sizes, formats)
        with self.admission.ticket():
            record = self._record(ref)
            remembered = None if force else self.failures.recall(ref.original_key)
            if remembered:
                self.hooks.outcome("refused")
                raise _failure_from(remembered.code, f"{remembered.message} (remembered; retried after "
                                                     f"{max(0, remembered.until - time.time()):.0f}s)")
            with self._waiting_for(self.admission.photo(ref.photo_id)):
                return self._render_locked(ref, record, targets, force)

    @contextmanager
    def _waiting_for(self, lock: ContextManager[None]) -> Iterator[None]:
        """Hold ``lock``, counted as queued (the queue-depth gauge) until it is acquired."""
        self.hooks.waiting(+1)
        acquired = False
        try:
            with lock:
                self.hooks.waiting(-1)
                acquired = True
                yield
        finally:
            if not acquired:
                self.hooks.waiting(-1)

    # -- steps of one request ------------------------------------------------------------
    def _record(self, ref: PhotoRef) -> PhotoRecord:
        try:
            record = PhotoRecord.load(self.store, ref.user, ref.photo_id)
        except NotFound:
            raise PhotoNotFound(NO_SUCH_PHOTO) from None
        except StorageError as exc:
            raise Unavailable(f"storage: {exc}") from None
        if not hmac.compare_digest(record.secret, ref.secret):
            raise PhotoNotFound(NO_SUCH_PHOTO)  # word for word the missing photo's answer: no oracle
        return record

    def _render_locked(self, ref: PhotoRef, record: PhotoRecord, targets: tuple[Target, ...],
                       force: bool) -> list[Rendition]:
        done: dict[Target, Rendition] = {}
        if not force:
            for t in targets:
                info = self._existing(ref, record, t)
                if info:
                    done[t] = info
        missing = tuple(t for t in targets if t not in done)
        if missing:
            for info, t in zip(self._render_and_store(ref, missing), missing):
                done[t] = info
            self.hooks.outcome("rendered")
        else:
            self.hooks.outcome("existing")
        return [done[t] for t in targets]

    def _existing(self, ref: PhotoRef, record: PhotoRecord, target: Target) -> Rendition | None:
        key = ref.rendition_key(target.name, target.version, target.fmt)
        try:
            size = self.store.stat(key).size
        except NotFound:
            return None
        except StorageError as exc:
            raise Unavailable(f"storage: {exc}") from None
        box = box_for(target.profile, record.width, record.height)
        return Rendition(target.name, target.fmt, target.version, key, box.out_w, box.out_h, size)

    def _render_and_store(self, ref: PhotoRef, targets: tuple[Target, ...]) -> list[Rendition]:
        try:
            data = self.store.get(ref.original_key)
        except NotFound:
            raise PhotoNotFound(NO_SUCH_PHOTO) from None
        except StorageError as exc:
            raise Unavailable(f"storage: {exc}") from None
        with self._waiting_for(self.admission.slot(self._left(self.settings.queue_wait))):
            limits = self.limits
            left = self._left(limits.timeout)
            if left < limits.timeout:  # the request's deadline (magickd.request_deadline) is nearer
                limits = dataclasses.replace(limits, timeout=left)
            self.hooks.rendering(+1)
            started = time.monotonic()
            try:
                outputs = self._render(data, RenderOptions(targets, limits))
            except RenderTimeout as exc:
                if limits is not self.limits:  # cut short by the request's deadline: not the original's fault
                    raise Unavailable(f"the request's deadline ran out while rendering ({exc.message})") from None
                self.failures.remember(ref.original_key, exc.code, exc.message)
                raise
            except RenderFailure as exc:
                if exc.permanent:
                    self.failures.remember(ref.original_key, exc.code, exc.message)
                raise
            finally:
                self.hooks.rendering(-1)
                self.hooks.pipeline_time(time.monotonic() - started)
        del data
        infos = []
        for out in outputs:
            t = out.target
            key = ref.rendition_key(t.name, t.version, t.fmt)
            try:
                self.store.put(key, out.data, CONTENT_TYPES[t.fmt])
            except StorageError as exc:
                raise Unavailable(f"storage: {exc}") from None
            self.hooks.rendered(t)
            infos.append(Rendition(t.name, t.fmt, t.version, key, out.width, out.height, len(out.data)))
        self.failures.forget(ref.original_key)
        return infos


    @staticmethod
    def _left(most: float) -> float:
        """``most`` seconds, or what is left of the request's deadline if that is less (Unavailable if none)."""
        left = deadline.remaining()
        if left is None or left >= most:
            return most
        if left <= 0.05:
            raise Unavailable("the request's deadline passed before its render could start")
        return left


def _failure_from(code: str, message: str) -> RenderFailure:
    failure = RenderFailure(message)
    failure.code = code
    return failure
