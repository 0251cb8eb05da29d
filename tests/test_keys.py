"""storage/keys.py builds and parses every storage key and public image URL path: round trips
for each kind, and refusals of malformed ones (traversal, encoded slashes, wrong shapes)."""

from __future__ import annotations

import re

import pytest

from storage import keys
from storage.keys import InvalidName, PhotoRef

REF = PhotoRef("alice", "1234567890123456789", "abcdef0123")
SHA = "ab" * 32


# -- storage keys: build -> parse ------------------------------------------------------------
def test_user_key_round_trip():
    key = keys.user_key("bob-2")
    assert key.startswith(keys.user_prefix())
    assert keys.parse_user_key(key) == "bob-2"


def test_record_key_round_trip():
    key = keys.record_key("alice", "42")
    assert key == "photos/alice/42.json" and key.startswith(keys.photo_prefix("alice"))
    assert keys.parse_record_key(key) == ("alice", "42")
    assert REF.record_key == keys.record_key(REF.user, REF.photo_id)


def test_timeline_key_round_trip():
    key = keys.timeline_key("42", "bob_2")
    assert key.startswith(keys.timeline_prefix())
    assert keys.parse_timeline_key(key) == ("42", "bob_2")


def test_dedupe_key_round_trip():
    key = keys.dedupe_key("alice", SHA)
    assert key.startswith(keys.DEDUPE_PREFIX)
    assert keys.parse_dedupe_key(key) == ("alice", SHA)


def test_original_and_rendition_keys_round_trip():
    assert keys.photo_of_key(REF.original_key) == REF
    for fmt, ext in keys.EXTENSIONS.items():
        key = REF.rendition_key("small", "0123abcd", fmt)
        assert key.startswith(REF.size_prefix("small")) and key.startswith(REF.rendition_prefix)
        assert keys.parse_rendition_key(key) == keys.RenditionKey(REF, "small", "0123abcd", ext)
        assert keys.photo_of_key(key) == REF


def test_cached_original_keys_share_one_prefix():
    assert REF.cached_original_key("jpg").startswith(REF.cached_original_key())
    assert not REF.cached_original_key().startswith(REF.rendition_prefix)
    other = PhotoRef("alice", "1234567890123456789", "abcdef0124")  # another secret: another prefix
    assert not other.cached_original_key("jpg").startswith(REF.cached_original_key())


def test_key_and_path_layout_is_fixed():
    """Stored objects and published URLs outlive the code: their exact shapes are part of the contract."""
    ref = PhotoRef("alice", "123", "0123456789")
    assert ref.original_key == "originals/alice/123_0123456789"
    assert ref.record_key == "photos/alice/123.json"
    assert ref.rendition_key("small", "abcdef01", "webp") == "renditions/alice/123_0123456789/small.abcdef01.webp"
    assert ref.size_url_path("small", "jpeg") == "/photos/alice/123_0123456789/small.jpg"


def test_photo_segment_round_trip():
    assert keys.parse_photo_segment(REF.url_path.rsplit("/", 1)[1]) == (REF.photo_id, REF.secret)
    assert keys.parse_photo_segment("42_0123456789") == ("42", "0123456789")
    for bad in ("42-0123456789", "042_0123456789", "42_012345678", "42_0123456789_"):
        with pytest.raises(InvalidName):
            keys.parse_photo_segment(bad)


def test_purge_log_key_round_trip():
    key = keys.purge_log_key(1_732_200_000_123, "a1b2")
    assert keys.purge_log_time(key) == 1_732_200_000_123
    assert keys.purge_log_floor(1_732_200_000_123) < key < keys.purge_log_floor(1_732_200_000_124)


@pytest.mark.parametrize("parse, key", [
    (keys.parse_user_key, "users/alice"),
    (keys.parse_user_key, "users/x/alice.json"),
    (keys.parse_user_key, "photos/alice.json"),
    (keys.parse_record_key, "photos/alice/42.txt"),
    (keys.parse_record_key, "photos/alice/x/42.json"),
    (keys.parse_record_key, "photos/Alice/42.json"),
    (keys.parse_record_key, "timeline/42_alice"),
    (keys.parse_timeline_key, "timeline/42-alice"),
    (keys.parse_timeline_key, "timeline/042_alice"),
    (keys.parse_timeline_key, "photos/42_alice"),
    (keys.parse_dedupe_key, f"dedupe/alice/{SHA[:-1]}.json"),
    (keys.parse_dedupe_key, f"dedupe/../{SHA}.json"),
    (keys.parse_dedupe_key, f"dedupe/alice/{SHA}"),
    (keys.photo_of_key, "originals/alice/42"),
    (keys.photo_of_key, "originals/alice/42_abcdef0123/x"),
    (keys.photo_of_key, "users/alice.json"),
    (keys.parse_rendition_key, "renditions/alice/42_abcdef0123/small.jpg"),
    (keys.parse_rendition_key, "renditions/alice/42_abcdef0123/small.0123abcd.exe"),
    (keys.parse_rendition_key, "renditions/alice/42_abcdef0123/small.0123ABCD.jpg"),
    (keys.parse_rendition_key, "renditions/alice/42_ABCDEF0123/small.0123abcd.jpg"),
    (keys.parse_rendition_key, "originals/alice/42_abcdef0123/small.0123abcd.jpg"),
    (keys.purge_log_time, "purgelog/x/1732200000123-a.json"),
])
def test_malformed_keys_are_refused(parse, key):
    with pytest.raises(InvalidName):
        parse(key)


