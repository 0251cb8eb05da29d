"""Internal endpoints need the cluster's service credential (``Authorization: Bearer <cluster.admin_token>``).

magickd ``POST /render`` and ``/metrics`` on every component (ypfs, ypws, magickd,
hashproxy; with or without a trailing slash) answer 401 JSON without it, the same
for a wrong token as for none; ``/healthz`` stays public. magickd's 404 is one
answer for a missing photo, a wrong secret and a missing original, so it is no
oracle for which private ids exist. In-process (falcon's TestClient, the proxy's
router) plus one real socket: RenderClient against a magickd app served over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from falcon import testing

from cluster.config import from_dict
from magickd.client import RenderClient, RenderError
from storage.local import LocalStore
from ypfs.app import create_app as ypfs_app
from ypws.app import create_app as ypws_app

from .hashproxy_support import proxy_app
from .helpers import CORPUS, cluster_tree, seed_photo
from .magickd_support import render_app
from .ypws_support import node_cache

TOKEN = "edge-service-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WRONG = [{}, {"Authorization": "Bearer not-the-token"}, {"Authorization": f"Basic {TOKEN}"},
         {"Authorization": f"Bearer {TOKEN}x"}]


@pytest.fixture
def cfg(tmp_path):
    tree = cluster_tree(tmp_path)
    tree["cluster"].update(admin_token=TOKEN, url_key="u" * 32)
    return from_dict(tree)


@pytest.fixture
def store(cfg):
    return LocalStore(cfg.local_root)


@pytest.fixture
def magickd(cfg, store):
    return testing.TestClient(render_app(cfg, store))


def _refusals(client, method: str, path: str, **kw) -> None:
    """Every wrong or missing credential: one and the same 401."""
    answers = []
    for headers in WRONG:
        r = client.simulate_request(method, path, headers=headers, **kw)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json["error"] == "unauthorized"
        answers.append(r.text)
    assert len(set(answers)) == 1


def test_render_needs_the_service_credential(magickd, store):
    rec = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg")
    body = {"user": "alice", "photo": rec.id, "secret": rec.secret, "sizes": ["thumb"], "force": True}
    _refusals(magickd, "POST", "/render", json=body)
    assert not list(store.list(rec.ref.rendition_prefix))  # nothing was rendered for them
    r = magickd.simulate_post("/render", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [x["size"] for x in r.json["renditions"]] == ["thumb"]


def test_render_401_comes_before_the_body_is_looked_at(magickd):
    r = magickd.simulate_post("/render", body=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 401


def test_a_wrong_secret_and_a_missing_photo_get_the_same_answer(magickd, store):
    rec = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg", private=True)
    gone = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg")
    store.delete(gone.ref.original_key)
    asks = {
        "wrong secret": {"user": "alice", "photo": rec.id, "secret": "0123456789"},
        "no such id": {"user": "alice", "photo": str(int(rec.id) + 1), "secret": rec.secret},
        "no such user": {"user": "nobody", "photo": rec.id, "secret": rec.secret},
        "original missing": {"user": "alice", "photo": gone.id, "secret": gone.secret},
    }
    answers = {}
    for name, body in asks.items():
        r = magickd.simulate_post("/render", json={**body, "sizes": ["thumb"]}, headers=AUTH)
        answers[name] = (r.status_code, r.text)
    assert len(set(answers.values())) == 1, answers
    status, text = answers["wrong secret"]
    assert status == 404 and json.loads(text) == {"error": "not_found", "message": "no such photo"}


def test_render_client_sends_the_credential(cfg, store):
    """Every caller (ypfs after upload, ypws on a miss, rerender, verify) goes through RenderClient."""
    app = render_app(cfg, store)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, app, server_class=WSGIServer, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        node = {"name": "magickd1", "host": "127.0.0.1", "port": server.server_address[1]}
        tree = cluster_tree(cfg.data_dir.parent)
        tree["cluster"].update(admin_token=TOKEN, url_key="u" * 32, data_dir=str(cfg.data_dir))
        tree["magickd"]["nodes"] = [node]
        good = from_dict(tree)
        rec = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg")
        assert RenderClient(good.magickd, good.cluster.admin_token, timeout=30).render(rec.ref, ["thumb"])[0].width == 100
        with pytest.raises(RenderError) as info:
            RenderClient(good.magickd, "someone-else", timeout=30).render(rec.ref, ["thumb"])
        assert (info.value.status, info.value.code) == (401, "unauthorized")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("component", ["magickd", "ypfs", "ypws"])
def test_metrics_need_the_credential_and_healthz_stays_public(component, cfg, store, magickd):
    if component == "magickd":
        client = magickd
    elif component == "ypfs":
        client = testing.TestClient(ypfs_app(cfg, store, "ypfs1"))
    else:
        client = testing.TestClient(ypws_app(cfg, "ypws1", store, node_cache(cfg, "ypws1")))
    paths = ["/metrics", "/metrics/"] if component == "ypws" else ["/metrics"]
    for path in paths:
        _refusals(client, "GET", path)
        r = client.simulate_get(path, headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), (path, r.text)
    if component != "ypws":  # the trailing slash is no way around the check: not a route at all
        assert client.simulate_get("/metrics/").status_code == 404
    health = client.simulate_get("/healthz")
    assert health.status_code == 200, health.text
    assert health.headers["X-Content-Type-Options"] == "nosniff"


def test_hashproxy_metrics_need_the_credential_with_or_without_a_slash(cfg):
    loop = asyncio.new_event_loop()
    try:
        app = proxy_app(cfg, loop)
        proto = type("P", (), {"client_ip": b"127.0.0.1"})()
        for path in (b"/metrics", b"/metrics/", b"//metrics", b"/metrics//"):
            answers = set()
            for headers in WRONG:
                hdrs = [(b"Host", b"x"), *((k.encode(), v.encode()) for k, v in headers.items())]
                data = app.route(proto, "GET", path, hdrs, "1.1", True).data
                assert data.startswith(b"HTTP/1.1 401 "), (path, data)
                assert b"WWW-Authenticate: Bearer" in data and b'"error":"unauthorized"' in data
                answers.add(data)
            assert len(answers) == 1
            ok = app.route(proto, "GET", path, [(b"Host", b"x"), (b"Authorization", AUTH["Authorization"].encode())],
                           "1.1", True).data
            assert ok.startswith(b"HTTP/1.1 200 ") and b"hashproxy_" in ok, path
        health = app.route(proto, "GET", b"/healthz", [(b"Host", b"x")], "1.1", True).data
        assert health.startswith(b"HTTP/1.1 200 ")
    finally:
        loop.close()
