"""Cache disk faults on a ypws node: torn entries are never served as good, and a full or failing
cache disk never fails a request that storage can answer (issue 14, items 1 and 2).

Real gunicorn nodes (the uvloop worker) on the local store; the cache disk faults are real: entry
files torn on disk as a crash would leave them, and a small tmpfs (root) filled up by bytes and by
inodes. Every 200 is decoded with Pillow and checked against its ETag and the bytes storage holds.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import xxhash

from media.geoscrub import strip_location
from storage import open_store
from ypws.app import cache_dir
from ypws.diskcache import INLINE_MAX, DiskCache

from .helpers import CORPUS, Services, cluster_tree, seed_photo
from .ypws_support import counted, decode, metric, seed_rendition, start_ypws, wait_for

pytestmark = pytest.mark.slow
BIG = CORPUS / "formats" / "iphone_hdr_NO.jpg"  # ~2 MB: streamed from the cache file, not inline
RETRY = 0.5  # ypws.cache_retry_seconds in these tests


# -- helpers ------------------------------------------------------------------------------------
def fetch(url: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body), or None when the answer was cut short of its Content-Length."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        resp = conn.getresponse()
        try:
            body = resp.read()
        except (http.client.IncompleteRead, ConnectionError):
            return None
        return resp.status, resp.headers, body  # case-insensitive
    finally:
        conn.close()


def assert_true_image(answer, truth: bytes) -> None:
    """A 200 carries exactly the true bytes: they decode and match their ETag."""
    status, headers, body = answer
    assert status == 200, (status, body[:300])
    assert body == truth, "a 200 with wrong bytes"
    assert headers["ETag"] == f'"{xxhash.xxh3_64_hexdigest(body)}"'
    decode(body)


def entry_path(cfg, node: str, key: str) -> Path:
    h = xxhash.xxh3_128_hexdigest(key.encode())
    return cache_dir(cfg.ypws, cfg.data_dir, node) / "entries" / h[:2] / h[2:]


METRICS_TOKEN = "test-admin-token"  # /metrics takes the service credential; the nodes here use this token


def metrics(url: str) -> str:
    return fetch(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})[2].decode()


@contextmanager
def tmpfs(mountpoint: Path, options: str):
    """A small tmpfs of our own (root only), always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the cache disk needs root")
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)])


def fill_bytes(fs: Path) -> Path:
    """Write a file until the file system is full; return it."""
    path = fs / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096):
            for _ in range(100_000):
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    assert os.statvfs(fs).f_bavail < 16
    return path


def fill_inodes(fs: Path) -> list[Path]:
    """Create empty files until the file system has no inode left (bytes stay free)."""
    made = []
    for i in range(100_000):
        path = fs / f"inode-{i}"
        try:
            path.touch()
        except OSError:
            break
        made.append(path)
    assert os.statvfs(fs).f_ffree == 0
    return made


# -- torn entries: a real node ----------------------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    tree = cluster_tree(tmp, overrides={"cluster": {"admin_token": "test-admin-token"},
                                        "ypws": {"workers": 2, "access_log": "off"}})
    services = Services(tmp)
    try:
        cfg, _ = start_ypws(services, tmp / "n", tree, "ypws1")
        yield type("Node", (), dict(cfg=cfg, store=open_store(cfg.storage, cfg.local_root), url=cfg.ypws.nodes[0].url, services=services))
    finally:
        services.stop_all()


def cached_original(node):
    """A fresh ~2 MB original, filled into the cache; returns (url, the true bytes, its entry file)."""
    rec = seed_photo(node.store, "alice", BIG)
    truth = strip_location(node.store.get(rec.ref.original_key), "jpeg")
    url = f"{node.url}{rec.ref.url_path}/original.jpg"
    first = fetch(url)
    assert_true_image(first, truth)
    assert first[1]["X-Cache"] == "MISS"
    again = fetch(url)
    assert_true_image(again, truth)
    assert again[1]["X-Cache"] == "HIT"
    path = entry_path(node.cfg, "ypws1", f"{rec.ref.original_key}.jpg")
    assert path.stat().st_size > len(truth) > INLINE_MAX
    return url, truth, path


