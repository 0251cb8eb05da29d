"""The ypws falcon app: thin resources over ``ImageService`` and the pages.

    GET|HEAD /photos/{user}/{id}_{secret}/{size}.{ext}    a rendition (or original.{ext})
    PURGE    /photos/{user}/{id}_{secret}/{size}[.{ext}]  drop cached entries (admin token)
    PURGE    /photos/{user}/{id}_{secret}/                 drop every cached entry of the photo
    PURGE    /photos/                                      drop every cached entry (admin flush)
    GET      /[?before={id}]                              home: every user's newest public photos, paged
    GET      /u/{user}[?before={id}]                      gallery, newest first, a page at a time
    GET      /p/{user}/{id}                               photo page
    GET      /upload                                      upload page (the POST goes to ypfs)
    GET      /healthz                                     liveness: constant
    GET      /readyz                                      readiness: ``ImageService.ready()`` (purge log applied,
                                                          storage reachable); 503 with the reasons
    GET      /metrics                                     needs the service credential

Cache hits normally never reach falcon: the worker (``ypws.worker``) answers them
on its event loop through the same ``ImageService``; this app serves the misses,
pages and PURGE from a thread pool, and every request when run under any other
WSGI server (tests use falcon's TestClient). The worker answers /readyz on its
event loop too, so a pool busy with slow misses cannot make a live node look dead.
A miss's storage calls and its render share ``ypws.request_deadline``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import falcon
import falcon.routing

from cluster.config import Config, YpwsSection
from cluster.profiles import by_name
from cluster.web import RequestDeadline, fail, json_errors, metrics_body, readiness, require_service_token, storage_failed
from storage import BlobStore, NotFound, StorageError
from storage.keys import (InvalidName, PhotoRef, parse_photo_segment, parse_timeline_key, record_key, valid_photo_id,
                          valid_user)
from storage.purgelog import PurgeLog
from storage.records import PhotoRecord, UserRecord

from . import pages
from .accesslog import AccessLog
from .diskcache import DiskCache
from .images import ImageRequest, ImageService, Reply
from .listing import newest_record_keys, newest_timeline_keys
from .metrics import CacheGauges
from .purgeapply import PurgeApplier, SyncGate
from .urls import BadPath, NoSuchImage, check_path, parse_image_path

GALLERY_LIMIT = 100
BOOT_ENV = "YPWS_BOOT"  # one id per `ypws serve` run, shared by its workers (see purgeapply.SyncGate)


class Router(falcon.routing.CompiledRouter):
    """Falcon's router, also mapping the HTTP cache method PURGE to ``on_purge``."""

    def map_http_methods(self, resource: object, **kwargs: Any) -> dict:
        method_map = super().map_http_methods(resource, **kwargs)
        responder = getattr(resource, "on_purge", None)
        if responder is not None:
            method_map["PURGE"] = responder
        return method_map


