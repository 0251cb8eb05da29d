"""An accepted upload: durable (original and record stored) before the 201, the public view with
every size's URL, the renders asked of magickd with the service credential, the same bytes again
answered with the same photo, a private re-upload of a public photo refused (409), and every
valid corpus file accepted at its displayed size.

In-process: falcon's TestClient over ``ypfs.app.create_app`` with a real LocalStore and the
production notifier and purger (tests/ypfs_support.py). Limits, the hostile corpus, crashes and
concurrency against real gunicorn: test_ypfs_upload.py.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from storage.records import PhotoRecord

from .helpers import CORPUS
from .ypfs_support import app_ypfs_fixture, jpeg_variant, pillow_display_size, wait_for

MANIFEST = {r["path"]: r for r in csv.DictReader(open(CORPUS / "MANIFEST.tsv"), delimiter="\t")}
VALID = sorted(p for p in MANIFEST if p.startswith(("formats/", "orientation/")))


ypfs = app_ypfs_fixture("ypfs-accepts")


def test_upload_end_to_end(ypfs):
    data = (CORPUS / "formats/iphone_hdr_NO.jpg").read_bytes()
    r = ypfs.upload("alice", data, "IMG_0001.JPG", title="Harbour at dusk")
    assert r.status_code == 201, r.text
    body = r.json
    assert body["owner"] == "alice" and body["title"] == "Harbour at dusk"
    assert (body["width"], body["height"], body["format"]) == (3264, 2448, "jpeg")
    assert body["bytes"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["camera"] == "Apple iPhone 6" and body["taken_at"] == "2015-04-10T20:12:23"
    assert set(body["urls"]) == {"square", "thumb", "small", "medium", "large", "xlarge", "original"}
    assert body["urls"]["small"].startswith(f"{ypfs.cfg.public_url}/photos/alice/{body['id']}_{body['secret']}/small.jpg?v=")
    assert "gps" not in r.text.lower() and "latitude" not in r.text.lower()
    assert r.headers["Location"] == f"/api/photos/alice/{body['id']}"
    # durable before the ack: the original (byte for byte) and its record are in the store
    rec = PhotoRecord.load(ypfs.store, "alice", body["id"])
    assert ypfs.store.get(rec.ref.original_key) == data
    assert rec.sha256 == body["sha256"]
    # the API serves the same public view
    api = ypfs.client.simulate_get(f"/api/photos/alice/{body['id']}")
    assert api.status_code == 200 and api.json == body
    # and magickd was asked for the eager sizes, fire-and-forget
    assert wait_for(lambda: ypfs.recorder.calls_for(body["id"]))
    call = ypfs.recorder.calls_for(body["id"])[0]
    eager = [p.name for p in ypfs.cfg.sizes if p.eager]  # xlarge is rendered on its first view
    assert "xlarge" not in eager
    assert (call["user"], call["secret"], call["sizes"]) == ("alice", body["secret"], eager)
    assert call["_authorization"] == f"Bearer {ypfs.cfg.cluster.admin_token}"  # magickd needs the service credential


def test_same_bytes_again_returns_the_existing_photo(ypfs):
    data = jpeg_variant("formats/DSCN0010.jpg", 1)
    first = ypfs.upload("alice", data)
    again = ypfs.upload("alice", data)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json["id"] == first.json["id"]
    other_user = ypfs.upload("bob", data)
    assert other_user.status_code == 201 and other_user.json["id"] != first.json["id"]


def test_same_bytes_again_as_private_does_not_pretend_to_be_private(ypfs):
    """Issue 13 (LOW): a private=1 re-upload of a public photo silently returned the public photo."""
    data = jpeg_variant("formats/DSCN0010.jpg", 1)
    first = ypfs.upload("priya", data)
    assert first.status_code == 201 and first.json["private"] is False
    again = ypfs.upload("priya", data, private="1")
    assert again.status_code == 409, again.text
    body = again.json
    assert body["error"] == "already_public"
    assert first.json["id"] in body["message"] and "PATCH" in body["message"]
    assert body["photo"]["id"] == first.json["id"] and body["photo"]["private"] is False
    assert again.headers["Location"] == f"/api/photos/priya/{first.json['id']}"
    # the photo itself was not changed behind the owner's back
    assert PhotoRecord.load(ypfs.store, "priya", first.json["id"]).private is False
    # a private photo uploaded again (privately or not) is answered as the private photo it is
    secret = ypfs.upload("priya", jpeg_variant("formats/DSCN0010.jpg", 2), private="1")
    assert secret.status_code == 201
    for fields in ({"private": "1"}, {}):
        r = ypfs.upload("priya", jpeg_variant("formats/DSCN0010.jpg", 2), **fields)
        assert r.status_code == 200 and r.json["id"] == secret.json["id"] and r.json["private"] is True


@pytest.mark.parametrize("path", VALID)
def test_every_valid_corpus_file_is_accepted(ypfs, path):
    data = (CORPUS / path).read_bytes()
    r = ypfs.upload("valid", data, Path(path).name)
    assert r.status_code in (200, 201), r.text
    body = r.json
    assert (body["width"], body["height"]) == pillow_display_size(data)
    assert "gps" not in r.text.lower()
