"""ypws end to end: real gunicorn nodes, a real magickd, SeaweedFS storage, images decoded with Pillow.

Two ypws nodes share one store: ``ypws1`` with the default rules (hotlinks get a
403), ``ypws2`` with a small cache (400 KB) and the hotlink placeholder. Both run two workers; ``ypws1`` renders missing sizes through
``magickd1``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import re
import subprocess
import sys
import time
import tomllib

import pytest
import requests
import xxhash
from PIL import Image

from magickd.geometry import box_for
from storage import open_store
from storage.records import profile_version
from ypws.signing import sign_url

from .helpers import CORPUS, REPO, Services, check_connection_cap, cluster_tree, deep_update, seed_photo
from .ypws_support import access_lines, decode, metric, raw_http, seed_rendition, start_ypws, wait_for

pytestmark = pytest.mark.slow
PUBLIC = "http://photos.example"
SMALL_CACHE = 400_000


@pytest.fixture(scope="module")
def world(tmp_path_factory, seaweed):
    tmp = tmp_path_factory.mktemp("ypws")
    base = cluster_tree(tmp, backend="s3", seaweed=seaweed, ypws_nodes=2, overrides={
        "cluster": {"public_url": PUBLIC, "admin_token": "test-admin-token", "url_key": "test-url-key"},
        "ypws": {"workers": 2, "hotlink_allow": ["friend.example"], "signed_url_max_ttl": 3600,
                 "client_timeout": 2.0},
    })
    services = Services(tmp)
    try:
        cfg, path = start_ypws(services, tmp / "a", base, "ypws1")
        small = deep_update(base, {"ypws": {"cache_bytes": SMALL_CACHE, "hotlink_action": "placeholder"}})
        cfg2, path2 = start_ypws(services, tmp / "b", small, "ypws2")
        services.start_module("magickd1", "magickd", "serve", "--node", "magickd1", config_path=path,
                              health_url=f"{cfg.magickd.nodes[0].url}/healthz")
        store = open_store(cfg.storage, cfg.local_root)
        photos = {
            "land": seed_photo(store, "alice", CORPUS / "formats" / "DSCN0010.jpg", title="Landscape"),
            "portrait": seed_photo(store, "alice", CORPUS / "orientation" / "Portrait_6.jpg"),
            "small": seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg"),
            "private": seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg", private=True),
            "noorig": seed_photo(store, "bob", CORPUS / "formats" / "hopper.jpg", original_public=False),
        }
        yield type("World", (), dict(cfg=cfg, cfg2=cfg2, path=path, path2=path2, store=store, photos=photos,
                                     services=services, tmp=tmp, url=cfg.ypws.nodes[0].url,
                                     url2=cfg.ypws.nodes[1].url))
    finally:
        services.stop_all()


def url_of(world, key: str, size: str, ext: str = "jpg", node: int = 1, v: bool = True) -> str:
    rec = world.photos[key]
    base = world.url if node == 1 else world.url2
    query = f"?v={profile_version(world.cfg.size(size))}" if v and size != "original" else ""
    return f"{base}{rec.ref.url_path}/{size}.{ext}{query}"


def admin(world) -> dict:
    return {"Authorization": f"Bearer {world.cfg.cluster.admin_token}"}


def metrics(url: str) -> str:
    """/metrics takes the service credential (the world's admin token)."""
    return requests.get(f"{url}/metrics", headers={"Authorization": "Bearer test-admin-token"}, timeout=10).text


def metrics_when(url: str, name: str, predicate) -> str | None:
    """The exposition once ``predicate(value of name)`` holds (bounded wait), else None."""
    def check():
        text = metrics(url)
        return text if predicate(metric(text, name) or 0) else None

    return wait_for(check)


def settled(url: str, name: str) -> float:
    """A counter once every worker has flushed its deltas (two reads, past a flush interval apart, agree)."""
    value = metric(metrics(url), name) or 0
    for _ in range(20):
        time.sleep(0.7)
        again = metric(metrics(url), name) or 0
        if again == value:
            return value
        value = again
    return value


# -- serving -----------------------------------------------------------------------------------------
def test_every_size_is_served_with_the_right_dimensions(world):
    for key in ("land", "portrait"):
        rec = world.photos[key]
        for profile in world.cfg.sizes:
            r = requests.get(url_of(world, key, profile.name), timeout=60)
            assert r.status_code == 200, (profile.name, r.text)
            im = decode(r.content)
            box = box_for(profile, rec.width, rec.height)
            assert im.format == "JPEG" and im.size == (box.out_w, box.out_h), (key, profile.name)
            assert r.headers["X-Served-By"] == "ypws1"
            assert r.headers["Content-Length"] == str(len(r.content))
            assert r.headers["ETag"] == f'"{xxhash.xxh3_64_hexdigest(r.content)}"'
            again = requests.get(url_of(world, key, profile.name), timeout=30)
            assert again.headers["X-Cache"] == "HIT" and again.content == r.content


def test_variants_by_extension_and_by_accept(world):
    rec = world.photos["land"]
    want = box_for(world.cfg.size("small"), rec.width, rec.height)
    for ext, fmt in (("webp", "WEBP"), ("avif", "AVIF")):
        r = requests.get(url_of(world, "land", "small", ext), timeout=60)
        im = decode(r.content)
        assert r.status_code == 200 and im.format == fmt and im.size == (want.out_w, want.out_h)
        assert r.headers["Content-Type"] == f"image/{ext}" and "Vary" not in r.headers
    for accept, fmt in (("image/avif,image/webp,*/*;q=0.8", "AVIF"), ("image/webp,*/*", "WEBP"), ("*/*", "JPEG"), (None, "JPEG")):
        r = requests.get(url_of(world, "land", "small"), headers={"Accept": accept} if accept else {}, timeout=60)
        assert r.status_code == 200 and decode(r.content).format == fmt, accept
        assert r.headers["Vary"] == "Accept"


def test_cache_control_follows_the_url_version(world):
    versioned = requests.get(url_of(world, "land", "thumb"), timeout=60)
    assert versioned.headers["Cache-Control"] == f"public, max-age={world.cfg.ypws.max_age}, immutable"
    for url in (url_of(world, "land", "thumb", v=False), url_of(world, "land", "thumb", v=False) + "?v=00000000"):
        r = requests.get(url, timeout=30)
        assert r.headers["Cache-Control"] == f"public, max-age={world.cfg.ypws.unversioned_max_age}"
        assert r.content == versioned.content  # always the current version
    r = requests.get(url_of(world, "land", "original"), timeout=30)
    assert r.headers["Cache-Control"] == f"public, max-age={world.cfg.ypws.original_max_age}"


def assert_original_without_location(world, key: str, served: bytes) -> None:
    """The stored original (which has GPS) served with its GPS IFD emptied and nothing else changed."""
    stored = world.store.get(world.photos[key].ref.original_key)
    assert hashlib.sha256(stored).hexdigest() == world.photos[key].sha256  # storage keeps it all
    with Image.open(io.BytesIO(stored)) as a, Image.open(io.BytesIO(served)) as b:
        assert dict(a.getexif().get_ifd(0x8825)) and dict(b.getexif().get_ifd(0x8825)) == {}
        assert b.getexif()[0x010F] == a.getexif()[0x010F]  # the camera stays
        assert a.convert("RGB").tobytes() == b.convert("RGB").tobytes()
    assert len(served) == len(stored) and served != stored


@pytest.mark.parametrize("node", [1, 2])  # node 2's cache is too small for this original: streamed from S3
def test_originals_are_served_without_gps(world, node):
    for _ in range(2):  # miss, then hit (node 1) or a remembered scrub (node 2)
        r = requests.get(url_of(world, "land", "original", node=node), timeout=30)
        assert r.status_code == 200
        assert_original_without_location(world, "land", r.content)


def test_originals_only_where_the_owner_allows(world):
    r = requests.get(url_of(world, "land", "original"), timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert requests.get(url_of(world, "land", "original", "png"), timeout=30).status_code == 404
    denied = requests.get(url_of(world, "noorig", "original"), timeout=30)
    assert denied.status_code == 404 and denied.json()["error"] == "not_found"
    assert requests.get(url_of(world, "noorig", "small"), timeout=60).status_code == 200


def test_wrong_user_id_secret_or_size_is_the_same_404(world):
    rec = world.photos["land"]
    good = f"{world.url}/photos/alice/{rec.id}_{rec.secret}/small.jpg"
    wrong = [good.replace("/alice/", "/bob/"), good.replace(rec.id, str(int(rec.id) + 1)),
             good.replace(rec.secret, "0" * 10), good.replace("/small.", "/huge."), good.replace("/small.", "/Small.")]
    bodies = set()
    for url in wrong:
        r = requests.get(url, timeout=30)
        assert r.status_code == 404, url
        bodies.add(r.content)
    assert len(bodies) == 1


def test_head_matches_get(world):
    url = url_of(world, "land", "medium")
    g = requests.get(url, timeout=60)
    for _ in range(2):  # a miss is served by falcon, a hit by the event loop: both the same
        h = requests.head(url, timeout=30)
        assert h.status_code == 200 and h.content == b""
        for name in ("Content-Length", "ETag", "Content-Type", "Last-Modified", "Cache-Control"):
            assert h.headers[name] == g.headers[name]


def test_conditional_requests_get_304(world):
    url = url_of(world, "land", "small")
    r = requests.get(url, timeout=60)
    etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
    n = requests.get(url, headers={"If-None-Match": etag}, timeout=30)
    assert n.status_code == 304 and n.content == b"" and n.headers["ETag"] == etag and n.headers["Vary"] == "Accept"
    assert requests.get(url, headers={"If-None-Match": f'"x", W/{etag}'}, timeout=30).status_code == 304
    assert requests.get(url, headers={"If-Modified-Since": modified}, timeout=30).status_code == 304
    assert requests.get(url, headers={"If-None-Match": '"other"'}, timeout=30).status_code == 200
    assert requests.get(url, headers={"If-Modified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"}, timeout=30).status_code == 200
    webp = requests.get(url, headers={"If-None-Match": etag, "Accept": "image/webp"}, timeout=30)
    assert webp.status_code == 200 and webp.headers["ETag"] != etag  # another representation


@pytest.mark.parametrize("node", [1, 2])  # node 2's cache is too small for this original: streamed from S3
def test_range_requests_on_originals(world, node):
    url = url_of(world, "land", "original", node=node)
    full = requests.get(url, timeout=30).content
    assert_original_without_location(world, "land", full)  # ranges are cut from the scrubbed bytes
    size = len(full)
    for header, start, end in (("bytes=0-99", 0, 99), ("bytes=1000-", 1000, size - 1), ("bytes=-500", size - 500, size - 1)):
        r = requests.get(url, headers={"Range": header}, timeout=30)
        assert r.status_code == 206 and r.content == full[start:end + 1], header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
    for bad in ("bytes=abc", "bytes=9-3", f"bytes={size}-"):
        r = requests.get(url, headers={"Range": bad}, timeout=30)
        assert r.status_code == 416 and r.json()["error"] == "bad_range" and r.headers["Content-Range"] == f"bytes */{size}"
    stale = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'}, timeout=30)
    assert stale.status_code == 200 and stale.content == full


# -- rules --------------------------------------------------------------------------------------------
def test_hotlink_protection(world):
    url = url_of(world, "land", "thumb")
    for referer in (None, f"{PUBLIC}/u/alice", "https://friend.example/post/1", f"{world.url}/u/alice"):
        r = requests.get(url, headers={"Referer": referer} if referer else {}, timeout=60)
        assert r.status_code == 200 and decode(r.content).format == "JPEG", referer
    for _ in range(2):  # on a miss and on a hit
        r = requests.get(url, headers={"Referer": "http://evil.example/gallery"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"] == "hotlink_denied"
        assert r.headers["Cache-Control"] == "no-store"
    placeholder = requests.get(url_of(world, "land", "thumb", node=2), headers={"Referer": "http://evil.example/"}, timeout=30)
    assert placeholder.status_code == 200 and placeholder.headers["X-Hotlink"] == "placeholder"
    assert decode(placeholder.content).size == (160, 48) and placeholder.headers["Cache-Control"] == "no-store"


def test_private_photos_only_through_signed_urls(world):
    rec = world.photos["private"]
    path = f"{rec.ref.url_path}/small.jpg"
    assert requests.get(world.url + path, timeout=30).status_code == 404
    signed = sign_url(world.cfg, path, ttl=600)
    for _ in range(2):  # miss, then hit
        r = requests.get(world.url + signed, timeout=60)
        assert r.status_code == 200 and decode(r.content).format == "JPEG"
        assert r.headers["Cache-Control"].startswith("private, max-age=")
    assert requests.get(world.url + path, timeout=30).status_code == 404  # cached, still private
    tampered = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert requests.get(world.url + tampered, timeout=30).json()["error"] == "bad_signature"
    expired = sign_url(world.cfg, path, ttl=60, now=lambda: time.time() - 3600)
    r = requests.get(world.url + expired, timeout=30)
    assert r.status_code == 403 and r.json()["error"] == "url_expired"
    other = sign_url(world.cfg, f"{rec.ref.url_path}/thumb.jpg", ttl=600).split("?")[1]
    assert requests.get(f"{world.url}{path}?{other}", timeout=30).status_code == 403  # signature of another path
    out = subprocess.run([sys.executable, "-m", "ypws", "--config", str(world.path), "sign", path, "--ttl", "120"],
                         capture_output=True, text=True, timeout=60, cwd=REPO, check=True).stdout.strip()
    assert out.startswith(PUBLIC + path + "?exp=")
    assert requests.get(world.url + out[len(PUBLIC):], timeout=30).status_code == 200


# -- the cache ------------------------------------------------------------------------------------------
def test_purge(world):
    jpg, webp = url_of(world, "small", "large"), url_of(world, "small", "large", "webp")
    for url in (jpg, webp):
        requests.get(url, timeout=60)
        assert requests.get(url, timeout=30).headers["X-Cache"] == "HIT"
    path = world.photos["small"].ref.url_path
    r = requests.request("PURGE", f"{world.url}{path}/large.jpg", timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = requests.request("PURGE", f"{world.url}{path}/large.webp", headers=admin(world), timeout=30)
    assert r.status_code == 200 and r.json()["purged"] == 1
    assert requests.get(webp, timeout=60).headers["X-Cache"] == "MISS"
    assert requests.get(jpg, timeout=30).headers["X-Cache"] == "HIT"
    r = requests.request("PURGE", f"{world.url}{path}/large", headers=admin(world), timeout=30)
    assert r.json()["purged"] == 2  # every format of the size
    assert requests.get(jpg, timeout=60).headers["X-Cache"] == "MISS"
    requests.get(url_of(world, "small", "original"), timeout=30)
    r = requests.request("PURGE", f"{world.url}{path}/", headers=admin(world), timeout=30)
    assert r.status_code == 200 and r.json()["purged"] >= 2  # the whole photo, original included
    assert requests.get(url_of(world, "small", "original"), timeout=30).headers["X-Cache"] == "MISS"
    bad = requests.request("PURGE", f"{world.url}/photos/alice/x/large.jpg", headers=admin(world), timeout=30)
    assert bad.status_code == 404


def test_on_demand_render_of_a_deleted_rendition(world):
    rec = world.photos["portrait"]
    profile = world.cfg.size("medium")
    key = rec.ref.rendition_key("medium", profile_version(profile), "jpeg")
    url = url_of(world, "portrait", "medium")
    assert requests.get(url, timeout=60).status_code == 200
    world.store.delete(key)
    requests.request("PURGE", url.split("?")[0], headers=admin(world), timeout=30)
    before = settled(world.url, "ypws_renders_total")
    r = requests.get(url, timeout=60)
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    box = box_for(profile, rec.width, rec.height)
    assert decode(r.content).size == (box.out_w, box.out_h)
    assert world.store.exists(key)  # rendered, stored, then cached
    assert settled(world.url, "ypws_renders_total") == before + 1


def test_concurrent_misses_cause_one_fill(world):
    rec = seed_photo(world.store, "carol", CORPUS / "formats" / "DSCN0010.jpg")
    url = f"{world.url}{rec.ref.url_path}/large.jpg"
    before = settled(world.url, "ypws_renders_total")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.get(url, timeout=90), range(8)))
    assert all(a.status_code == 200 for a in answers)
    assert sorted(a.headers["X-Cache"] for a in answers) == ["HIT"] * 7 + ["MISS"]
    assert len({a.content for a in answers}) == 1
    assert settled(world.url, "ypws_renders_total") == before + 1


def test_cache_is_shared_by_the_workers(world):
    rec = seed_photo(world.store, "dave", CORPUS / "formats" / "hopper.jpg")
    seed_rendition(world.store, world.cfg, rec, "small")
    url = f"{world.url}{rec.ref.url_path}/small.jpg"
    assert requests.get(url, timeout=30).headers["X-Cache"] == "MISS"
    for _ in range(40):  # each on a new connection, so the kernel spreads them over the workers
        assert requests.get(url, headers={"Connection": "close"}, timeout=30).headers["X-Cache"] == "HIT"
    path = url[len(world.url):]

    def served():
        lines = [l for l in access_lines(world.services.log("ypws1")) if l["path"] == path]
        return lines if len(lines) >= 41 else None

    lines = wait_for(served)
    assert lines, "access log lines did not appear"
    filler = {l["pid"] for l in lines if l["cache"] == "MISS"}
    hitters = {l["pid"] for l in lines if l["cache"] == "HIT"}
    assert len(filler) == 1 and hitters - filler, "no hit was served by a worker other than the one that filled"
    line = lines[-1]
    assert {"t", "node", "pid", "method", "path", "status", "bytes", "cache", "ms", "referer", "ua", "peer"} <= set(line)
    assert line["node"] == "ypws1" and line["status"] == 200 and line["bytes"] > 0


def test_cache_stays_bounded_under_a_flood_of_distinct_urls(world):
    urls = []
    for i in range(10):
        rec = seed_photo(world.store, "flood", CORPUS / "formats" / "hopper.jpg")
        for size in ("square", "thumb", "small"):
            for fmt, ext in (("jpeg", "jpg"), ("webp", "webp")):
                seed_rendition(world.store, world.cfg, rec, size, fmt)
                urls.append(f"{world.url2}{rec.ref.url_path}/{size}.{ext}")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda u: requests.get(u, timeout=60).status_code, urls))
    assert statuses == [200] * len(urls)
    text = metrics_when(world.url2, "ypws_evictions_total", lambda v: v > 0)
    assert text, "no eviction was counted"
    held = metric(text, "ypws_cache_bytes")
    assert 0 < held <= SMALL_CACHE and metric(text, "ypws_cache_max_bytes") == SMALL_CACHE
    assert metric(text, "ypws_cache_entries") < len(urls)
    entries = world.tmp / "b" / "var" / "cache" / "ypws2" / "entries"
    assert sum(f.stat().st_size for f in entries.rglob("*") if f.is_file()) <= SMALL_CACHE


def test_cache_is_warm_after_a_restart(world):
    url = url_of(world, "small", "thumb", node=2)
    requests.get(url, timeout=60)
    assert requests.get(url, timeout=30).headers["X-Cache"] == "HIT"
    assert world.services.stop("ypws2") == 0
    start_ypws(world.services, world.tmp / "b", tomllib.loads(world.path2.read_text()), "ypws2")
    r = requests.get(url, timeout=30)
    assert r.status_code == 200 and r.headers["X-Cache"] == "HIT"


# -- operations and bad input ---------------------------------------------------------------------------
def test_health_and_metrics(world):
    assert requests.get(f"{world.url}/healthz", timeout=10).json() == {"status": "ok", "node": "ypws1"}
    requests.get(url_of(world, "land", "thumb"), timeout=60)
    text = metrics_when(world.url, "ypws_hits_total", lambda v: v > 0)
    for name in ("ypws_hits_total", "ypws_misses_total", "ypws_bytes_served_total", "ypws_cache_bytes",
                 "ypws_cache_entries", "ypws_origin_seconds_count", "ypws_render_seconds_count"):
        assert (metric(text, name) or 0) > 0, name


BAD_PATHS = [
    ("/photos/alice/..%2f..%2fetc/passwd", 400), ("/photos/%2e%2e/x/y.jpg", 400), ("/photos/alice/1_0123456789/%ff.jpg", 400),
    ("/photos/" + "a" * 300 + "/1_0123456789/small.jpg", 404), ("/photos/" + "a" * 3000, 400),
    ("/photos/alice/1_0123456789/small.jpg/extra", 404), ("/photos/alice", 404), ("/photos//x//y.jpg", 404),
    ("/photos/alice/1_0123456789/small.%00jpg", 400), ("/u/" + "x" * 100, 404), ("/p/alice/notanumber", 404),
    ("/photos/alice/1_0123456789/small.jpg?v=%ff&exp=x&sig=y", 403),
]


@pytest.mark.parametrize("path,status", BAD_PATHS)
def test_bad_input_gets_a_clear_4xx_json(world, path, status):
    r = requests.get(world.url + path, timeout=30)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"}


def test_malformed_requests_never_500(world):
    port = world.cfg.ypws.nodes[0].port
    for raw in (b"GET /photos/\xff\xfe/x/y.jpg HTTP/1.1\r\nHost: x\r\n\r\n", b"GARBAGE\r\n\r\n",
                b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: " + b"b" * 70000 + b"\r\n\r\n"):
        answer = raw_http(port, raw)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500 and b'"error"' in answer, answer[:200]
    # the node still serves afterwards
    assert requests.get(url_of(world, "land", "thumb"), timeout=30).status_code == 200


def test_connections_past_the_cap_get_503_and_the_node_keeps_serving(tmp_path, services):
    tree = cluster_tree(tmp_path, ypws_nodes=1, overrides={"ypws": {"workers": 1, "max_connections": 3}})
    cfg, _ = start_ypws(services, tmp_path, tree)
    check_connection_cap(cfg.ypws.nodes[0].port, 3)


def test_a_slow_loris_client_gets_408_instead_of_holding_the_connection(world):
    """Header lines trickled in every 0.5 s never look idle; the request deadline still ends it."""
    import socket

    host, port = world.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = b""
        while time.monotonic() - started < 8 and not answer:
            try:
                sock.sendall(b"X-Trickle: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.5)
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                pass
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer
    assert elapsed < 6  # the 2 s deadline, checked once a second


def test_the_gallery_pages_newest_first_and_skips_private_photos(world):
    """231 photos uploaded over two years: pages of 100, newest first, each 'Older photos'
    link starting below the last photo shown; private ones never appear, and nothing is
    shown twice or skipped (the listing walks back in growing time windows)."""
    import dataclasses

    from storage.ids import IdGenerator

    now = time.time()
    ids = [IdGenerator(1, 0, world.cfg.ids.epoch_ms, clock=lambda i=i: now - (230 - i) * 3 * 86400).next_id()
           for i in range(231)]
    template = seed_photo(world.store, "pager", CORPUS / "formats" / "hopper.jpg", photo_id=ids[0])
    private = set(ids[5::40])
    for pid in ids[1:]:
        dataclasses.replace(template, id=pid, title=f"p{pid}", private=pid in private).save(world.store)
    expected = [pid for pid in reversed(ids) if pid not in private]
    shown, url, pages_seen = [], f"{world.url}/u/pager", 0
    while url and pages_seen < 5:
        r = requests.get(url, timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        page = re.findall(r'data-photo="(\d+)"', r.text)
        assert len(page) <= 100 and (len(page) == 100 or 'id="older"' not in r.text)
        shown += page
        pages_seen += 1
        older = re.search(r'id="older" href="([^"]+)"', r.text)
        url = f"{world.url}{older.group(1)}" if older else None
    assert pages_seen == 3 and shown == expected
    assert requests.get(f"{world.url}/u/pager?before=notanid", timeout=10).status_code == 400
    last = requests.get(f"{world.url}/u/pager?before={ids[0]}", timeout=10)
    assert last.status_code == 200 and "No older photos." in last.text
