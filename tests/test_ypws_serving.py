"""ypws as a real process: gunicorn with the custom worker (ypws/worker.py), a real magickd,
SeaweedFS storage, images decoded with Pillow: what only real processes show.

The worker's event-loop hit path answering by the same rules as the app, its own HTTP
handling (percent-escapes, malformed requests, the connection cap, slow clients), the cache
shared by a node's workers (one fill for concurrent misses), warm after a restart, and the
metrics merged over the workers. The app's behaviour itself (sizes, variants, conditional
requests, ranges, signed URLs, hotlink rules, purge, pages) is tested in-process, one file per
feature: test_ypws_sizes.py, test_ypws_variants.py, test_ypws_conditional.py,
test_ypws_signed_urls.py, test_ypws_hotlink.py, test_ypws_purge.py, test_ypws_urls.py,
test_ypws_gallery.py, test_disk_cache.py.

Two ypws nodes share one store; both run two workers; ``ypws1`` renders missing sizes
through ``magickd1``, ``ypws2`` has a small cache (400 KB).
"""

from __future__ import annotations

import concurrent.futures
import time
import tomllib

import pytest
import requests

from cluster.profiles import box_for, profile_version
from storage import open_store

from .helpers import CORPUS, Services, check_connection_cap, cluster_tree, deep_update, seed_photo
from .ypws_support import (access_lines, assert_original_without_location, decode, metric, raw_http, seed_rendition, sign_for,
                           start_ypws, wait_for)

pytestmark = pytest.mark.slow
PUBLIC = "http://photos.example"
SMALL_CACHE = 400_000