def body_start(path: Path, truth: bytes) -> int:
    return path.stat().st_size - len(truth)


def truncate(path: Path, truth: bytes) -> None:
    os.truncate(path, path.stat().st_size - 300_000)


def zero_middle(path: Path, truth: bytes) -> None:
    with open(path, "r+b") as fh:  # what unwritten pages of a file look like after a power loss
        fh.seek(path.stat().st_size // 2)
        fh.write(b"\0" * 65536)


def flip_head(path: Path, truth: bytes) -> None:
    _flip(path, body_start(path, truth) + 5000)


def flip_tail(path: Path, truth: bytes) -> None:
    _flip(path, path.stat().st_size - 100)


def flip_header(path: Path, truth: bytes) -> None:
    _flip(path, 20)  # inside the JSON header (key, digests, content type)


def _flip(path: Path, at: int) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(16)
        fh.seek(at)
        fh.write(bytes(x ^ 0xFF for x in b))
    assert path.stat().st_size == size


# how the first GET after the tear ends: a miss answered from storage, or a cut connection
TEARS = {"truncated": (truncate, "miss"), "zeros-mid-body": (zero_middle, "cut"), "flipped-head": (flip_head, "miss"),
         "flipped-tail": (flip_tail, "cut"), "flipped-header": (flip_header, "miss")}


@pytest.mark.parametrize("tear", list(TEARS))
def test_a_torn_entry_never_completes_a_200(node, tear):
    url, truth, path = cached_original(node)
    corrupt_before = metric(metrics(node.url), "ypws_corrupt_total")
    damage, expected = TEARS[tear]
    damage(path, truth)
    answers = [fetch(url) for _ in range(4)]
    for answer in answers:
        if answer is not None:
            assert_true_image(answer, truth)
    first = answers[0]
    if expected == "cut":
        assert first is None, "the damage was past the first block: the answer must be cut short"
    else:
        assert first is not None and first[1]["X-Cache"] == "MISS"
    # the torn entry was dropped and filled again from storage: later reads are hits of good bytes
    assert all(a is not None for a in answers[1:])
    assert answers[-1][1]["X-Cache"] == "HIT"
    assert path.read_bytes()[-len(truth):] == truth
    assert wait_for(lambda: metric(metrics(node.url), "ypws_corrupt_total") > corrupt_before, timeout=5)


@pytest.mark.parametrize("tear", ["truncated", "zeros-mid-body", "flipped-tail"])
def test_range_and_head_on_a_torn_entry(node, tear):
    url, truth, path = cached_original(node)
    size = len(truth)
    damage = TEARS[tear][0]
    # HEAD reads no body; its headers come from the checked entry header and are true
    damage(path, truth)
    head = fetch(url, "HEAD")
    assert head is not None and head[0] == 200 and head[2] == b""
    assert head[1]["ETag"] == f'"{xxhash.xxh3_64_hexdigest(truth)}"' and head[1]["Content-Length"] == str(size)
    fetch(url)  # whatever it ends with, the entry is good again afterwards
    assert_true_image(fetch(url), truth)
    # a range over the damage: its blocks are checked before the answer starts, so it falls back to storage
    damage(path, truth)
    start, end = size // 2 - 1000, size - 50
    r = fetch(url, headers={"Range": f"bytes={start}-{end}"})
    assert r is not None and r[0] == 206, r
    assert r[2] == truth[start:end + 1] and r[1]["Content-Range"] == f"bytes {start}-{end}/{size}"
    assert r[1]["X-Cache"] == "MISS"
    whole = fetch(url)
    assert_true_image(whole, truth)
    assert whole[1]["X-Cache"] == "HIT"


# -- a full or failing cache disk --------------------------------------------------------------
def test_a_full_disk_never_loses_a_write_silently(tmp_path):
    """In process, on a real full tmpfs: entry writes, temp files, the index and locks fail, nothing raises,
    the failures are counted and reported by ``degraded()``, and caching resumes once space is back."""
    now = [1000.0]
    with tmpfs(tmp_path / "fs", "size=8m,nr_inodes=600") as fs:
        cache = DiskCache(fs / "c", 256 << 20, retry_after=RETRY, clock=lambda: now[0])
        with cache.fill_lock("a"):
            assert cache.put("a", os.urandom(5000), {}) is not None
        assert cache.degraded() is None
        # out of inodes: no temp file, no new lock file; bytes are free, so every write is really tried
        made = fill_inodes(fs)
        with cache.fill_lock("b"):  # a stripe whose lock file cannot be created: the fill goes on unlocked
            assert cache.put("b", os.urandom(5000), {}) is None
        assert "No space left on device" in cache.degraded()
        assert cache.stats.peek()["write_failures"] >= 1 and cache.stats.peek()["bypassed"] == 1
        assert list((fs / "c" / "tmp").iterdir()) == [] and cache.get("b") is None
        for p in made:
            p.unlink()
        now[0] += RETRY
        assert cache.degraded() is None
        with cache.fill_lock("b"):
            assert cache.put("b", b"b" * 5000, {}) is not None
        # out of bytes: refused before writing, and the index cannot take the hit reports either
        filler = fill_bytes(fs)
        now[0] += RETRY
        assert "cache disk full" in cache.degraded()
        assert cache.put("c", os.urandom(5000), {}) is None
        hits = counted(cache, "hits")
        for _ in range(3000):
            cache.touch("a")
        cache.stats.inc("hits", 3000)
        cache.flush()  # SQLITE_FULL for the hit batch: dropped, not raised; the counts need no disk
        assert cache.totals()["degraded"] == 1.0 and counted(cache, "hits") == hits + 3000
        assert cache.get("a") is not None and cache.get("b").body == b"b" * 5000  # hits still served
        filler.unlink()
        now[0] += RETRY
        assert cache.degraded() is None
        with cache.fill_lock("c"):
            assert cache.put("c", os.urandom(5000), {}) is not None
        cache.close()


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # PURGE, to wsgiref's validator
def test_a_node_starting_on_a_full_disk_serves_and_says_so(tmp_path):
    """Started on a full disk whose index has no WAL files yet (SQLite cannot even open it): the
    start-up recovery, hits, misses and /metrics all work; a PURGE that needs the index is a 503."""
    from falcon import testing

    from cluster.config import from_dict, load_dict
    from storage.local import LocalStore
    from ypws.app import create_app

    tree = load_dict()
    tree["cluster"].update(admin_token="admin-token", url_key="url-key")
    cfg = from_dict(tree)
    store = LocalStore(tmp_path / "store")
    cached, fresh = seed_photo(store, "alice", BIG), seed_photo(store, "alice", BIG)
    with tmpfs(tmp_path / "fs", "size=8m") as fs:
        cache = DiskCache(fs / "c", 256 << 20, retry_after=RETRY)
        client = testing.TestClient(create_app(cfg, "ypws1", store, cache))
        assert client.simulate_get(f"{cached.ref.url_path}/original.jpg").headers["X-Cache"] == "MISS"
        cache.close()  # the last connection: SQLite removes the WAL files
        fill_bytes(fs)
        cache = DiskCache(fs / "c", 256 << 20, retry_after=RETRY)
        assert cache.recover() == {"tmp": 0, "orphans": 0, "missing": 0, "evicted": 0}  # nothing lost either
        cache.connect()
        assert cache.degraded()
        client = testing.TestClient(create_app(cfg, "ypws1", store, cache))
        truth = strip_location(store.get(cached.ref.original_key), "jpeg")
        hit = client.simulate_get(f"{cached.ref.url_path}/original.jpg")
        assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT" and hit.content == truth
        for _ in range(2):
            miss = client.simulate_get(f"{fresh.ref.url_path}/original.jpg")
            assert miss.status_code == 200 and miss.headers["X-Cache"] == "MISS"
            assert miss.content == strip_location(store.get(fresh.ref.original_key), "jpeg")
        m = client.simulate_get("/metrics", headers={"Authorization": "Bearer admin-token"})
        assert m.status_code == 200 and metric(m.text, "ypws_cache_degraded") == 1.0
        assert metric(m.text, "ypws_bypassed_total") == 2
        purge = client.simulate_request("PURGE", f"{fresh.ref.url_path}/original",
                                        headers={"Authorization": "Bearer admin-token"})
        assert purge.status_code == 503 and purge.json["error"] == "cache_unavailable"
        assert purge.headers["Retry-After"] == "2"
        cache.close()


def test_the_retry_setting_is_validated():
    from cluster.config import ConfigError, from_dict, load_dict

    tree = load_dict()
    tree["ypws"]["cache_retry_seconds"] = 0
    with pytest.raises(ConfigError, match="ypws.cache_retry_seconds"):
        from_dict(tree)


def test_a_full_cache_disk_serves_from_storage_and_recovers(tmp_path, services):
    with tmpfs(tmp_path / "cachefs", "size=8m,nr_inodes=2000") as fs:
        try:
            tree = cluster_tree(tmp_path, overrides={"ypws": {"workers": 2, "cache_dir": str(fs), "access_log": "off",
                                                              "cache_retry_seconds": RETRY},
                                                     "cluster": {"admin_token": METRICS_TOKEN}})
            cfg, _ = start_ypws(services, tmp_path / "n", tree, "ypws1")
            url = cfg.ypws.nodes[0].url
            store = open_store(cfg.storage, cfg.local_root)
            recs = [seed_photo(store, "alice", BIG) for _ in range(3)]
            truths = [strip_location(store.get(r.ref.original_key), "jpeg") for r in recs]
            rendition = seed_rendition(store, cfg, recs[0], "medium")

            def original(i: int):
                return fetch(f"{url}{recs[i].ref.url_path}/original.jpg")

            # 1. the disk is full of bytes: originals and renditions come from storage, uncached
            filler = fill_bytes(fs)
            for _ in range(2):
                answer = original(0)
                assert_true_image(answer, truths[0])
                assert answer[1]["X-Cache"] == "MISS"
                r = fetch(f"{url}{recs[0].ref.url_path}/medium.jpg")
                assert r[0] == 200 and r[2] == rendition and r[1]["X-Cache"] == "MISS"
                decode(r[2])
            assert metric(metrics(url), "ypws_cache_degraded") == 1.0  # whichever worker answers
            filler.unlink()
            time.sleep(RETRY)

            # 2. out of inodes (bytes free): writes are tried and fail with ENOSPC
            made = fill_inodes(fs)
            for _ in range(2):
                answer = original(1)
                assert_true_image(answer, truths[1])
                assert answer[1]["X-Cache"] == "MISS"
            assert wait_for(lambda: (metric(metrics(url), "ypws_write_failures_total") or 0) >= 1, timeout=5)
            for p in made:
                p.unlink()

            # 3. space is back: caching resumes by itself
            def cached():
                a, b = original(2), original(2)
                assert_true_image(a, truths[2])
                assert_true_image(b, truths[2])
                return b[1]["X-Cache"] == "HIT"

            assert wait_for(cached, timeout=10, step=RETRY)
            assert wait_for(lambda: metric(metrics(url), "ypws_cache_degraded") == 0.0, timeout=10)
            # every fill served uncached was counted (the counts never need the cache disk)
            assert wait_for(lambda: (metric(metrics(url), "ypws_bypassed_total") or 0) >= 6, timeout=5)

            # 4. restarted on a full disk (the purge log state, the index's WAL files: no room for
            # any new file), the node still starts and serves from its cache and from storage
            services.stop("ypws1")
            filler = fill_bytes(fs)
            start_ypws(services, tmp_path / "n2", tree, "ypws1")
            for i in (2, 0):
                answer = original(i)
                assert_true_image(answer, truths[i])
                assert answer[1]["X-Cache"] == ("HIT" if i == 2 else "MISS")
            assert metric(metrics(url), "ypws_cache_degraded") == 1.0
            filler.unlink()
        finally:
            services.stop_all()  # before the unmount
