"""The shared disk cache (ypws/diskcache.py): bounded (also through the app under a flood of
distinct URLs), never serving a damaged entry, recovering after a crash, shared between processes.
Eviction policies: test_cache_policies.py; faults: test_ypws_cache_faults.py."""

from __future__ import annotations

import multiprocessing
import os

from storage.local import LocalStore
from ypws.diskcache import DiskCache

from .helpers import CORPUS, seed_photo
from .ypws_support import AppNode, app_config, counted, metric, seed_rendition

SMALL_CACHE = 400_000


def test_disk_cache_is_bounded_and_evicts(tmp_path):
    cache = DiskCache(tmp_path / "c", 40_000, "s4lru")
    for i in range(100):
        with cache.fill_lock(f"k{i}"):
            cache.put(f"k{i}", os.urandom(900 + i), {"n": i})
    size, entries = cache.index.totals()
    on_disk = sum(f.stat().st_size for f in (tmp_path / "c" / "entries").rglob("*") if f.is_file())
    assert size == on_disk <= 40_000
    assert 0 < entries < 100
    assert cache.get("k99").meta == {"n": 99}
    assert cache.put("big", b"x" * 20_000, {}) is None  # larger than one segment: not admitted


def test_disk_cache_never_serves_a_damaged_entry(tmp_path):
    cache = DiskCache(tmp_path / "c", 1 << 20, memo_bytes=0)
    cache.put("k", b"hello world" * 100, {"a": 1})
    path = cache.path_for("k")
    data = open(path, "rb").read()
    with open(path, "wb") as fh:  # a torn write
        fh.write(data[:-10])
    assert cache.get("k") is None and not os.path.exists(path)
    cache.put("k", b"hello world" * 100, {"a": 1})
    with open(path, "r+b") as fh:  # same length, flipped byte
        fh.seek(-1, 2)
        fh.write(b"!")
    assert cache.get("k") is None


def test_disk_cache_recovers_after_a_crash(tmp_path):
    cache = DiskCache(tmp_path / "c", 1 << 20)
    cache.put("kept", b"a" * 1000, {})
    cache.put("lost", b"b" * 1000, {})
    os.unlink(cache.path_for("lost"))                       # file gone, row left
    (tmp_path / "c" / "tmp" / "half").write_bytes(b"x")     # write interrupted before the rename
    orphan = cache.path_for("orphan")
    open(orphan, "wb").write(b"y")                           # renamed, but the index row never came
    cache.close()
    again = DiskCache(tmp_path / "c", 1 << 20)
    report = again.recover()
    assert report == {"tmp": 1, "orphans": 1, "missing": 1, "evicted": 0}
    assert again.index.keys() == ["kept"] and again.get("kept").size == 1000


def _fill_in_child(root: str) -> None:
    c = DiskCache(root, 1 << 20)
    c.put("from-child", b"z" * 5000, {"who": "child"})
    c.get("from-child")
    c.close()


def test_disk_cache_is_shared_between_processes_and_counts(tmp_path):
    """A fill by another process is this one's hit; each process counts its own (summed over
    workers by a scrape of a real node: tests/test_metrics.py)."""
    root = str(tmp_path / "c")
    cache = DiskCache(root, 1 << 20)
    proc = multiprocessing.get_context("fork").Process(target=_fill_in_child, args=(root,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    entry = cache.get("from-child")
    assert entry is not None and entry.meta == {"who": "child"} and bytes(entry.body) == b"z" * 5000
    assert cache.totals()["entries"] == 1
    cache.stats.inc("hits")
    assert counted(cache, "hits") == 1


def test_cache_stays_bounded_under_a_flood_of_distinct_urls(tmp_path):
    """60 distinct renditions through a node whose cache holds 400 KB: evictions counted, the
    cache (index and files on disk) never past its bound."""
    cfg = app_config(tmp_path)
    store = LocalStore(cfg.local_root)
    node = AppNode(cfg, store, tmp_path, cache_bytes=SMALL_CACHE, render=False)
    paths = []
    for i in range(10):
        rec = seed_photo(store, "flood", CORPUS / "formats" / "hopper.jpg")
        for size in ("square", "thumb", "small"):
            for fmt, ext in (("jpeg", "jpg"), ("webp", "webp")):
                seed_rendition(store, cfg, rec, size, fmt)
                paths.append(f"{rec.ref.url_path}/{size}.{ext}")
    assert [node.get(p).status_code for p in paths] == [200] * len(paths)
    text = node.get("/metrics", {"Authorization": "Bearer test-admin-token"}).text
    assert metric(text, "ypws_evictions_total") > 0, "no eviction was counted"
    held = metric(text, "ypws_cache_bytes")
    assert 0 < held <= SMALL_CACHE and metric(text, "ypws_cache_max_bytes") == SMALL_CACHE
    assert metric(text, "ypws_cache_entries") < len(paths)
    entries = node.cache.root / "entries"
    assert sum(f.stat().st_size for f in entries.rglob("*") if f.is_file()) <= SMALL_CACHE
