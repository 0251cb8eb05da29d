"""ypws core, no processes: URL rules, validators, the disk cache (policies: test_cache_policies)."""

from __future__ import annotations

import multiprocessing
import os
import random
import time

import pytest

from cluster.config import from_dict, load_dict
from storage.keys import PhotoRef
from ypws.conditional import RangeError, not_modified, parse_range
from ypws.diskcache import DiskCache
from ypws.hotlink import HotlinkPolicy
from ypws.negotiation import pick_variant
from ypws.signing import SignatureError, sign_url, verify
from ypws.urls import BadPath, NoSuchImage, parse_image_path

REF = PhotoRef("alice", "123456789", "0123456789")


def config(**ypws):
    tree = load_dict()
    tree["cluster"].update(admin_token="admin-token", url_key="url-key")
    tree["ypws"].update(ypws)
    return from_dict(tree)


# -- URLs, signatures, validators --------------------------------------------------------------------
def test_image_paths():
    t = parse_image_path("/photos/alice/123456789_0123456789/small.webp")
    assert (t.ref, t.size, t.ext, t.fmt) == (REF, "small", "webp", "webp")
    assert parse_image_path("/photos/alice/123456789_0123456789/original.png").is_original
    for bad in ["/photos/Alice/123456789_0123456789/small.jpg", "/photos/alice/123_xyz/small.jpg",
                "/photos/alice/123456789_0123456789/small.jpeg", "/photos/alice/123456789_0123456789/small",
                "/photos/alice/123456789_0123456789/small.exe", "/photos/alice/small.jpg", "/photos/" + "a" * 40 + "/1_0123456789/s.jpg"]:
        with pytest.raises(NoSuchImage) as exc:
            parse_image_path(bad)
        assert str(exc.value) == "no such image"
    for bad in ["/photos/alice/../etc/passwd", "/photos/" + "a" * 2000, "/photos/a\x00/1_0123456789/s.jpg"]:
        with pytest.raises(BadPath):
            parse_image_path(bad)


def test_signed_urls():
    cfg = config(signed_url_max_ttl=3600)
    path = "/photos/alice/123456789_0123456789/small.jpg"
    signed = sign_url(cfg, "http://example.test" + path + "?v=1", ttl=10**9, now=lambda: 1000)
    assert signed.startswith(path + "?exp=4600&sig=")  # ttl capped at signed_url_max_ttl
    sig = signed.rsplit("=", 1)[1]
    assert verify("url-key", 3600, path, "4600", sig, now=1000) == 4600
    for exp, s, now, code in [("4600", sig, 5000, "url_expired"), ("4601", sig, 1000, "bad_signature"),
                              ("4600", "0" * 64, 1000, "bad_signature"), (None, sig, 1000, "bad_signature")]:
        with pytest.raises(SignatureError) as exc:
            verify("url-key", 3600, path, exp, s, now=now)
        assert exc.value.code == code
    with pytest.raises(SignatureError):  # a valid HMAC over an expiry beyond the cap
        far = sign_url(config(signed_url_max_ttl=10**6), path, ttl=10**6, now=lambda: 1000)
        exp, sig = far.split("exp=")[1].split("&sig=")
        verify("url-key", 3600, path, exp, sig, now=1000)


def test_ranges_and_conditionals():
    assert parse_range("bytes=0-99", 1000) == (0, 100)
    assert parse_range("bytes=900-", 1000) == (900, 100)
    assert parse_range("bytes=-10", 1000) == (990, 10)
    assert parse_range("bytes=990-5000", 1000) == (990, 10)
    assert parse_range("items=0-1", 1000) is None and parse_range("bytes=0-1,5-6", 1000) is None
    for bad in ["bytes=abc", "bytes=5-1", "bytes=1000-", "bytes=-0", "bytes=-", "bytes=" + "9" * 30]:
        with pytest.raises(RangeError):
            parse_range(bad, 1000)
    assert not_modified('"a", W/"b"', None, '"b"', 0)
    assert not not_modified('"a"', "Thu, 01 Jan 2099 00:00:00 GMT", '"b"', 0)  # INM decides alone
    assert not_modified(None, "Thu, 01 Jan 2099 00:00:00 GMT", '"b"', time.time())
    assert not not_modified(None, "garbage", '"b"', 0)


def test_accept_negotiation():
    profile = config().size("small")
    assert pick_variant("image/avif,image/webp,*/*;q=0.8", profile) == "avif"
    assert pick_variant("image/webp,*/*", profile) == "webp"
    assert pick_variant("image/avif;q=0, image/webp", profile) == "webp"
    assert pick_variant("*/*", profile) is None and pick_variant(None, profile) is None


def test_hotlink_rules():
    policy = HotlinkPolicy(True, "photos.example", (".friend.example", "blog.example"))
    assert policy.allows(None, None) and policy.allows("", None)
    assert policy.allows("https://photos.example:8443/u/alice", None)
    assert policy.allows("http://www.friend.example/post", None) and policy.allows("http://blog.example/", None)
    assert policy.allows("http://127.0.0.1:9000/u/a", "127.0.0.1:9000")  # the page's own origin
    assert not policy.allows("http://evil.example/", "127.0.0.1:9000")
    assert not policy.allows("not a url", None)
    assert HotlinkPolicy(False, None).allows("http://evil.example/", None)


# -- the disk cache ---------------------------------------------------------------------------------
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
    root = str(tmp_path / "c")
    cache = DiskCache(root, 1 << 20)
    proc = multiprocessing.get_context("fork").Process(target=_fill_in_child, args=(root,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    entry = cache.get("from-child")
    assert entry is not None and entry.meta == {"who": "child"} and bytes(entry.body) == b"z" * 5000
    cache.stats.inc("hits")
    totals = cache.totals()
    assert totals["entries"] == 1 and totals["fills"] == 1 and totals["hits"] == 1


def test_newest_first_listing_reads_about_a_page_not_every_photo(tmp_path):
    """1000 photos over three years, the newest 30 from the last day: the first 30 keys come
    from one short listing; walking on reaches every key once, in newest-first order."""
    import itertools

    from storage.ids import IdGenerator
    from storage.keys import record_key
    from storage.local import LocalStore
    from ypws.listing import newest_record_keys

    class CountingStore(LocalStore):
        listed = 0

        def list(self, prefix="", start_after=""):
            for key in super().list(prefix, start_after):
                CountingStore.listed += 1
                yield key

    store, epoch, now = CountingStore(tmp_path), 1704067200000, 1_800_000_000.0
    times = [now - 3 * 365 * 86400 + i * 86400 for i in range(970)] + [now - 3600 + i for i in range(30)]
    ids = [IdGenerator(1, 0, epoch, clock=lambda t=t: t).next_id() for t in times]
    for pid in ids:
        store.put(record_key("u", pid), b"{}")
    newest = list(itertools.islice(newest_record_keys(store, "u", epoch, lambda: int(now * 1000)), 30))
    assert newest == [record_key("u", pid) for pid in reversed(ids[-30:])]
    assert CountingStore.listed <= 31  # not 1000
    every = list(newest_record_keys(store, "u", epoch, lambda: int(now * 1000)))
    assert every == [record_key("u", pid) for pid in reversed(ids)]
    below = list(newest_record_keys(store, "u", epoch, lambda: int(now * 1000), before=ids[500]))
    assert below == [record_key("u", pid) for pid in reversed(ids[:500])]
