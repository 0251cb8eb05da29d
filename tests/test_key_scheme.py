"""The key scheme (storage/keys.py): keys and URL paths built only from valid parts, and parsed back."""

from __future__ import annotations

import pytest

from storage.keys import InvalidName, PhotoRef, parse_photo_segment, parse_record_key, record_key, valid_user


@pytest.mark.parametrize("name", ["", "..", "a/b", "A", "-x", "a" * 33, "a\x00", "a b", "é", "../x"])


def test_invalid_user_names(name):
    with pytest.raises(InvalidName):
        valid_user(name)


def test_keys_are_built_only_from_valid_parts():
    ref = PhotoRef("alice", "123", "0123456789")
    assert ref.original_key == "originals/alice/123_0123456789"
    assert ref.record_key == "photos/alice/123.json"
    assert ref.rendition_key("small", "abcdef01", "webp") == "renditions/alice/123_0123456789/small.abcdef01.webp"
    assert ref.size_url_path("small", "jpeg") == "/photos/alice/123_0123456789/small.jpg"
    for bad in [("alice", "0123", "0123456789"), ("alice", "1", "xyz"), ("al/ice", "1", "0123456789")]:
        with pytest.raises(InvalidName):
            PhotoRef(*bad)
    with pytest.raises(InvalidName):
        ref.rendition_key("../x", "abcdef01", "jpeg")
    assert parse_record_key(record_key("bob", "42")) == ("bob", "42")
    assert parse_photo_segment("42_0123456789") == ("42", "0123456789")
    with pytest.raises(InvalidName):
        parse_photo_segment("42-0123456789")