class RejectBadPaths:
    """Malformed paths (non-UTF-8, overlong, traversal, an encoded '/') get a 400 before any routing.

    ``%2F`` is refused as hashproxy refuses it: PATH_INFO arrives decoded, so
    ``/photos/alice%2F1_s/small.jpg`` would otherwise be served as the image that the
    proxy routed as a page (unpinned, and missed by a purge of the real URL). The raw
    request target is in RAW_URI (set by our worker, as gunicorn's own workers do)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        raw_uri = req.env.get("RAW_URI", "")
        if "%" in raw_uri and "%2f" in raw_uri.partition("?")[0].lower():
            raise fail(400, "bad_path", "an encoded '/' (%2F) is not allowed in a path")
        raw = req.env.get("PATH_INFO", "")
        try:
            path = raw.encode("latin-1").decode("utf-8")
            check_path(path)
        except (UnicodeError, BadPath) as exc:
            message = str(exc) if isinstance(exc, BadPath) else "the path is not valid UTF-8"
            raise fail(400, "bad_path", message) from None


def image_request(req: falcon.Request) -> ImageRequest:
    get = req.get_header
    return ImageRequest(
        method=req.method, path=req.path, query=req.query_string, host=get("Host"), referer=get("Referer"),
        accept=get("Accept"), if_none_match=get("If-None-Match"), if_modified_since=get("If-Modified-Since"),
        range=get("Range"), if_range=get("If-Range"),
    )


def apply_reply(reply: Reply, resp: falcon.Response) -> None:
    resp.status = reply.status
    for name, value in reply.headers:
        if name == "Content-Length":
            resp.content_length = int(value)
        else:
            resp.set_header(name, value)
    if reply.stream is not None:
        resp.stream = reply.stream
    elif reply.body:
        resp.data = bytes(reply.body)


class ImageResource:
    def __init__(self, service: ImageService, admin_token: str):
        self.service = service
        self.admin_token = admin_token

    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        apply_reply(self.service.respond(image_request(req)), resp)

    on_head = on_get

    def on_purge(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        require_service_token(req, self.admin_token)
        try:
            target = parse_image_path(req.path, allow_bare_size=True)
        except BadPath as exc:
            raise fail(400, "bad_path", str(exc)) from None
        except NoSuchImage:
            raise fail(404, "not_found", "no such image") from None
        removed = self.service.purge(target)
        resp.media = {"purged": len(removed), "keys": removed, "node": self.service.node}


class PhotoResource:
    """``/photos/{user}/{id}_{secret}/``: PURGE drops every cached size and format of the photo."""

    def __init__(self, service: ImageService, admin_token: str):
        self.service = service
        self.admin_token = admin_token

    def on_get(self, req: falcon.Request, resp: falcon.Response, **_: str) -> None:
        raise fail(404, "not_found", "no such image")

    on_head = on_get

    def on_purge(self, req: falcon.Request, resp: falcon.Response, user: str, segment: str) -> None:
        require_service_token(req, self.admin_token)
        try:
            photo_id, secret = parse_photo_segment(segment)
            ref = PhotoRef(user, photo_id, secret)
        except InvalidName:
            raise fail(404, "not_found", "no such image") from None
        removed = self.service.purge_photo(ref)
        resp.media = {"purged": len(removed), "keys": removed, "node": self.service.node}


class PurgeAllResource:
    """``/photos/``: PURGE empties this node's whole cache (an admin's flush, pushed to every node)."""

    def __init__(self, service: ImageService, admin_token: str):
        self.service = service
        self.admin_token = admin_token

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise fail(404, "not_found", "no such image")

    on_head = on_get

    def on_purge(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_service_token(req, self.admin_token)
        resp.media = {"purged": self.service.cache.purge_all(), "all": True, "node": self.service.node}


class HealthResource:
    def __init__(self, node: str):
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", "node": self.node}
        resp.set_header("Cache-Control", "no-store")


class ReadyResource:
    """``/readyz``: ``ImageService.ready()``. Anyone may call it: it says nothing but that."""

    def __init__(self, service: ImageService):
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ok, reasons = self.service.ready()
        readiness(resp, "ypws", self.service.node, ok, reasons)


class MetricsResource:
    """/metrics (and /metrics/: trailing slashes are stripped) take the cluster's service credential.

    This worker's counts are pushed first, so the scrape sees them up to date (``ypws.metrics``)."""

    def __init__(self, cache: DiskCache, node: str, token: str):
        self.cache = cache
        self.node = node
        self.token = token

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_service_token(req, self.token)
        self.cache.flush()
        body, content_type = metrics_body(CacheGauges(self.cache.totals(), self.node),
                                          registry=self.cache.stats.registry)
        resp.data = body
        resp.content_type = content_type
        resp.set_header("Cache-Control", "no-store")


def public_page(store: BlobStore, record_keys: Iterable[str]) -> tuple[list[PhotoRecord], str | None]:
    """Up to GALLERY_LIMIT public records from newest-first record keys, and the id the next
    page starts below (None on the last page). Missing or private records are skipped."""
    records: list[PhotoRecord] = []
    try:
        for key in record_keys:
            if len(records) == GALLERY_LIMIT:  # a photo beyond this page exists
                return records, records[-1].id
            try:
                rec = PhotoRecord.from_json(store.get(key))
            except (NotFound, ValueError, TypeError):
                continue
            if not rec.private:
                records.append(rec)
    except StorageError as exc:
        raise storage_failed(exc) from None
    return records, None


