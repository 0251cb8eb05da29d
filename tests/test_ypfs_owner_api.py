"""The owner's API: private photos hidden from everyone but their owner; the owner edits title and
visibility (made private: a new secret, the bytes moved, the caches purged through the log) and
deletes a photo with every object of it; nobody else may; an operator takes a photo down from the
command line.

In-process (tests/ypfs_support.py), with the production purger: no ypws runs here, so each purge
is logged and the answer says it was applied on 0 nodes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import falcon
import pytest
import urllib3


from storage.keys import dedupe_key, record_key, timeline_key
from storage.purgelog import PurgeLog
from storage.records import PhotoRecord, UserRecord
from ypfs.__main__ import main as ypfs_main

from .ypfs_support import app_ypfs_fixture, jpeg_variant


ypfs = app_ypfs_fixture("ypfs-owner")


def test_private_photos_are_hidden_from_everyone_but_their_owner(ypfs):
    c = ypfs.client
    r = ypfs.upload("carol", jpeg_variant("formats/DSCN0010.jpg", 7), private="1")
    assert r.status_code == 201 and r.json["private"] is True
    photo = r.json["id"]
    assert c.simulate_get(f"/api/photos/carol/{photo}").status_code == 404
    owner = c.simulate_get(f"/api/photos/carol/{photo}", headers=ypfs.auth("carol"))
    assert owner.status_code == 200 and owner.json["id"] == photo
    listing = c.simulate_get("/api/users/carol/photos").json
    assert photo not in [p["id"] for p in listing["photos"]]
    mine = c.simulate_get("/api/users/carol/photos", headers=ypfs.auth("carol")).json
    assert photo in [p["id"] for p in mine["photos"]]
    theirs = c.simulate_get("/api/users/carol/photos", headers=ypfs.auth("alice")).json
    assert photo not in [p["id"] for p in theirs["photos"]]


def test_the_owner_edits_title_and_visibility_and_nobody_else_may(ypfs):
    c = ypfs.client
    photo = ypfs.upload("editor", jpeg_variant("formats/DSCN0010.jpg", 11)).json["id"]
    url = f"/api/photos/editor/{photo}"
    assert c.simulate_patch(url, json={"title": "x"}).status_code == 401
    other = c.simulate_patch(url, json={"title": "x"}, headers=ypfs.auth("stranger"))
    assert other.status_code == 403 and other.json["error"] == "forbidden"
    for body, status, code in [({"colour": "red"}, 400, "bad_changes"), ({"private": "yes"}, 400, "bad_changes"),
                               ({"title": "t" * 500}, 400, "bad_changes"), ({}, 400, "bad_changes"),
                               ([1, 2], 400, "bad_changes")]:
        r = c.simulate_patch(url, json=body, headers=ypfs.auth("editor"))
        assert (r.status_code, r.json["error"]) == (status, code), body
    r = c.simulate_patch(url, body="title=x", headers={**ypfs.auth("editor"), "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json["error"] == "not_json"
    json_type = {**ypfs.auth("editor"), "Content-Type": "application/json"}
    r = c.simulate_patch(url, body="{", headers=json_type)
    assert r.status_code == 400 and set(r.json) == {"error", "message"}
    r = c.simulate_patch(url, body=json.dumps({"title": "t" * 20_000}), headers=json_type)
    assert r.status_code == 413 and r.json["error"] == "too_large"
    assert PhotoRecord.load(ypfs.store, "editor", photo).title == ""  # no refused edit changed anything

    rec_before = PhotoRecord.load(ypfs.store, "editor", photo)
    original_bytes = ypfs.store.get(rec_before.ref.original_key)
    r = c.simulate_patch(url, json={"title": "  Harbour\x07 ", "private": True, "original_public": False},
                         headers=ypfs.auth("editor"))
    assert r.status_code == 200, r.text
    body = r.json
    assert (body["title"], body["private"], body["original_public"]) == ("Harbour", True, False)
    assert "original" not in body["urls"]
    # the cache tier must forget the old visibility: logged (every node applies it); no ypws runs
    # here to take the direct push, which the answer says instead of claiming it was applied
    assert body["cache"]["logged"] is True and body["cache"]["status"] == "logged"
    assert body["cache"]["applied"] == f"0 of {len(ypfs.cfg.ypws.nodes)} nodes"
    assert list(PurgeLog(ypfs.store).read(""))[-1].paths == (rec_before.ref.purge_path(),)
    rec = PhotoRecord.load(ypfs.store, "editor", photo)
    assert (rec.title, rec.private, rec.original_public) == ("Harbour", True, False)
    # made private: a new secret, so every URL handed out while it was public (and any copy an
    # outer cache keeps of it) names nothing now; the bytes moved to the new keys
    assert rec.secret != rec_before.secret and body["secret"] == rec.secret
    assert not ypfs.store.exists(rec_before.ref.original_key)
    assert ypfs.store.get(rec.ref.original_key) == original_bytes
    assert c.simulate_get(url).status_code == 404  # private now
    assert c.simulate_patch(url, json={"title": "x"}, headers=ypfs.auth("stranger")).status_code == 404
    r = c.simulate_patch(url, json={"title": "Harbour at dusk"}, headers=ypfs.auth("editor"))
    assert r.status_code == 200 and "cache" not in r.json  # a title is not cached with the images


@pytest.mark.parametrize("change", [{"title": "mine"}, {"title": "mine", "private": True}])
def test_an_edit_that_another_edit_overtook_is_a_409_and_stores_nothing(ypfs, monkeypatch, change):
    """Two edits of one photo at once (two tabs, the placeholder backfill): the second to write
    finds the record changed since it read it and stores nothing, instead of silently undoing the
    first. Made private, its copies at the new secret are orphans `ypfs gc` removes."""
    c = ypfs.client
    photo = ypfs.upload("racer", jpeg_variant("formats/DSCN0010.jpg", 20 + len(change))).json["id"]
    url = f"/api/photos/racer/{photo}"
    replace = ypfs.store.replace

    def overtaken(*args, **kwargs):  # the other edit lands between this one's read and its write
        rec = PhotoRecord.load(ypfs.store, "racer", photo)
        ypfs.store.put(rec.ref.record_key, dataclasses.replace(rec, title="theirs").to_json())
        monkeypatch.setattr(ypfs.store, "replace", replace)
        return replace(*args, **kwargs)

    monkeypatch.setattr(ypfs.store, "replace", overtaken)
    r = c.simulate_patch(url, json=change, headers=ypfs.auth("racer"))
    assert r.status_code == 409 and r.json["error"] == "changed_meanwhile", r.text
    rec = PhotoRecord.load(ypfs.store, "racer", photo)
    assert (rec.title, rec.private) == ("theirs", False)  # the other edit stands; nothing of this one
    assert ypfs.store.exists(rec.ref.original_key)  # the original still where the record says (old secret)
    r = c.simulate_patch(url, json=change, headers=ypfs.auth("racer"))  # read again and retried: it goes
    assert r.status_code == 200 and r.json["title"] == "mine"


def test_the_owner_deletes_a_photo_and_every_object_of_it_goes(ypfs):
    c = ypfs.client
    data = jpeg_variant("formats/DSCN0010.jpg", 12)
    rec = PhotoRecord.from_json(ypfs.store.get(record_key("gina", ypfs.upload("gina", data).json["id"])))
    ref = rec.ref
    for key in (ref.rendition_key("small", "0123abcd", "jpeg"), ref.rendition_key("medium", "0123abcd", "webp")):
        ypfs.store.put(key, b"rendition")  # what magickd would have written
    keys = [ref.record_key, ref.original_key, dedupe_key("gina", rec.sha256), timeline_key(rec.id, "gina"),
            *ypfs.store.list(ref.rendition_prefix)]
    assert len(keys) == 6 and all(ypfs.store.exists(k) for k in keys)
    url = f"/api/photos/gina/{rec.id}"
    assert c.simulate_delete(url).status_code == 401
    assert c.simulate_delete(url, headers=ypfs.auth("stranger")).status_code == 403
    assert all(ypfs.store.exists(k) for k in keys)

    r = c.simulate_delete(url, headers=ypfs.auth("gina"))
    assert r.status_code == 200, r.text
    assert r.json["deleted"] == rec.id and r.json["objects_removed"] == 6
    assert r.json["cache"]["logged"] is True
    assert ref.purge_path() in [p for e in PurgeLog(ypfs.store).read("") for p in e.paths]
    assert [k for k in keys if ypfs.store.exists(k)] == []
    assert c.simulate_get(url).status_code == 404
    assert c.simulate_delete(url, headers=ypfs.auth("gina")).status_code == 404  # a retry: nothing left
    listing = c.simulate_get("/api/users/gina/photos").json
    assert rec.id not in [p["id"] for p in listing["photos"]]
    again = ypfs.upload("gina", data)  # the same bytes again: a new photo, not the deleted one
    assert again.status_code == 201 and again.json["id"] != rec.id


def test_deleting_a_photo_keeps_a_newer_upload_of_the_same_bytes(ypfs):
    """The duplicate entry belongs to whichever photo it names: deleting an older one leaves it."""
    data = jpeg_variant("formats/DSCN0010.jpg", 13)
    old = ypfs.upload("hana", data).json["id"]
    entry = dedupe_key("hana", hashlib.sha256(data).hexdigest())
    ypfs.store.put(entry, json.dumps({"id": "1"}).encode())  # as if a later photo had claimed these bytes
    assert ypfs.client.simulate_delete(f"/api/photos/hana/{old}", headers=ypfs.auth("hana")).status_code == 200
    assert json.loads(ypfs.store.get(entry)) == {"id": "1"}


def test_an_operator_takes_a_photo_down_from_the_command_line(ypfs, capsys):
    rec = PhotoRecord.from_json(ypfs.store.get(record_key("ivan", ypfs.upload(
        "ivan", jpeg_variant("formats/DSCN0010.jpg", 14)).json["id"])))
    cli = ["--config", str(ypfs.path), "photo", "delete", "ivan", rec.id]
    assert ypfs_main(cli) == 0
    out = capsys.readouterr().out
    assert f"deleted ivan/{rec.id}" in out
    assert "cache purge logged, applied on 0 of" in out  # no ypws runs here: said, not hidden
    assert rec.ref.purge_path() in [p for e in PurgeLog(ypfs.store).read("") for p in e.paths]
    assert not ypfs.store.exists(rec.ref.record_key) and not ypfs.store.exists(rec.ref.original_key)
    assert ypfs_main(cli) == 1
    assert "no photo" in capsys.readouterr().err


def test_the_user_commands_add_tokens_and_revoke_them_all(ypfs, capsys):
    """`ypfs user add|token|revoke NAME`: a new token works at once (even while the user's record
    is cached); a revoked one is gone from the record (a worker's cache forgets it within seconds)."""
    cli = ["--config", str(ypfs.path), "user"]
    assert ypfs_main([*cli, "add", "una"]) == 0
    first = capsys.readouterr().out.strip()
    assert ypfs_main([*cli, "add", "una"]) == 1 and "already exists" in capsys.readouterr().err

    def upload(token: str):
        body, content_type = urllib3.encode_multipart_formdata({"photo": ("a.jpg", b"not an image")})
        return ypfs.client.simulate_post("/upload", body=body,
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})

    assert upload(first).status_code == 415  # authenticated: refused only for what it sent
    assert ypfs_main([*cli, "token", "una"]) == 0
    second = capsys.readouterr().out.strip()
    assert upload(second).status_code == 415  # at once, though the worker has una's record cached
    assert upload("una.forged").status_code == 401
    assert ypfs_main([*cli, "revoke", "una"]) == 0 and "revoked" in capsys.readouterr().out
    una = UserRecord.load(ypfs.store, "una")
    assert not una.check_token(first) and not una.check_token(second)
    assert ypfs_main([*cli, "token", "nobody"]) == 1 and "no user" in capsys.readouterr().err


def test_wrong_tokens_for_a_real_user_do_not_each_cost_a_store_read(tmp_path):
    from falcon import testing

    from storage.local import LocalStore
    from ypfs.app import TokenAuth

    class Counting(LocalStore):
        reads = 0

        def get_versioned(self, key):
            Counting.reads += 1
            return super().get_versioned(key)

    store = Counting(tmp_path)
    user = UserRecord("vic")
    good = user.new_token()
    user.save(store)
    auth = TokenAuth(store)
    req = lambda token: testing.create_req(headers={"Authorization": f"Bearer {token}"})  # noqa: E731
    assert auth.user(req(good)).name == "vic" and Counting.reads == 1
    for i in range(50):
        with pytest.raises(falcon.HTTPError) as refused:
            auth.user(req(f"vic.wrong{i}"))
        assert refused.value.status_code == 401
    assert Counting.reads == 2  # one fresh look for a token made meanwhile, then the cache answers
