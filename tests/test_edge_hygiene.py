"""The LOW findings of issue 13, one test each: logs, file modes, encoded slashes, browser headers.

- access logs never hold the ``exp``/``sig`` of a signed URL (a bearer link to a private photo);
- the local store writes objects 0640 and folders 0750 (private originals carry GPS);
- ``%2F`` in a path is refused with 400 by hashproxy and ypws alike (ypws decoded it and served
  an image the proxy had routed as an unpinned page);
- ``X-Content-Type-Options: nosniff`` on every response, ``frame-ancestors 'none'`` on HTML.
(``/metrics/`` and the private re-upload are in test_service_auth.py and test_ypfs_accepts.py.)
"""

from __future__ import annotations

import json
import stat

import pytest
from falcon import testing

from cluster.config import from_dict
from cluster.profiles import profile_version
from hashproxy import responses
from hashproxy.urls import BadTarget, classify
from storage.local import LocalStore
from ypfs.app import create_app as ypfs_app
from ypws.accesslog import AccessLog
from ypws.app import create_app as ypws_app

from .helpers import CORPUS, cluster_tree, seed_photo
from .magickd_support import render_app
from .ypws_support import node_cache, seed_rendition, sign_for

ENCODED_SLASHES = [
    "/photos/alice%2F1000_0123456789/small.jpg",
    "/photos/alice/1000_0123456789%2fsmall.jpg",
    "/photos%2Falice/1000_0123456789/small.jpg",
    "/u/alice%2F..%2Fbob",
]


@pytest.fixture
def cfg(tmp_path):
    tree = cluster_tree(tmp_path)
    tree["cluster"].update(admin_token="t" * 20, url_key="u" * 32, public_url="http://photos.example")
    return from_dict(tree)


@pytest.fixture
def store(cfg):
    return LocalStore(cfg.local_root)


@pytest.fixture
def ypws(cfg, store):
    return testing.TestClient(ypws_app(cfg, "ypws1", store, node_cache(cfg, "ypws1")))


def test_access_log_never_records_exp_or_sig(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), "ypws1")
    urls = [b"/photos/carol/1000_0123456789/small.jpg?v=ab12cd34&exp=1800000000&sig=SeCrEtSiGnAtUrE",
            b"/photos/carol/1000_0123456789/original.jpg?sig=SeCrEtSiGnAtUrE;exp=1800000000",
            b"/photos/carol/1000_0123456789/large.jpg?EXP=1800000000&SIG=SeCrEtSiGnAtUrE&v=1"]
    for url in urls:
        log.write(b"GET", url, 200, 10, "HIT", 0.001, None, None, "127.0.0.1")
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    text = path.read_text()
    assert "SeCrEtSiGnAtUrE" not in text and "1800000000" not in text
    assert lines[0]["path"] == "/photos/carol/1000_0123456789/small.jpg?v=ab12cd34&exp=-&sig=-"
    assert lines[2]["path"].endswith("&v=1")  # the rest of the query is kept


def test_local_store_keeps_objects_and_folders_from_other_users(tmp_path):
    store = LocalStore(tmp_path / "store")
    keys = ["originals/carol/1000000000000000001_0123456789", "photos/carol/1000000000000000001.json"]
    for key in keys:
        store.put(key, b"private bytes, GPS included")
    store.put_if_absent("dedupe/carol/" + "a" * 64 + ".json", b"{}")
    for key in [*keys, "dedupe/carol/" + "a" * 64 + ".json"]:
        path = store.root / key
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0 and mode & 0o600 == 0o600, (key, oct(mode))
        folder = path.parent
        while True:
            assert stat.S_IMODE(folder.stat().st_mode) & 0o007 == 0, (folder, oct(folder.stat().st_mode))
            if folder == store.root:
                break
            folder = folder.parent


@pytest.mark.parametrize("path", ENCODED_SLASHES)
def test_hashproxy_refuses_an_encoded_slash(path):
    with pytest.raises(BadTarget) as info:
        classify("GET", path.encode())
    assert (info.value.status, info.value.code) == (400, "bad_path")
    with pytest.raises(BadTarget):
        classify("PURGE", path.encode())


@pytest.mark.parametrize("path", ENCODED_SLASHES)
def test_ypws_refuses_an_encoded_slash_like_hashproxy(ypws, store, cfg, path):
    rec = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg")
    seed_rendition(store, cfg, rec, "small")
    raw = path.replace("1000_0123456789", f"{rec.id}_{rec.secret}")
    decoded = raw.replace("%2F", "/").replace("%2f", "/")
    r = ypws.simulate_get(decoded, extras={"RAW_URI": raw})  # what our worker passes: the target as sent
    assert r.status_code == 400, r.text
    assert r.json == {"error": "bad_path", "message": "an encoded '/' (%2F) is not allowed in a path"}


def test_every_response_is_nosniff_and_html_cannot_be_framed(ypws, store, cfg):
    rec = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg")
    seed_rendition(store, cfg, rec, "small")
    image = ypws.simulate_get(f"{rec.ref.url_path}/small.jpg", query_string=f"v={profile_version(cfg.size('small'))}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in image.headers
    for page in ("/u/alice", "/upload", f"/p/alice/{rec.id}"):
        r = ypws.simulate_get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    for client, path in ((ypws, "/nowhere"), (testing.TestClient(ypfs_app(cfg, store, "ypfs1")), "/api/nothing"),
                         (testing.TestClient(render_app(cfg, store)),
                          "/render")):
        r = client.simulate_get(path)
        assert r.status_code in (404, 405) and r.headers["X-Content-Type-Options"] == "nosniff", path
    own = responses.error(404, "not_found", "x")
    assert b"\r\nX-Content-Type-Options: nosniff\r\n" in own


def test_signed_private_urls_still_work_with_the_checks_in_place(ypws, store, cfg):
    rec = seed_photo(store, "carol", CORPUS / "formats" / "hopper.jpg", private=True)
    seed_rendition(store, cfg, rec, "small")
    path = f"{rec.ref.url_path}/small.jpg"
    assert ypws.simulate_get(path).status_code == 404
    query = sign_for(cfg, path, 3600).partition("?")[2]
    r = ypws.simulate_get(path, query_string=query, extras={"RAW_URI": f"{path}?{query}"})
    assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