@pytest.mark.parametrize("build", [
    lambda: keys.record_key("../etc", "42"),
    lambda: keys.record_key("alice", "0042"),
    lambda: keys.user_key("alice/bob"),
    lambda: keys.dedupe_key("alice", "zz" * 32),
    lambda: keys.timeline_key("42", "Alice"),
    lambda: PhotoRef("alice", "42", "abcdef012"),
    lambda: PhotoRef("alice", "0123", "0123456789"),
    lambda: PhotoRef("alice", "1", "xyz"),
    lambda: PhotoRef("al/ice", "1", "0123456789"),
    lambda: REF.rendition_key("small", "0123abcd", "exe"),
    lambda: REF.rendition_key("../x", "0123abcd", "jpeg"),
    lambda: REF.size_prefix("Small"),
    lambda: keys.purge_log_key(-1, "a"),
    lambda: keys.purge_log_key(1, "a/b"),
])
def test_keys_are_built_only_from_valid_names(build):
    with pytest.raises(InvalidName):
        build()


@pytest.mark.parametrize("name", ["", "..", "a/b", "A", "-x", "a" * 33, "a\x00", "a b", "é", "../x"])
def test_invalid_user_names(name):
    with pytest.raises(InvalidName):
        keys.valid_user(name)


# -- public URL paths: build -> parse --------------------------------------------------------
def test_image_paths_round_trip():
    for fmt, ext in keys.EXTENSIONS.items():
        target = keys.parse_image_path(REF.size_url_path("small", fmt))
        assert target == keys.ImagePath(REF, "small", ext, fmt) and not target.is_original
        original = keys.parse_image_path(REF.original_url_path(fmt))
        assert original == keys.ImagePath(REF, "original", ext, fmt) and original.is_original


def test_purge_paths_round_trip():
    whole = keys.parse_image_path(REF.purge_path(), whole_photo=True)
    assert whole == keys.ImagePath(REF, "", None, None)
    assert keys.parse_image_path(REF.purge_path("small"), bare_size=True) == keys.ImagePath(REF, "small", None, None)
    assert keys.parse_image_path(f"{REF.url_path}/original", bare_size=True).is_original


@pytest.mark.parametrize("path", [
    "/photos/alice/42_abcdef0123/small.jpeg",        # one spelling per format: .jpg
    "/photos/alice/42_abcdef0123/small.exe",
    "/photos/alice/42_abcdef0123/small.",
    "/photos/alice/42_abcdef0123/.jpg",
    "/photos/alice/42_abcdef0123/Small.jpg",
    "/photos/alice/42_abcdef0123/small",             # a bare size only where asked for (purges)
    "/photos/alice/42_abcdef0123/",                  # the whole photo only where asked for
    "/photos/alice/42_abcdef0123",
    "/photos/alice/42-abcdef0123/small.jpg",
    "/photos/alice/42_abcdef012/small.jpg",
    "/photos/alice%2F1_abcdef0123/small.jpg",        # an encoded slash is no user name
    "/photos/alice/42%5Fabcdef0123/small.jpg",
    "/photos/../42_abcdef0123/small.jpg",
    "/photos/alice/42_abcdef0123/small.jpg/x",
    "/photo/alice/42_abcdef0123/small.jpg",
    "photos/alice/42_abcdef0123/small.jpg",
    "/photos/",
])
def test_malformed_image_paths_are_refused(path):
    with pytest.raises(InvalidName):
        keys.parse_image_path(path)


def test_bare_and_whole_photo_paths_still_validate_their_parts():
    for path in ("/photos/alice/42_abcdef0123/Small", "/photos/alice/42_abcdef0123/sm.all",
                 "/photos/Alice/42_abcdef0123/"):
        with pytest.raises(InvalidName):
            keys.parse_image_path(path, bare_size=True, whole_photo=True)


# -- the routing key (hashproxy's hot path: lax, one split) -----------------------------------
def test_route_key_drops_extension_and_query_free_of_validation():
    assert keys.image_route_key(REF.size_url_path("small", "webp")) == f"{REF.url_path}/small"
    assert keys.image_route_key(REF.size_url_path("small", "jpeg")) == keys.image_route_key(f"{REF.url_path}/small")
    assert keys.image_route_key("/photos/x/y/z.a.jpg") == "/photos/x/y/z.a"  # lax: ypws decides what exists


@pytest.mark.parametrize("path", ["/photos/a/1_s", "/photos/a/1_s/", "/photos/a/1_s/x/y.jpg", "/photos//1_s/x",
                                  "/photos/a/1_s/.jpg", "/u/alice", "/photos/"])
def test_route_key_needs_the_full_shape(path):
    assert keys.image_route_key(path) is None
    assert re.match(keys.IMAGE_ROUTE_REGEX, path) is None  # HAProxy's front agrees


def test_every_strictly_valid_image_path_has_a_route_key():
    for fmt in keys.EXTENSIONS:
        for path in (REF.size_url_path("medium", fmt), REF.original_url_path(fmt)):
            keys.parse_image_path(path)
            assert keys.image_route_key(path) == path.rsplit(".", 1)[0]
            assert re.match(keys.IMAGE_ROUTE_REGEX, path)
