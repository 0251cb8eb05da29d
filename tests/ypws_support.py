"""Helpers for the ypws tests: nodes on free ports, seeded renditions, decoding, log lines."""

from __future__ import annotations

import io
import json
import random
import socket
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
from PIL import Image

from cluster.config import Config
from cluster.profiles import SizeProfile, profile_version
from storage.records import PhotoRecord

from .helpers import Services, write_config


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def seed_rendition(store, cfg: Config, rec: PhotoRecord, size: str, fmt: str = "jpeg", source: Path | None = None) -> bytes:
    """Put a rendition straight into the store (made by Pillow, no magickd): for cache-only tests."""
    profile: SizeProfile = cfg.size(size)
    if source is not None:
        im = Image.open(source).convert("RGB")
        im.thumbnail((profile.width, profile.height))
    else:  # noise: incompressible, so sizes are realistic and no two renditions alike
        noise = random.Random(f"{rec.id}/{size}").randbytes(profile.width * profile.height * 3)
        im = Image.frombytes("RGB", (profile.width, profile.height), noise)
    out = io.BytesIO()
    im.save(out, {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "avif": "AVIF"}[fmt], quality=90)
    data = out.getvalue()
    store.put(rec.ref.rendition_key(size, profile_version(profile), fmt), data)
    return data


def sign_for(cfg: Config, path: str, ttl: int | None = None, now=time.time) -> str:
    """``ypws.signing.sign_url`` with the key and TTL cap of ``cfg``, as ``python -m ypws sign`` signs."""
    from ypws.signing import sign_url

    return sign_url(cfg.cluster.url_key, cfg.ypws.signed_url_max_ttl, path, ttl, now)


def node_cache(cfg: Config, node: str = "ypws1"):
    """The node's disk cache where ``python -m ypws serve`` keeps it (``ypws.app.cache_dir``)."""
    from ypws.app import cache_dir, open_cache

    return open_cache(cfg.ypws, cache_dir(cfg.ypws, cfg.data_dir, node), node)


def wait_for(predicate, timeout: float = 10.0, step: float = 0.1):
    """Poll ``predicate`` until it returns something truthy (bounded in time); return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def access_lines(log_text: str) -> list[dict]:
    """The structured access-log records in a node's log (JSON objects, one per line)."""
    out = []
    for line in log_text.splitlines():
        if line.startswith('{"t":'):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled-or-node-labelled sample in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def counted(cache, name: str) -> float:
    """An in-process cache's counter as a scrape shows it (``ypws_{name}_total``), after a flush."""
    from cluster.web import metrics_body

    cache.flush()
    return metric(metrics_body(registry=cache.stats.registry)[0].decode(), f"ypws_{name}_total") or 0.0


