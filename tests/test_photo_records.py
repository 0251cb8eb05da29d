"""Photo and user records (storage/records.py): hashed tokens, tolerant JSON, profile versions in URLs."""

from __future__ import annotations

import dataclasses

from cluster.config import from_dict, load_dict
from cluster.profiles import profile_version
from storage.keys import PhotoRef
from storage.records import PhotoRecord, UserRecord, rendition_url


def test_profile_version_changes_with_sharpening_only_when_params_change():
    cfg = from_dict(load_dict())
    small = cfg.size("small")
    assert profile_version(small) == profile_version(dataclasses.replace(small, variants=("webp",)))
    retuned = dataclasses.replace(small, sharpen_amount=small.sharpen_amount + 0.1)
    assert profile_version(retuned) != profile_version(small)
    ref = PhotoRef("alice", "123", "0123456789")
    assert rendition_url("http://h", ref, small).endswith(f"/small.jpg?v={profile_version(small)}")


def test_user_tokens_are_stored_hashed():
    user = UserRecord("alice")
    token = user.new_token()
    assert token.startswith("alice.") and len(token) > 40
    assert user.check_token(token) and not user.check_token(token + "x")
    assert token not in user.to_json().decode()
    assert UserRecord.from_json(user.to_json()).check_token(token)


def test_photo_record_round_trip_ignores_unknown_fields():
    rec = PhotoRecord(id="1", owner="a", secret="0123456789", format="jpeg", width=1, height=2, bytes=3,
                      sha256="0" * 64, uploaded_at=1.0)
    raw = rec.to_json().replace(b"{", b'{"future_field": 1, ', 1)
    assert PhotoRecord.from_json(raw) == rec


def test_a_record_is_written_only_over_the_version_it_was_read_as(tmp_path):
    """Two writers read one record; the second to write gets Conflict instead of undoing the first
    (an admin's two `user token` commands, an owner's edit and the placeholder backfill)."""
    import pytest

    from storage import Conflict
    from storage.local import LocalStore

    store = LocalStore(tmp_path)
    UserRecord("alice").save(store)  # new: written as is
    first, second = UserRecord.load(store, "alice"), UserRecord.load(store, "alice")
    kept = first.new_token()
    first = first.save(store)
    second.new_token()
    with pytest.raises(Conflict):
        second.save(store)
    stored = UserRecord.load(store, "alice")
    assert stored.check_token(kept) and len(stored.token_hashes) == 1
    assert "etag" not in stored.to_json().decode()  # the version is the store's, not the document's
    third = stored.new_token()
    assert stored.save(store).etag != first.etag and UserRecord.load(store, "alice").check_token(third)