def before_param(req: falcon.Request) -> str | None:
    before = req.get_param("before")
    if before:
        try:
            valid_photo_id(before)
        except InvalidName:
            raise fail(400, "bad_request", "before: a photo id") from None
    return before


class GalleryResource:
    def __init__(self, sizes: pages.Sizes, epoch_ms: int, store: BlobStore, clock: Callable[[], float] = time.time):
        self.sizes, self.epoch_ms = sizes, epoch_ms
        self.store = store
        self.clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response, user: str) -> None:
        """Newest first, a page at a time: ``?before={id}`` starts below that photo."""
        try:
            valid_user(user)
        except InvalidName:
            raise fail(404, "not_found", "no such user") from None
        before = before_param(req)
        keys = newest_record_keys(self.store, user, self.epoch_ms, lambda: int(self.clock() * 1000), before)
        records, older = public_page(self.store, keys)
        resp.content_type = falcon.MEDIA_HTML
        resp.text = pages.gallery_html(self.sizes, user, records, older=older, paged=bool(before))
        resp.set_header("Cache-Control", "no-cache")


class HomeResource:
    """``/``: the newest public photos of every user, a page at a time, from one timeline listing
    (``timeline/{id}_{user}``) instead of a walk over every user."""

    def __init__(self, sizes: pages.Sizes, epoch_ms: int, store: BlobStore, clock: Callable[[], float] = time.time):
        self.sizes, self.epoch_ms = sizes, epoch_ms
        self.store = store
        self.clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        before = before_param(req)
        keys = newest_timeline_keys(self.store, self.epoch_ms, lambda: int(self.clock() * 1000), before)
        records, older = public_page(self.store, (record_key(user, photo_id)
                                                  for photo_id, user in map(parse_timeline_key, keys)))
        resp.content_type = falcon.MEDIA_HTML
        resp.text = pages.home_html(self.sizes, records, older=older, paged=bool(before))
        resp.set_header("Cache-Control", "no-cache")


class PhotoPageResource:
    def __init__(self, sizes: pages.Sizes, store: BlobStore):
        self.sizes = sizes
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response, user: str, photo_id: str) -> None:
        try:
            rec = PhotoRecord.load(self.store, valid_user(user), valid_photo_id(photo_id))
        except (InvalidName, NotFound, ValueError):
            raise fail(404, "not_found", "no such photo") from None
        if rec.private:
            raise fail(404, "not_found", "no such photo")
        try:
            owner_allows = UserRecord.load(self.store, rec.owner).allow_originals
        except (NotFound, InvalidName, ValueError):
            owner_allows = True
        resp.content_type = falcon.MEDIA_HTML
        resp.text = pages.photo_html(self.sizes, rec, rec.original_public and owner_allows)
        resp.set_header("Cache-Control", "no-cache")


class UploadPageResource:
    def __init__(self, upload_url: str, max_bytes: int):
        self.html = pages.upload_html(upload_url, max_bytes)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = self.html


def cache_index_unavailable(req: falcon.Request, resp: falcon.Response, exc: sqlite3.Error, params: dict) -> None:
    """The cache index could not be read or written (its disk failing or full, and no way round it,
    as for finding the keys a PURGE names): 503, so the caller (hashproxy's purge journal) retries."""
    raise fail(503, "cache_unavailable", f"the cache index failed: {exc}", {"Retry-After": "2"})