def raw_http(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes (for requests no client library would send) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def start_ypws(services: Services, tmp: Path, tree: dict, node: str = "ypws1", name: str | None = None,
               wait: bool = True):
    """Write ``tree`` as a config and start one ypws node of it; returns (cfg, config path).
    ``wait=False``: return at once (the caller waits on ``/readyz``, e.g. for several nodes together)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg, path = write_config(tmp, tree)
    url = cfg.node("ypws", node).url
    services.start_module(name or node, "ypws", "serve", "--node", node, config_path=path,
                          health_url=f"{url}/readyz" if wait else None)
    return cfg, path


# -- in-process nodes: falcon's TestClient over create_app(...) ---------------------------------------
class InProcessRenderer:
    """The real magickd ``RenderService``, called in-process the way ypws calls ``RenderClient``:
    the same arguments, and its failures turned into the client's errors as the wire would
    (429/5xx: RenderUnavailable; other 4xx: RenderError). Counts the calls that rendered."""

    def __init__(self, service):
        self.service = service
        self.calls = 0

    def render(self, ref, sizes=None, formats=None, timeout=None, force=False, budget=None):
        from magickd.client import RenderError, RenderUnavailable
        from magickd.errors import RenderFailure

        self.calls += 1
        try:
            return self.service.render(ref.user, ref.photo_id, ref.secret, sizes=sizes, formats=formats, force=force)
        except RenderFailure as exc:
            if exc.status == 429 or exc.status >= 500:
                raise RenderUnavailable(f"in-process magickd: {exc.status} {exc.code}") from None
            raise RenderError(exc.status, exc.code, exc.message) from None


class AppNode:
    """One ypws node in-process: the app behind falcon's TestClient, over a real LocalStore,
    a real DiskCache and (``render=True``) the real magickd render service."""

    def __init__(self, cfg: Config, store, tmp: Path, node: str = "ypws1", *, cache_bytes: int | None = None,
                 render: bool = True):
        from falcon import testing

        from ypws.app import create_app

        from .magickd_support import render_service
        from ypws.diskcache import DiskCache

        self.cfg, self.store, self.node = cfg, store, node
        self.cache = DiskCache(tmp / "cache" / node, cache_bytes or cfg.ypws.cache_bytes, cfg.ypws.cache_policy)
        self.renderer = InProcessRenderer(render_service(cfg, store)) if render else None
        self.client = testing.TestClient(create_app(cfg, node, store, self.cache, renderer=self.renderer))

    def get(self, path: str, headers: dict | None = None, method: str = "GET"):
        """``path`` may carry its query (``/photos/...?v=...``)."""
        path, _, query = path.partition("?")
        return self.client.simulate_request(method, path, query_string=query or None, headers=headers or {})


def app_config(tmp: Path, **overrides):
    """A cluster config for in-process nodes (data under ``tmp``), with fixed secrets."""
    from cluster.config import from_dict

    from .helpers import cluster_tree, deep_update

    secrets = {"cluster": {"admin_token": "test-admin-token", "url_key": "test-url-key"}}
    return from_dict(cluster_tree(tmp, overrides=deep_update(secrets, overrides)))


def seed_photos(store) -> dict:
    """The photos the ypws serving tests share: a landscape camera photo (with GPS), a portrait
    one (EXIF orientation 6), a small one, a private one, and one whose original is not public."""
    from .helpers import CORPUS, seed_photo

    return {
        "land": seed_photo(store, "alice", CORPUS / "formats" / "DSCN0010.jpg", title="Landscape"),
        "portrait": seed_photo(store, "alice", CORPUS / "orientation" / "Portrait_6.jpg"),
        "small": seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg"),
        "private": seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg", private=True),
        "noorig": seed_photo(store, "bob", CORPUS / "formats" / "hopper.jpg", original_public=False),
    }


def image_path(cfg: Config, rec: PhotoRecord, size: str, ext: str = "jpg", v: bool = True) -> str:
    """The path (and ``?v=`` query, for a rendition) of one image of ``rec``."""
    query = f"?v={profile_version(cfg.size(size))}" if v and size != "original" else ""
    return f"{rec.ref.url_path}/{size}.{ext}{query}"


def assert_original_without_location(store, rec: PhotoRecord, served: bytes) -> None:
    """The stored original (which has GPS) served with its GPS IFD emptied and nothing else changed."""
    import hashlib

    stored = store.get(rec.ref.original_key)
    assert hashlib.sha256(stored).hexdigest() == rec.sha256  # storage keeps it all
    with Image.open(io.BytesIO(stored)) as a, Image.open(io.BytesIO(served)) as b:
        assert dict(a.getexif().get_ifd(0x8825)) and dict(b.getexif().get_ifd(0x8825)) == {}
        assert b.getexif()[0x010F] == a.getexif()[0x010F]  # the camera stays
        assert a.convert("RGB").tobytes() == b.convert("RGB").tobytes()
    assert len(served) == len(stored) and served != stored


class AppWorld:
    """A shared store with ``seed_photos`` in it, and in-process nodes over it."""

    def __init__(self, tmp: Path, **overrides):
        from storage.local import LocalStore

        self.tmp = tmp
        self.cfg = app_config(tmp, **overrides)
        self.store = LocalStore(self.cfg.local_root)
        self.photos = seed_photos(self.store)
        self.node = AppNode(self.cfg, self.store, tmp)

    def path(self, key: str, size: str, ext: str = "jpg", v: bool = True) -> str:
        return image_path(self.cfg, self.photos[key], size, ext, v)


class Site(NamedTuple):
    """ypfs's and ypws's real apps in-process over one local store, as on one box."""

    cfg: Config
    store: Any                  # LocalStore
    tokens: dict[str, str]      # user name -> upload token
    up: Any                     # falcon TestClient over ypfs's app
    web: Any                    # falcon TestClient over ypws's app
    next_id: Callable[[], str]  # photo ids in time order, for uploads and seeded photos alike


def site_fixture(*users: str):
    """A ``site`` fixture (one per test): a fresh ``Site`` whose ``users`` exist with upload tokens.
    Nothing is rendered after upload (there is no magickd); the pages need no renditions."""

    @pytest.fixture
    def site(tmp_path) -> Site:
        from falcon import testing

        from cluster.config import from_dict, load_dict
        from storage.local import LocalStore
        from storage.records import UserRecord
        from ypfs.app import create_app as ypfs_app
        from ypws.app import create_app as ypws_app
        from ypws.diskcache import DiskCache

        tree = load_dict()
        tree["cluster"].update(data_dir=str(tmp_path / "var"), admin_token="admin", url_key="key")
        tree["ypfs"]["render_after_upload"] = False
        cfg = from_dict(tree)
        store = LocalStore(tmp_path / "store")
        tokens = {}
        for name in users:
            rec = UserRecord(name)
            tokens[name] = rec.new_token()
            rec.save(store)
        # ids in time order, as the id generator makes them (a far-future clock is not needed: the
        # listing starts at "now", and these ids sit just after the epoch)
        ids = iter(range(10**18 + 1, 10**18 + 10**6))

        def next_id() -> str:
            return str(next(ids))

        up = testing.TestClient(ypfs_app(cfg, store, "ypfs1", next_id=next_id))
        web = testing.TestClient(ypws_app(cfg, "ypws1", store, DiskCache(tmp_path / "cache", 16 << 20)))
        return Site(cfg, store, tokens, up, web, next_id)

    return site
