"""Answering one image request: the rules, then this node's cache, then storage, then magickd.

``ImageService.respond`` takes an ``ImageRequest`` (the few request fields that
matter, as plain strings) and returns a ``Reply`` (status, headers, body). It
knows nothing of falcon or sockets, so the event-loop hit path of the worker and
the falcon app give the same answer to the same request. With ``fast=True`` it
answers only what needs no blocking I/O beyond reading one cache file, and
returns None on a miss so the caller can hand the request to a thread.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import BinaryIO, Callable

from cluster import deadline
from cluster.config import YpwsSection
from cluster.profiles import Sizes, profile_version
from media.geoscrub import PatchedReader, apply_patches, location_patches, strip_location
from storage import BlobStore, NotFound, StorageError
from storage.keys import CONTENT_TYPES, EXTENSIONS, ImagePath, InvalidName, PhotoRef, parse_rendition_key
from storage.readiness import StorageProbe
from storage.records import PhotoRecord, UserRecord

from .conditional import RangeError, http_date, if_range_matches, not_modified, parse_range
from .diskcache import CorruptEntry, DiskCache, body_digest
from .hotlink import HotlinkPolicy
from .negotiation import pick_variant
from .placeholder import placeholder_png
from .signing import SignatureError, verify
from .urls import BadPath, NoSuchImage, parse_image_path, query_params


@dataclass(slots=True)
class ImageRequest:
    method: str
    path: str
    query: str = ""
    host: str | None = None
    referer: str | None = None
    accept: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    range: str | None = None
    if_range: str | None = None


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...]
    body: bytes | memoryview = b""
    stream: BinaryIO | None = None  # a large body to stream (Content-Length is in headers); caller closes
    cache: str = "-"                # HIT | MISS | - : for the access log


class Problem(Exception):
    """A definite error answer: status, a short code and a message (rendered as JSON)."""

    def __init__(self, status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or []


@dataclass(slots=True)
class StoredBody:
    """An original too large for the cache: streamed from storage with its location blanked."""

    store: BlobStore
    key: str
    size: int
    digest: str
    meta: dict
    patches: list = field(default_factory=list)  # geoscrub patches, applied as the bytes pass
    body: None = None

    def open_body(self) -> BinaryIO:
        raw = self.store.open(self.key)
        return PatchedReader(raw, self.patches) if self.patches else raw

    def read_range(self, start: int, length: int) -> bytes:
        return apply_patches(self.store.get_range(self.key, start, length), start, self.patches)


@dataclass(slots=True)
class Transient:
    """A body served once without being cached (larger than a cache segment)."""

    body: bytes
    meta: dict
    digest: str = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.digest = body_digest(self.body)
        self.size = len(self.body)

    def open_body(self) -> BinaryIO:
        return io.BytesIO(self.body)

    def read_range(self, start: int, length: int) -> bytes:
        return self.body[start:start + length]


def storage_unavailable(exc: StorageError) -> Problem:
    """The 503 every storage failure of a request becomes: the client may retry shortly."""
    return Problem(503, "storage_unavailable", f"storage failed: {exc}", [("Retry-After", "2")])


RESOLVED_MAX = 8192
PATCHES_MEMO = 1024  # originals too large for the cache whose location patches are remembered


@dataclass(slots=True)
class _Resolved:
    target: ImagePath
    profile: object | None  # SizeProfile; None for the original
    version: str
    negotiable: bool
    keys: dict = field(default_factory=dict)

    def key(self, fmt: str) -> str:
        """The cache key for this URL served in ``fmt``."""
        key = self.keys.get(fmt)
        if key is None:
            t = self.target
            key = (t.ref.cached_original_key(t.ext) if self.profile is None
                   else t.ref.rendition_key(t.size, self.version, fmt))
            self.keys[fmt] = key
        return key


def _rendition_ext(key: str) -> str | None:
    try:
        return parse_rendition_key(key).ext
    except InvalidName:
        return None


class ImageService:
    def __init__(self, settings: YpwsSection, sizes: Sizes, *, node_name: str, url_key: str, public_url: str,
                 render_budget: float, store: BlobStore, cache: DiskCache, renderer=None,
                 clock: Callable[[], float] = time.time):
        """One node's image answers, from its own section and only the few cluster values it needs.

        ``url_key`` (``cluster.url_key``) checks signed URLs; ``public_url`` is the site hotlink
        protection always allows; ``render_budget`` (``magickd.client_timeout``) bounds the render
        of a missing size; ``renderer`` renders one (None: such a miss is a 503).
        """
        y = settings
        self.node = node_name
        self.store = store
        self.cache = cache
        self.renderer = renderer
        self.clock = clock
        self.render_budget = render_budget
        self.storage_probe = StorageProbe(store)
        self.gate = None  # ypws.purgeapply.SyncGate: no cache hit before the purge log is applied
        self.url_key = url_key
        self.max_ttl = y.signed_url_max_ttl
        self.max_age = y.max_age
        self.client_timeout = y.client_timeout  # read by the worker's connection sweep
        self.max_connections = y.max_connections  # read by the worker as connections arrive
        self.hotlink = HotlinkPolicy.from_config(y, public_url)
        self.hotlink_placeholder = y.hotlink_action == "placeholder"
        self.profiles = dict(sizes)
        self.versions = {name: profile_version(p) for name, p in sizes.items()}
        self.cc_versioned = f"public, max-age={y.max_age}, immutable"
        self.cc_unversioned = f"public, max-age={y.unversioned_max_age}"
        self.cc_original = f"public, max-age={y.original_max_age}"
        self._placeholder = placeholder_png()
        # memos (lru_cache: thread-safe, and the event loop and the worker's threads share them)
        self._resolve = lru_cache(maxsize=RESOLVED_MAX)(self._resolve_path)     # hot URLs repeat
        self._head_blocks = lru_cache(maxsize=RESOLVED_MAX)(self._make_head_blocks)
        self._location_patches = lru_cache(maxsize=PATCHES_MEMO)(self._find_location_patches)

    # -- readiness ---------------------------------------------------------------------------
    def ready(self, wait: bool = True) -> tuple[bool, list[str]]:
        """(ready, reasons): whether this node should get new traffic (/readyz).

        Each condition adds a reason when it fails: the purge log applied since the
        node started and still being applied (the gate, when there is an applier),
        and storage answering (a cached probe, at most one a second). Requests are
        served either way once the gate has opened: hashproxy falls back to unready
        nodes when no node is ready. ``wait=False`` (the event loop) never blocks: a
        stale probe result is refreshed on a thread and the last one returned.
        """
        reasons = []
        if self.gate is not None:
            synced, why = self.gate.ready()
            if not synced:
                reasons.append(why)
        ok, reason = self.storage_probe.status(wait)
        if not ok:
            reasons.append(reason)
        return not reasons, reasons

    # -- entry point -----------------------------------------------------------------------
    def respond(self, req: ImageRequest, fast: bool = False) -> Reply | None:
        if self.gate is not None and not self.gate.trusted():
            return self.error(503, "warming_up", "this node has not yet applied the purge log since it started",
                              [("Retry-After", "1")])
        try:
            try:
                return self._respond(req, fast)
            except CorruptEntry:
                # the cached entry was found damaged before anything was sent, and dropped:
                # the same request again is a plain miss, answered from storage
                return self._respond(req, fast)
        except CorruptEntry:  # damaged again at once: the cache disk is failing
            return self.error(503, "cache_unavailable", "the cache disk is failing; try again shortly",
                              [("Retry-After", "2")])
        except NoSuchImage:
            return self.error(404, "not_found", "no such image")
        except BadPath as exc:
            return self.error(400, "bad_path", str(exc))
        except SignatureError as exc:
            return self.error(403, exc.code, exc.message)
        except Problem as exc:
            return self.error(exc.status, exc.code, exc.message, exc.headers)

    def error(self, status: int, code: str, message: str, extra: list[tuple[str, str]] | None = None) -> Reply:
        body = json.dumps({"error": code, "message": message}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store"), ("X-Served-By", self.node), *(extra or [])]
        return Reply(status, headers, body)

    # -- the rules, then the lookup ----------------------------------------------------------
    def _resolve_path(self, path: str) -> "_Resolved":
        """What a path names (``_resolve``, memoised per path; a path naming nothing raises, and is not kept)."""
        target = parse_image_path(path)
        if target.is_original:
            return _Resolved(target, None, "", False)
        profile = self.profiles.get(target.size)
        if profile is None or target.fmt not in profile.formats:
            raise NoSuchImage()
        negotiable = target.fmt == profile.format and bool(profile.variants)
        return _Resolved(target, profile, self.versions[target.size], negotiable)

    def _respond(self, req: ImageRequest, fast: bool) -> Reply | None:
        resolved = self._resolve(req.path)
        target = resolved.target
        if req.referer and not self.hotlink.allows(req.referer, req.host):
            return self._hotlinked(req)
        params = query_params(req.query)
        expiry = None
        if "sig" in params or "exp" in params:
            expiry = verify(self.url_key, self.max_ttl, req.path, params.get("exp"), params.get("sig"), self.clock())

        negotiable = resolved.negotiable
        fmt = target.fmt
        if resolved.profile is None:
            cache_control = self.cc_original
        else:
            if negotiable:
                fmt = pick_variant(req.accept, resolved.profile) or fmt
            cache_control = self.cc_versioned if params.get("v") == resolved.version else self.cc_unversioned
        key = resolved.key(fmt)

        source = self.cache.get(key)
        outcome = "HIT"
        if source is None:
            if fast:
                return None
            source, outcome = self._fill(target, key, fmt, expiry is not None)
        elif fast and source.body is None:
            return None  # too large to send from the event loop; the caller's thread streams it
        stats = self.cache.stats
        stats.inc("hits" if outcome == "HIT" else "misses")

        meta = source.meta
        if meta["private"]:
            if expiry is None:
                raise NoSuchImage()
            cache_control = f"private, max-age={max(0, min(expiry - int(self.clock()), self.max_age))}"
        elif expiry is not None:
            cache_control = "private, max-age=0"  # a signed URL of a public photo is not worth caching

        etag = f'"{source.digest}"'
        h304, h200 = self._head_blocks(etag, meta["lm"], meta["type"], source.size, cache_control, outcome, negotiable)
        if (req.if_none_match is not None or req.if_modified_since is not None) and \
                not_modified(req.if_none_match, req.if_modified_since, etag, meta["mtime"]):
            stats.inc("not_modified")
            return Reply(304, h304, cache=outcome)

        size = source.size
        span = None
        if req.range and if_range_matches(req.if_range, etag, meta["mtime"]):
            try:
                span = parse_range(req.range, size)
            except RangeError as exc:
                raise Problem(416, "bad_range", str(exc), [("Content-Range", f"bytes */{size}")]) from None
        head = req.method == "HEAD"
        if span is not None:
            start, length = span
            headers = [*h200[:-1], ("Content-Range", f"bytes {start}-{start + length - 1}/{size}"),
                       ("Content-Length", str(length))]
            body = b"" if head else source.read_range(start, length)
            if not head:
                stats.inc("bytes_served", length)
            return Reply(206, headers, body, cache=outcome)
        if head:
            return Reply(200, h200, cache=outcome)
        stats.inc("bytes_served", size)
        if source.body is not None:
            return Reply(200, h200, source.body, cache=outcome)
        return Reply(200, h200, stream=source.open_body(), cache=outcome)

    def _make_head_blocks(self, etag: str, last_modified: str, content_type: str, size: int, cache_control: str,
                          outcome: str, negotiable: bool) -> tuple[tuple, tuple]:
        """The header tuples of a 304 and a 200 for one entry and request kind (``_head_blocks``, memoised)."""
        h304 = (("ETag", etag), ("Last-Modified", last_modified), ("Cache-Control", cache_control),
                ("X-Cache", outcome), ("X-Served-By", self.node))
        if negotiable:
            h304 += (("Vary", "Accept"),)
        h200 = h304 + (("Content-Type", content_type), ("Accept-Ranges", "bytes"), ("Content-Length", str(size)))
        return h304, h200

    def _hotlinked(self, req: ImageRequest) -> Reply:
        self.cache.stats.inc("hotlinked")
        if not self.hotlink_placeholder:
            return self.error(403, "hotlink_denied", "images of this site may not be embedded by other sites")
        body = self._placeholder
        headers = [("Content-Type", CONTENT_TYPES["png"]), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                   ("X-Hotlink", "placeholder"), ("X-Served-By", self.node)]
        return Reply(200, headers, b"" if req.method == "HEAD" else body)

    # -- PURGE ---------------------------------------------------------------------------
    def purge(self, target: ImagePath) -> list[str]:
        """Drop the cache entries a URL (or a bare size) can be served from, every version.

        ``{size}.{default ext}`` covers every Accept variant it may be answered with;
        ``{size}.{other ext}`` that format only; a bare ``{size}`` (or ``original``) every format.
        """
        ref = target.ref
        if target.is_original:
            keys = ({ref.cached_original_key(target.ext)} if target.ext
                    else set(self.cache.index.keys_with_prefix(ref.cached_original_key())))
            return self.cache.purge(sorted(keys))
        profile = self.profiles.get(target.size)
        if target.fmt is None:
            fmts = None  # every format
        elif profile is not None and target.fmt == profile.format:
            fmts = set(profile.formats)
        else:
            fmts = {target.fmt}
        keys = set(self.cache.index.keys_with_prefix(ref.size_prefix(target.size)))
        if fmts is not None:
            exts = {EXTENSIONS[f] for f in fmts}
            keys = {k for k in keys if _rendition_ext(k) in exts}
        if profile is not None:  # the current keys too: a file may be left without its index row
            version = self.versions[target.size]
            keys.update(ref.rendition_key(target.size, version, f) for f in (fmts or profile.formats))
        return self.cache.purge(sorted(keys))

    def purge_photo(self, ref: PhotoRef) -> list[str]:
        """Drop every cached size, format, version and original of one photo."""
        keys = self.cache.index.keys_with_prefix(ref.rendition_prefix)
        keys += self.cache.index.keys_with_prefix(ref.cached_original_key())
        for name, version in self.versions.items():
            for fmt in self.profiles[name].formats:
                key = ref.rendition_key(name, version, fmt)
                if key not in keys:
                    keys.append(key)
        return self.cache.purge(keys)

    # -- misses ---------------------------------------------------------------------------
    def _fill(self, target: ImagePath, key: str, fmt: str, signed: bool):
        """Storage, else magickd; one fill per key node-wide (the others wait, then hit)."""
        with self.cache.fill_lock(key):
            entry = self.cache.get(key)
            if entry is not None:
                return entry, "HIT"
            record = self._record(target.ref)
            if record.private and not signed:
                raise NoSuchImage()
            if target.is_original:
                return self._fill_original(target, key, record), "MISS"
            try:
                body = self._origin_get(key)
            except NotFound:
                self._render(target.ref, target.size, fmt)
                try:
                    body = self._origin_get(key)
                except NotFound:
                    raise Problem(502, "render_missing", "the render pool did not store the rendition") from None
            mtime = self._origin_mtime(key)
            meta = {"type": CONTENT_TYPES[fmt], "mtime": mtime, "lm": http_date(mtime),
                    "private": record.private}
            return self.cache.put(key, body, meta) or Transient(body, meta), "MISS"

    def _fill_original(self, target: ImagePath, key: str, record: PhotoRecord):
        if not record.original_public or target.ext != EXTENSIONS.get(record.format) or not self._owner_allows(record):
            raise NoSuchImage()
        meta = {"type": CONTENT_TYPES.get(record.format, "application/octet-stream"), "mtime": record.uploaded_at,
                "lm": http_date(record.uploaded_at), "private": record.private}
        if record.bytes + 4096 > self.cache.entry_capacity:
            return self._stored_original(target.ref.original_key, record, meta)
        body = strip_location(self._origin_get(target.ref.original_key), record.format)
        return self.cache.put(key, body, meta) or Transient(body, meta)

    def _stored_original(self, key: str, record: PhotoRecord, meta: dict) -> StoredBody:
        """An original served from storage as it streams; its location patches are found once
        (one pass of ranged reads) and remembered, since an original's bytes never change."""
        try:
            patches = self._location_patches(key, record.bytes, record.format)
        except StorageError as exc:
            raise storage_unavailable(exc) from None
        digest = "sha256-" + record.sha256[:32] + ("-nogps" if patches else "")
        return StoredBody(self.store, key, record.bytes, digest, meta, patches)

    def _find_location_patches(self, key: str, size: int, fmt: str) -> list:
        """``_location_patches``, memoised: a failed read raises, and is not kept."""
        return location_patches(lambda start, length: self.store.get_range(key, start, length), size, fmt)

    def _record(self, ref: PhotoRef) -> PhotoRecord:
        try:
            record = PhotoRecord.load(self.store, ref.user, ref.photo_id)
        except (NotFound, InvalidName, ValueError):
            raise NoSuchImage() from None
        except StorageError as exc:
            raise storage_unavailable(exc) from None
        if record.secret != ref.secret or record.owner != ref.user:
            raise NoSuchImage()
        return record

    def _owner_allows(self, record: PhotoRecord) -> bool:
        try:
            return UserRecord.load(self.store, record.owner).allow_originals
        except (NotFound, InvalidName, ValueError):
            return True  # no user record (seeded data): the photo's own flag decides
        except StorageError as exc:
            raise storage_unavailable(exc) from None

    def _origin_get(self, key: str) -> bytes:
        t0 = time.perf_counter()
        try:
            return self.store.get(key)
        except NotFound:
            raise
        except StorageError as exc:
            raise storage_unavailable(exc) from None
        finally:
            self.cache.stats.observe("origin_seconds", time.perf_counter() - t0)

    def _origin_mtime(self, key: str) -> float:
        try:
            return self.store.stat(key).mtime
        except StorageError:
            return self.clock()

    def _render(self, ref: PhotoRef, size: str, fmt: str) -> None:
        if self.renderer is None:
            raise Problem(503, "render_unavailable", "no render pool is configured", [("Retry-After", "5")])
        from magickd.client import RenderError, RenderUnavailable

        t0 = time.perf_counter()
        budget = self.render_budget
        left = deadline.remaining()
        if left is not None:
            budget = min(budget, left - 1.0)  # a second kept for reading the rendition back
        try:
            self.renderer.render(ref, sizes=[size], formats=[fmt], budget=budget)
        except RenderError as exc:
            if exc.status == 404:
                raise NoSuchImage() from None
            raise Problem(422 if exc.status == 422 else 502, "render_failed", f"the photo cannot be rendered: {exc.message}") from None
        except RenderUnavailable as exc:
            raise Problem(503, "render_unavailable", str(exc), [("Retry-After", "5")]) from None
        finally:
            self.cache.stats.inc("renders")
            self.cache.stats.observe("render_seconds", time.perf_counter() - t0)