def create_app(cfg: Config, node: str, store: BlobStore, cache: DiskCache, *, renderer=None,
               service: ImageService | None = None) -> falcon.App:
    """The WSGI app of one ypws node; every dependency is passed in (tests inject their own).

    A composition root: it takes the whole Config and hands each resource (and the
    ``ImageService``) only the section and values it reads. ``renderer``: what renders a
    missing size (``RenderClient`` in production, see ``get_app``; tests pass the in-process
    magickd service); None answers such a miss 503. ``service``: an ``ImageService`` built
    already (``get_app`` shares it with the worker's hit path)."""
    service = service or _image_service(cfg, node, store, cache, renderer)
    app = json_errors(falcon.App(router=Router(), middleware=[RejectBadPaths(),
                                                              RequestDeadline(cfg.ypws.request_deadline)]))
    app.add_error_handler(sqlite3.Error, cache_index_unavailable)
    app.req_options.strip_url_path_trailing_slash = True  # PURGE /photos/u/id_s/ is the whole photo
    app.add_route("/photos/{user}/{segment}/{name}", ImageResource(service, cfg.cluster.admin_token))
    app.add_route("/photos/{user}/{segment}", PhotoResource(service, cfg.cluster.admin_token))
    app.add_route("/photos", PurgeAllResource(service, cfg.cluster.admin_token))
    sizes = by_name(cfg.sizes)
    app.add_route("/", HomeResource(sizes, cfg.ids.epoch_ms, store))
    app.add_route("/u/{user}", GalleryResource(sizes, cfg.ids.epoch_ms, store))
    app.add_route("/p/{user}/{photo_id}", PhotoPageResource(sizes, store))
    app.add_route("/upload", UploadPageResource(cfg.ypws.upload_url, cfg.limits.max_upload_bytes))
    app.add_route("/healthz", HealthResource(node))
    app.add_route("/readyz", ReadyResource(service))
    app.add_route("/metrics", MetricsResource(cache, node, cfg.cluster.admin_token))
    return app


def _image_service(cfg: Config, node: str, store: BlobStore, cache: DiskCache, renderer) -> ImageService:
    """The composition roots' one way to unpack the Config into an ``ImageService``."""
    return ImageService(cfg.ypws, by_name(cfg.sizes), node_name=node, url_key=cfg.cluster.url_key,
                        public_url=cfg.public_url, render_budget=cfg.magickd.client_timeout,
                        store=store, cache=cache, renderer=renderer)


@dataclass
class NodeApp:
    """What a worker runs: the WSGI app, plus the service and cache its event-loop hit path uses."""

    wsgi: falcon.App
    service: ImageService
    cache: DiskCache
    access_log: AccessLog

    def __call__(self, environ: dict, start_response):
        return self.wsgi(environ, start_response)


def cache_dir(settings: YpwsSection, data_dir: Path, node: str) -> Path:
    """This node's cache folder: ``{ypws.cache_dir or data_dir/cache}/{node}``."""
    base = Path(settings.cache_dir).resolve() if settings.cache_dir else data_dir / "cache"
    return base / node


def open_cache(settings: YpwsSection, folder: Path, node: str) -> DiskCache:
    """Node ``node``'s disk cache in ``folder`` (``cache_dir``), sized and run as ``settings`` say."""
    return DiskCache(folder, settings.cache_bytes, settings.cache_policy, retry_after=settings.cache_retry_seconds,
                     node=node)


def get_app(cfg: Config, node: str) -> NodeApp:
    """The real app for gunicorn: built in each worker, after fork. A composition root (as
    ``create_app``): the one place besides it that unpacks the whole Config for a node."""
    from magickd.client import RenderClient
    from storage import open_store

    store = open_store(cfg.storage, cfg.local_root)
    cache = open_cache(cfg.ypws, cache_dir(cfg.ypws, cfg.data_dir, node), node)
    cache.connect()
    service = _image_service(cfg, node, store, cache, RenderClient(cfg.magickd, cfg.cluster.admin_token))
    boot = os.environ.get(BOOT_ENV) or f"ppid-{os.getppid()}"  # `ypws serve` sets one per run
    p = cfg.purge
    service.gate = SyncGate(cache.root, boot, p.poll_interval)
    PurgeApplier(PurgeLog(store, p.settle), service, cache.root, boot, interval=p.poll_interval,
                 retention=p.retention).start()
    access_log = AccessLog(cfg.ypws.access_log, node)
    return NodeApp(create_app(cfg, node, store, cache, service=service), service, cache, access_log)
