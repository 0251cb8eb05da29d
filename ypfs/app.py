"""The ypfs HTTP face: thin falcon resources over the ingest core.

    POST /upload                      multipart/form-data: photo (file), title, private
    GET  /api/photos/{user}/{id}      a photo's public JSON (private ones only to their owner)
    PATCH /api/photos/{user}/{id}     the owner edits title, private, original_public (JSON)
    DELETE /api/photos/{user}/{id}    the owner deletes the photo: record, original, renditions
    GET  /api/openapi.json            the OpenAPI 3 document of this API
    GET  /api/users/{user}/photos     a user's public photos, oldest first (?after=ID&limit=N);
                                      with the owner's token, the private ones too
    PURGE /photos/...                 an admin's cache purge (admin token), logged and pushed
    GET  /healthz                     liveness: constant, touches nothing
    GET  /readyz                      readiness: 200 while storage answers (probed at most once a second), else 503
    GET  /metrics                     needs the service credential (Bearer cluster.admin_token)

Any storage failure is a 503 with Retry-After (cluster.web), and every request's
storage calls share one deadline, ``ypfs.request_deadline`` (an upload's starts
again once its body is in: a slow client's sending is not storage time).
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path
from typing import Callable

import falcon
from cachetools import TTLCache

from cluster import deadline
from cluster.config import Config, LimitsSection
from cluster.web import RequestDeadline, fail, json_errors, metrics_body, readiness, require_service_token
from storage import BlobStore, Conflict, NotFound, StorageError
from storage.ids import IdGenerator, claim_slot
from storage.keys import IMAGE_PATH_PREFIX, InvalidName, parse_record_key, photo_prefix, valid_photo_id, valid_user
from storage.purge import Purger
from storage.purgelog import PurgeEntry, check_paths
from storage.readiness import StorageProbe
from storage.records import PhotoRecord, UserRecord

from . import metrics, openapi
from .ingest import Ingestor, UploadMeta, photo_view
from .manage import BadChanges, PhotoChanges, apply_changes, delete_photo
from .notify import RenderNotifier
from media.probe import ImageRejected
from .spool import Spool, TooLarge, receive

#: multipart framing around the file (boundaries, part headers, small fields)
MULTIPART_SLACK = 64 * 1024
TRUE_WORDS = {"1", "true", "yes", "on"}
MAX_EDIT_BYTES = 16 * 1024  # a PATCH body: a title and two flags
RECHECK_SECONDS = 1.0  # a token the cached user record does not know: read it afresh this often at most
PhotoView = Callable[[PhotoRecord], dict]  # a record -> its public JSON (ingest.photo_view bound to the config)


class TokenAuth:
    """Bearer tokens of the form {user}.{random}; the record holds only their hashes.

    User records are cached per worker for a few seconds (one store read saved per
    upload); a revoked token therefore stops working within ``ttl`` seconds. A token the
    cached record does not know is checked once more against the stored record, so a
    token just made (`ypfs user token`) works at once; at most once a second per user,
    so wrong tokens sent for a real user cannot turn each request into a store read.
    """

    def __init__(self, store: BlobStore, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self._cache: TTLCache[str, UserRecord] = TTLCache(maxsize=10_000, ttl=ttl, timer=clock)
        self._rechecked: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=RECHECK_SECONDS, timer=clock)
        self._lock = threading.Lock()  # a worker's threads share the cache; cachetools' are not thread-safe

    def _recheck(self, name: str, rec: UserRecord) -> UserRecord:
        """The stored record, unless this user's was read afresh within RECHECK_SECONDS."""
        with self._lock:
            if name in self._rechecked:
                return rec
            self._rechecked[name] = True
        return self._load(name, fresh=True)

    def _load(self, name: str, fresh: bool = False) -> UserRecord:
        with self._lock:
            rec = None if fresh else self._cache.get(name)
        if rec is None:
            rec = UserRecord.load(self.store, name)  # outside the lock: a store read may be slow
            with self._lock:
                self._cache[name] = rec
        return rec

    def user(self, req: falcon.Request, required: bool = True) -> UserRecord | None:
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            if not required:
                return None
            raise fail(401, "unauthorized", "an 'Authorization: Bearer <token>' header is required",
                       {"WWW-Authenticate": "Bearer"})
        token = token.strip()
        name = token.split(".", 1)[0]
        try:
            rec = self._load(name)
            if not rec.check_token(token):
                rec = self._recheck(name, rec)  # a token made since the record was cached
        except (InvalidName, NotFound):
            rec = None
        if rec is None or not rec.check_token(token):
            raise fail(401, "unauthorized", "the token is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return rec


class UploadResource:
    def __init__(self, limits: LimitsSection, request_deadline: float, view: PhotoView, ingestor: Ingestor,
                 auth: TokenAuth, spool_dir: Path, after_store: Callable[[PhotoRecord], None]):
        self.limits, self.request_deadline, self.view = limits, request_deadline, view
        self.ingestor = ingestor
        self.auth = auth
        self.spool_dir = spool_dir
        self.after_store = after_store

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic()
        try:
            self._upload(req, resp)
        except falcon.HTTPError as exc:
            metrics.UPLOADS.labels(status=exc.status[:3]).inc()
            raise
        metrics.UPLOADS.labels(status=str(resp.status)[:3]).inc()
        metrics.UPLOAD_SECONDS.observe(time.monotonic() - started)

    def _upload(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.auth.user(req)
        limits = self.limits
        if req.content_length is not None and req.content_length > limits.max_upload_bytes + MULTIPART_SLACK:
            raise fail(413, "too_large", f"the upload is {req.content_length} bytes; the limit is {limits.max_upload_bytes}",
                       {"Connection": "close"})
        if req.content_length is None:  # chunked: falcon's multipart parser needs the length
            raise fail(411, "length_required", "send the upload with a Content-Length (chunked bodies are not accepted)")
        if not (req.content_type or "").startswith("multipart/form-data"):
            raise fail(415, "not_multipart", "send multipart/form-data with the image in the 'photo' field")
        title, private = "", False
        with Spool(limits.spool_threshold, self.spool_dir) as spool:
            got_photo = False
            for part in req.get_media():
                if part.name == "photo":
                    if got_photo:
                        raise fail(400, "duplicate_field", "send exactly one 'photo' file")
                    got_photo = True
                    try:
                        receive(part.stream, spool, limits.max_upload_bytes)
                    except TooLarge as exc:
                        raise fail(413, "too_large", str(exc), {"Connection": "close"}) from None
                elif part.name == "title":
                    title = "".join(ch for ch in part.get_text() or "" if ch.isprintable()).strip()
                    if len(title) > limits.max_title_chars:
                        raise fail(400, "title_too_long", f"the title is longer than {limits.max_title_chars} characters")
                elif part.name == "private":
                    private = (part.get_text() or "").strip().lower() in TRUE_WORDS
            if not got_photo:
                raise fail(400, "missing_photo", "no 'photo' file field in the form")
            deadline.begin(self.request_deadline)  # storage time starts now, not at the first byte
            try:
                rec, created = self.ingestor.ingest(user.name, spool, UploadMeta(title, private), user.allow_originals)
            except ImageRejected as exc:
                raise fail(exc.status, exc.code, exc.message) from None
            except StorageError as exc:
                raise fail(503, "storage_unavailable", f"the photo could not be stored: {exc}", {"Retry-After": "5"}) from None
        metrics.UPLOAD_BYTES.inc(rec.bytes if created else 0)
        resp.location = f"/api/photos/{rec.owner}/{rec.id}"
        if private and not rec.private:
            # The same bytes are already this user's *public* photo. Answering it as if the
            # upload had made a private one would tell the uploader a lie about who can see it.
            resp.status = falcon.HTTP_409
            resp.media = {"error": "already_public",
                          "message": f"these bytes are already your public photo {rec.id}; to make it private, "
                                     f"PATCH {resp.location} with {{\"private\": true}}",
                          "photo": self.view(rec)}
            return
        resp.status = falcon.HTTP_201 if created else falcon.HTTP_200
        resp.media = self.view(rec)
        if created:
            self.after_store(rec)


class PhotoResource:
    def __init__(self, store: BlobStore, auth: TokenAuth, purger: Purger | None, view: PhotoView,
                 max_title_chars: int):
        self.store, self.auth, self.purger, self.view = store, auth, purger, view
        self.max_title_chars = max_title_chars

    def _load(self, user: str, photo_id: str) -> PhotoRecord:
        try:
            return PhotoRecord.load(self.store, valid_user(user), valid_photo_id(photo_id))
        except (InvalidName, NotFound):
            raise fail(404, "not_found", "no such photo") from None
        except StorageError as exc:
            raise fail(503, "storage_unavailable", f"storage failed: {exc}", {"Retry-After": "5"}) from None

    def _owned(self, req: falcon.Request, user: str, photo_id: str) -> PhotoRecord:
        """The record, if the token is its owner's (401 without one; 404 hides a private photo)."""
        viewer = self.auth.user(req)
        rec = self._load(user, photo_id)
        if viewer.name != rec.owner:
            if rec.private:
                raise fail(404, "not_found", "no such photo")
            raise fail(403, "forbidden", "only the photo's owner may change or delete it")
        return rec

    def _log_purge(self, rec: PhotoRecord, reason: str) -> PurgeEntry | None:
        """Commit the photo's cache purge before the store changes (503 and nothing changed if
        it cannot be logged): once logged, every cache node drops the photo."""
        if self.purger is None:
            return None
        try:
            return self.purger.log([rec.ref.purge_path()], reason)
        except StorageError as exc:
            raise fail(503, "storage_unavailable", f"nothing was changed: the cache purge could not be logged ({exc})",
                       {"Retry-After": "5"}) from None

    def _push(self, entry: PurgeEntry | None) -> dict:
        return self.purger.push(entry) if entry is not None else {"logged": False, "status": "no cache purge configured"}

    def on_get(self, req: falcon.Request, resp: falcon.Response, user: str, photo_id: str) -> None:
        rec = self._load(user, photo_id)
        if rec.private:
            viewer = self.auth.user(req, required=False)
            if viewer is None or viewer.name != rec.owner:
                raise fail(404, "not_found", "no such photo")
        resp.media = self.view(rec)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, user: str, photo_id: str) -> None:
        rec = self._owned(req, user, photo_id)
        if not (req.content_type or "").startswith("application/json"):
            raise fail(415, "not_json", "send the changes as application/json")
        if (req.content_length or 0) > MAX_EDIT_BYTES:
            raise fail(413, "too_large", f"an edit is at most {MAX_EDIT_BYTES} bytes of JSON")
        try:
            changes = PhotoChanges.from_json(req.get_media(), self.max_title_chars)
        except BadChanges as exc:
            raise fail(400, "bad_changes", str(exc)) from None
        entry = self._log_purge(rec, "privacy change") if changes.touches_cache else None
        try:
            rec = apply_changes(self.store, rec, changes)
        except Conflict:
            raise fail(409, "changed_meanwhile", "the photo changed while this edit was made (another edit, or a "
                       "delete); nothing of this edit was stored: read it again and retry") from None
        except StorageError as exc:
            raise fail(503, "storage_unavailable", f"the change was not stored: {exc}", {"Retry-After": "5"}) from None
        resp.media = {**self.view(rec), **({"cache": self._push(entry)} if changes.touches_cache else {})}

    def on_delete(self, req: falcon.Request, resp: falcon.Response, user: str, photo_id: str) -> None:
        rec = self._owned(req, user, photo_id)
        entry = self._log_purge(rec, "delete")
        try:
            removed = delete_photo(self.store, rec)
        except StorageError as exc:
            raise fail(503, "storage_unavailable", f"the photo was not (fully) deleted: {exc}; retry",
                       {"Retry-After": "5"}) from None
        metrics.DELETES.inc()
        resp.media = {"deleted": rec.id, "owner": rec.owner, "objects_removed": removed, "cache": self._push(entry)}


class UserPhotosResource:
    """A user's photos, oldest first; their private ones too when the owner asks (with the token)."""

    MAX_LIMIT = 500

    def __init__(self, store: BlobStore, auth: TokenAuth, view: PhotoView):
        self.store, self.auth, self.view = store, auth, view

    def on_get(self, req: falcon.Request, resp: falcon.Response, user: str) -> None:
        try:
            prefix = photo_prefix(valid_user(user))
            after = req.get_param("after")
            start_after = f"{prefix}{valid_photo_id(after)}.json" if after else ""
        except InvalidName as exc:
            raise fail(400, "bad_request", str(exc)) from None
        limit = req.get_param_as_int("limit", min_value=1, max_value=self.MAX_LIMIT, default=100)
        viewer = self.auth.user(req, required=False)
        owner = viewer is not None and viewer.name == user
        photos = []
        for key in self.store.list(prefix, start_after=start_after):
            try:
                parse_record_key(key)
                rec = PhotoRecord.from_json(self.store.get(key))
            except (InvalidName, NotFound, ValueError):
                continue
            if owner or not rec.private:
                photos.append(self.view(rec))
            if len(photos) >= limit:
                break
        resp.media = {"user": user, "photos": photos}


class OpenApiResource:
    """``GET /api/openapi.json``: the API's OpenAPI 3 document (ypfs/openapi.py). Public."""

    def __init__(self, public_url: str, limits: LimitsSection):
        self.doc = openapi.document(public_url, limits)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.doc
        resp.set_header("Cache-Control", "no-cache")


class PurgeSink:
    """``PURGE /photos/...`` (fronts forward it here): an admin's purge, committed to the purge
    log and pushed to every cache node. Only with the admin token; the answer says whether it
    is only logged or already applied on every node.

        PURGE /photos/{user}/{id}_{secret}/            every size and format of a photo
        PURGE /photos/{user}/{id}_{secret}/{size}      every format of one size
        PURGE /photos/{user}/{id}_{secret}/{size}.ext  one URL
        PURGE /photos/                                 every cached image on every node
    """

    def __init__(self, admin_token: str, purger: Purger | None):
        self.token = admin_token
        self.purger = purger

    def __call__(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        if req.method != "PURGE":
            raise fail(404, "not_found", "images are served by the cache nodes, not by ypfs")
        require_service_token(req, self.token)
        if self.purger is None:
            raise fail(503, "no_purger", "this ypfs node has no cache purge configured")
        try:
            paths = check_paths([req.path])
        except ValueError as exc:
            raise fail(400, "bad_purge", str(exc)) from None
        try:
            resp.media = {"purged": req.path, **self.purger.purge(paths, "admin")}
        except StorageError as exc:
            raise fail(503, "storage_unavailable", f"the purge was not logged: {exc}", {"Retry-After": "5"}) from None


class HealthResource:
    def __init__(self, node: str, store: BlobStore):
        self.node, self.store = node, store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "service": "ypfs", "node": self.node, "storage": self.store.name}


class ReadyResource:
    """Ready while the store answers: hashproxy sends no new uploads or API calls here otherwise."""

    def __init__(self, node: str, probe: StorageProbe):
        self.node, self.probe = node, probe

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ok, reason = self.probe.status()
        readiness(resp, "ypfs", self.node, ok, [] if ok else [reason])


class MetricsResource:
    """/metrics takes the cluster's service credential (``Authorization: Bearer <cluster.admin_token>``)."""

    def __init__(self, token: str):
        self.token = token

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_service_token(req, self.token)
        resp.data, resp.content_type = metrics_body()


def lazy_id_generator(epoch_ms: int, node_id: int, slot_dir: Path) -> Callable[[], str]:
    """An id source that claims its worker slot on first use, i.e. in the worker after fork."""
    state: dict = {}
    lock = threading.Lock()

    def next_id() -> str:
        with lock:
            if state.get("pid") != os.getpid():
                slot, fd = claim_slot(slot_dir)
                state.update(pid=os.getpid(), fd=fd, gen=IdGenerator(node_id, slot, epoch_ms))
        return state["gen"].next_id()

    return next_id


def create_app(cfg: Config, store: BlobStore, node: str, *, next_id: Callable[[], str] | None = None,
               notifier: RenderNotifier | None = None, purger: Purger | None = None) -> falcon.App:
    """The WSGI app of one ypfs node. A composition root: it takes the whole Config and hands
    each resource only the section and values it reads; ``purger`` is built by the caller
    (``Purger.from_sections``); None: this node has no cache purge configured."""
    node_cfg = cfg.node("ypfs", node)
    work_dir = cfg.data_dir / "ypfs" / node
    next_id = next_id or lazy_id_generator(cfg.ids.epoch_ms, node_cfg.node_id, work_dir / "slots")
    auth = TokenAuth(store)

    def after_store(rec: PhotoRecord) -> None:
        if notifier is not None and cfg.ypfs.render_after_upload:
            notifier.submit(rec.ref)

    app = json_errors(falcon.App(middleware=[RequestDeadline(cfg.ypfs.request_deadline)]))
    form_opts = app.req_options.media_handlers[falcon.MEDIA_MULTIPART].parse_options
    form_opts.max_body_part_count = 16
    form_opts.max_body_part_buffer_size = 64 * 1024  # small text fields only; the file is streamed
    view: PhotoView = functools.partial(photo_view, cfg.public_url, cfg.sizes)
    app.add_route("/upload", UploadResource(cfg.limits, cfg.ypfs.request_deadline, view,
                                            Ingestor(cfg.limits, store, next_id), auth, work_dir / "spool", after_store))
    app.add_route("/api/photos/{user}/{photo_id}", PhotoResource(store, auth, purger, view, cfg.limits.max_title_chars))
    app.add_route("/api/users/{user}/photos", UserPhotosResource(store, auth, view))
    app.add_route("/api/openapi.json", OpenApiResource(cfg.public_url, cfg.limits))
    app.add_sink(PurgeSink(cfg.cluster.admin_token, purger), IMAGE_PATH_PREFIX)
    app.add_route("/healthz", HealthResource(node, store))
    app.add_route("/readyz", ReadyResource(node, StorageProbe(store)))
    app.add_route("/metrics", MetricsResource(cfg.cluster.admin_token))
    return app
