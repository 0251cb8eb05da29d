"""Refused uploads and API calls: a missing or wrong token (401 with WWW-Authenticate), a body that
is not multipart (415), no photo part (400), a title too long (400), a broken multipart body (400),
a path that names nothing (404), a decode past its deadline (422); always a JSON body
``{"error", "message"}``.

In-process (tests/ypfs_support.py). Size limits enforced while the body streams, chunked bodies,
the hostile corpus and the JPEG scan bomb against real gunicorn: test_ypfs_upload.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import urllib3

from cluster.config import load
from media.probe import ImageRejected, probe

from .helpers import CORPUS
from .ypfs_support import app_ypfs_fixture


ypfs = app_ypfs_fixture("ypfs-refusals")


def test_auth_errors(ypfs):
    data = (CORPUS / "formats/hopper.jpg").read_bytes()
    r = ypfs.upload(None, data, "a.jpg")
    assert r.status_code == 401 and r.json["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    ypfs.token("alice")
    body, ctype = urllib3.encode_multipart_formdata({"photo": ("a.jpg", data)})
    for token in ["nobody.abc", "alice.wrong", "garbage", "../../etc.x"]:
        r = ypfs.client.simulate_post("/upload", body=body, headers={"Authorization": f"Bearer {token}",
                                                                     "Content-Type": ctype})
        assert r.status_code == 401, token
        assert r.json["error"] == "unauthorized" and r.headers["WWW-Authenticate"].startswith("Bearer")


def test_malformed_requests_get_clear_json_errors(ypfs):
    auth = ypfs.auth("alice")
    jpeg = (CORPUS / "formats/hopper.jpg").read_bytes()
    r = ypfs.client.simulate_post("/upload", body=jpeg, headers={**auth, "Content-Type": "image/jpeg"})
    assert r.status_code == 415 and r.json["error"] == "not_multipart"
    r = ypfs.upload("alice", jpeg, "a.jpg", part="picture")
    assert r.status_code == 400 and r.json["error"] == "missing_photo"
    r = ypfs.upload("alice", jpeg, "a.jpg", title="t" * 500)
    assert r.status_code == 400 and r.json["error"] == "title_too_long"
    r = ypfs.client.simulate_post("/upload", body=b"--x\r\ngarbage",
                                  headers={**auth, "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and set(r.json) == {"error", "message"}
    r = ypfs.client.simulate_get("/api/photos/alice/..%2f..%2fetc")
    assert r.status_code == 404 and r.json["error"] == "not_found"
    r = ypfs.client.simulate_get("/nowhere")
    assert r.status_code == 404 and "error" in r.json


def test_a_decode_past_its_deadline_is_a_clear_422():
    limits = dataclasses.replace(load(with_secrets=False).limits, decode_timeout=0.002)
    data = (CORPUS / "formats" / "iphone_hdr_NO.jpg").read_bytes()  # ~20 ms to check
    with pytest.raises(ImageRejected) as info:
        probe(data, "jpeg", limits)
    assert (info.value.status, info.value.code) == (422, "decode_timeout")
