"""Conditional requests (304), Range on originals (206/416, If-Range) and HEAD = GET without a body.

The parsing units, then the app in-process (tests/ypws_support.py); the same rules on the
worker's event-loop hit path are checked against a real node in test_ypws_serving.py.
"""

from __future__ import annotations

import time

import pytest

from ypws.conditional import RangeError, not_modified, parse_range

from .ypws_support import AppNode, AppWorld, assert_original_without_location

SMALL_CACHE = 400_000  # too small for the landscape original: it is streamed from storage


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = AppWorld(tmp_path_factory.mktemp("ypws-conditional"))
    world.small = AppNode(world.cfg, world.store, world.tmp, "ypws2", cache_bytes=SMALL_CACHE)
    return world


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


def test_head_matches_get(world):
    path = world.path("land", "medium")
    g = world.node.get(path)
    for _ in range(2):  # after the miss, both hits
        h = world.node.get(path, method="HEAD")
        assert h.status_code == 200 and h.content == b""
        for name in ("Content-Length", "ETag", "Content-Type", "Last-Modified", "Cache-Control"):
            assert h.headers[name] == g.headers[name]


def test_conditional_requests_get_304(world):
    path = world.path("land", "small")
    r = world.node.get(path)
    etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
    n = world.node.get(path, {"If-None-Match": etag})
    assert n.status_code == 304 and n.content == b"" and n.headers["ETag"] == etag and n.headers["Vary"] == "Accept"
    assert world.node.get(path, {"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert world.node.get(path, {"If-Modified-Since": modified}).status_code == 304
    assert world.node.get(path, {"If-None-Match": '"other"'}).status_code == 200
    assert world.node.get(path, {"If-Modified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"}).status_code == 200
    webp = world.node.get(path, {"If-None-Match": etag, "Accept": "image/webp"})
    assert webp.status_code == 200 and webp.headers["ETag"] != etag  # another representation


@pytest.mark.parametrize("node", ["node", "small"])  # the small cache cannot hold this original: streamed
def test_range_requests_on_originals(world, node):
    client = getattr(world, node)
    path = world.path("land", "original")
    full = client.get(path).content
    assert_original_without_location(world.store, world.photos["land"], full)  # ranges cut from the scrubbed bytes
    size = len(full)
    for header, start, end in (("bytes=0-99", 0, 99), ("bytes=1000-", 1000, size - 1),
                               ("bytes=-500", size - 500, size - 1)):
        r = client.get(path, {"Range": header})
        assert r.status_code == 206 and r.content == full[start:end + 1], header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
    for bad in ("bytes=abc", "bytes=9-3", f"bytes={size}-"):
        r = client.get(path, {"Range": bad})
        assert r.status_code == 416 and r.json["error"] == "bad_range" and r.headers["Content-Range"] == f"bytes */{size}"
    stale = client.get(path, {"Range": "bytes=0-9", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == full