@pytest.fixture(scope="module")
def world(tmp_path_factory, seaweed):
    tmp = tmp_path_factory.mktemp("ypws")
    base = cluster_tree(tmp, backend="s3", seaweed=seaweed, ypws_nodes=2, overrides={
        "cluster": {"public_url": PUBLIC, "admin_token": "test-admin-token", "url_key": "test-url-key"},
        "ypws": {"workers": 2, "client_timeout": 2.0},
    })
    services = Services(tmp)
    try:
        # the three start together: each boot overlaps the others'
        cfg, path = start_ypws(services, tmp / "a", base, "ypws1", wait=False)
        small = deep_update(base, {"ypws": {"cache_bytes": SMALL_CACHE}})
        cfg2, path2 = start_ypws(services, tmp / "b", small, "ypws2", wait=False)
        services.start_module("magickd1", "magickd", "serve", "--node", "magickd1", config_path=path)
        for name, url in (("ypws1", f"{cfg.ypws.nodes[0].url}/readyz"), ("ypws2", f"{cfg.ypws.nodes[1].url}/readyz"),
                          ("magickd1", f"{cfg.magickd.nodes[0].url}/healthz")):
            services.wait_healthy(name, url)
        store = open_store(cfg.storage, cfg.local_root)
        photos = {
            "land": seed_photo(store, "alice", CORPUS / "formats" / "DSCN0010.jpg", title="Landscape"),
            "small": seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg"),
            "private": seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg", private=True),
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


# -- the worker's event-loop hit path ------------------------------------------------------------------
def test_hits_on_the_event_loop_keep_the_rules(world):
    """Hits are answered by the worker itself, misses by the falcon app: both by one set of rules
    (conditional requests, ranges, hotlinks, signed URLs), all shown here on hits."""
    url = url_of(world, "land", "small")
    first = requests.get(url, timeout=60)
    etag = first.headers["ETag"]
    n = requests.get(url, headers={"If-None-Match": etag}, timeout=30)
    assert n.headers["X-Cache"] == "HIT"
    assert n.status_code == 304 and n.content == b"" and n.headers["ETag"] == etag and n.headers["Vary"] == "Accept"
    assert requests.get(url, headers={"If-Modified-Since": first.headers["Last-Modified"]}, timeout=30).status_code == 304
    denied = requests.get(url, headers={"Referer": "http://evil.example/gallery"}, timeout=30)
    assert denied.status_code == 403 and denied.json()["error"] == "hotlink_denied"
    assert denied.headers["Cache-Control"] == "no-store"
    original = url_of(world, "land", "original")
    full = requests.get(original, timeout=30).content
    part = requests.get(original, headers={"Range": "bytes=-500"}, timeout=30)
    assert part.headers["X-Cache"] == "HIT"
    assert part.status_code == 206 and part.content == full[-500:]
    assert part.headers["Content-Range"] == f"bytes {len(full) - 500}-{len(full) - 1}/{len(full)}"
    bad = requests.get(original, headers={"Range": "bytes=9-3"}, timeout=30)
    assert bad.status_code == 416 and bad.json()["error"] == "bad_range"
    rec = world.photos["private"]
    path = f"{rec.ref.url_path}/small.jpg"
    signed = sign_for(world.cfg, path, ttl=600)
    for cache in ("MISS", "HIT"):
        r = requests.get(world.url + signed, timeout=60)
        assert r.status_code == 200 and r.headers["X-Cache"] == cache and decode(r.content).format == "JPEG"
        assert r.headers["Cache-Control"].startswith("private, max-age=")
    assert requests.get(world.url + path, timeout=30).status_code == 404  # cached, still private
    tampered = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert requests.get(world.url + tampered, timeout=30).json()["error"] == "bad_signature"


@pytest.mark.parametrize("node", [1, 2])
def test_originals_from_s3_are_served_without_gps_whole_and_in_ranges(world, node):
    """The original read from SeaweedFS (ypws2: into a small cache), scrubbed of GPS, on a miss and
    after; a range cut from the scrubbed bytes. Every rule of originals and ranges, on LocalStore
    in-process: test_ypws_sizes.py, test_ypws_conditional.py."""
    rec = world.photos["land"]
    url = url_of(world, "land", "original", node=node)
    for _ in range(2):
        r = requests.get(url, timeout=30)
        assert r.status_code == 200
        assert_original_without_location(world.store, rec, r.content)
    full = r.content
    part = requests.get(url, headers={"Range": "bytes=1000-1099"}, timeout=30)
    assert part.status_code == 206 and part.content == full[1000:1100]
    assert part.headers["Content-Range"] == f"bytes 1000-1099/{len(full)}"


def test_head_matches_get(world):
    url = url_of(world, "land", "medium")
    g = requests.get(url, timeout=60)
    for _ in range(2):  # a miss is served by falcon, a hit by the event loop: both the same
        h = requests.head(url, timeout=30)
        assert h.status_code == 200 and h.content == b""
        for name in ("Content-Length", "ETag", "Content-Type", "Last-Modified", "Cache-Control"):
            assert h.headers[name] == g.headers[name]


# -- the cache shared by the workers -------------------------------------------------------------------
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
    for _ in range(2):  # a miss (rendered by magickd), then a hit
        requests.get(url_of(world, "land", "thumb"), timeout=60)
    text = metrics_when(world.url, "ypws_hits_total", lambda v: v > 0)
    for name in ("ypws_hits_total", "ypws_misses_total", "ypws_bytes_served_total", "ypws_cache_bytes",
                 "ypws_cache_entries", "ypws_origin_seconds_count", "ypws_render_seconds_count"):
        assert (metric(text, name) or 0) > 0, name

BAD_ESCAPES = [("/photos/alice/..%2f..%2fetc/passwd", 400), ("/photos/%2e%2e/x/y.jpg", 400),
               ("/photos/alice/1_0123456789/%ff.jpg", 400), ("/photos/alice/1_0123456789/small.%00jpg", 400),
               ("/photos/alice/1_0123456789/small.jpg?v=%ff&exp=x&sig=y", 403)]


@pytest.mark.parametrize("path,status", BAD_ESCAPES)
def test_bad_percent_escapes_through_the_worker(world, path, status):
    """The worker decodes the request target: what it makes of escapes is refused clearly.
    (Every other bad path, in-process: test_ypws_urls.py.)"""
    r = requests.get(world.url + path, timeout=30)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "message"}


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
