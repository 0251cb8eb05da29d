"""Readiness: /readyz on every component (``/healthz`` stays liveness), hashproxy routing by it,
and storage failures answered 503 + Retry-After on every endpoint, never a 500, a hang or a 504.

In-process (falcon TestClient) against a store that cannot be reached (a real S3 client on a
closed port), then real processes: stub nodes behind a real hashproxy, and a real SeaweedFS
stopped under a running ypfs, ypws, magickd and hashproxy, then started again.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import falcon.testing
import pytest
import requests
from PIL import Image

from cluster import procs
from cluster.seaweed import start_seaweed
from hashproxy.balancer import HashBalancer, NodeSet
from hashproxy.health import HealthBoard
from hashproxy.loads import SharedCounters
from storage import open_store
from storage.local import LocalStore
from storage.readiness import StorageProbe
from storage.s3 import S3Store
from storage.records import UserRecord
from ypfs.app import create_app as ypfs_app
from ypws.app import create_app as ypws_app

from .hashproxy_support import ProxyCluster, image_urls
from .helpers import CORPUS, cluster_tree, restart_seaweed, seed_photo, service_auth, write_config
from .magickd_support import render_app, render_service
from .ypws_support import node_cache

PHOTO = CORPUS / "formats" / "hopper.jpg"


def dead_s3_config(tmp_path, **overrides):
    """A cluster config whose S3 endpoint is a closed loopback port: every storage call is refused."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    tree = cluster_tree(tmp_path, overrides=overrides)
    tree["storage"]["backend"] = "s3"
    tree["storage"]["s3"].update(endpoint=f"127.0.0.1:{procs.free_port()}", access_key="k", secret_key="sekret-never-shown",
                                 retries=2, retry_backoff=0.05)
    return write_config(tmp_path, tree)[0]


def assert_storage_503(r) -> None:
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers.get("Retry-After"), r.headers
    assert r.json["error"] in ("storage_unavailable", "unavailable", "render_unavailable"), r.json


# -- the storage probe ---------------------------------------------------------------------------------


def test_the_storage_probe_is_cached_and_bounded(tmp_path):
    cfg = dead_s3_config(tmp_path)
    now = [100.0]
    probe = StorageProbe(open_store(cfg.storage, cfg.local_root), ttl=1.0, timeout=1.0, clock=lambda: now[0])
    assert probe.status(wait=False) == (True, "")  # nothing known yet: an event loop is not made to wait
    t0 = time.monotonic()
    ok, reason = probe.status()
    assert not ok and reason.startswith("storage unreachable") and cfg.storage.s3.endpoint in reason
    assert cfg.storage.s3.secret_key not in reason
    assert time.monotonic() - t0 < 2.0
    # within the ttl the answer is the cached one, even once storage would answer
    probe.store = LocalStore(tmp_path / "store")
    assert probe.status() == (ok, reason)
    now[0] += 1.5
    assert probe.status() == (True, "")


# -- ypfs ------------------------------------------------------------------------------------------------


def test_ypfs_readyz_and_every_endpoint_answer_503_when_storage_is_down(tmp_path):
    cfg = dead_s3_config(tmp_path)
    client = falcon.testing.TestClient(ypfs_app(cfg, open_store(cfg.storage, cfg.local_root), "ypfs1", next_id=lambda: str(10**18 + 1)))
    assert client.simulate_get("/healthz").status_code == 200  # liveness touches nothing
    r = client.simulate_get("/readyz")
    assert r.status_code == 503 and r.headers["Retry-After"] and r.headers["Cache-Control"] == "no-store"
    assert r.json["error"] == "not_ready" and r.json["reasons"][0].startswith("storage unreachable")
    assert cfg.storage.s3.secret_key not in r.text and cfg.cluster.admin_token not in r.text
    auth = {"Authorization": "Bearer alice.sometoken"}
    # the token check is the first storage read of these: it used to escape as a 500
    body, ctype = _multipart(PHOTO)
    assert_storage_503(client.simulate_post("/upload", body=body, headers={**auth, "Content-Type": ctype}))
    photo = f"/api/photos/alice/{10**18 + 7}"
    assert_storage_503(client.simulate_patch(photo, json={"title": "x"}, headers=auth))
    assert_storage_503(client.simulate_delete(photo, headers=auth))
    assert_storage_503(client.simulate_get(photo))
    assert_storage_503(client.simulate_get("/api/users/alice/photos"))  # the listing used to be a 500 too


def _multipart(path) -> tuple[bytes, str]:
    boundary = "readinessboundary"
    data = path.read_bytes()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_ypfs_is_ready_with_its_store(tmp_path):
    cfg = write_config(tmp_path, cluster_tree(tmp_path))[0]
    client = falcon.testing.TestClient(ypfs_app(cfg, open_store(cfg.storage, cfg.local_root), "ypfs1", next_id=lambda: str(10**18 + 1)))
    r = client.simulate_get("/readyz")
    assert r.status_code == 200 and r.json == {"status": "ready", "service": "ypfs", "node": "ypfs1"}


# -- magickd ---------------------------------------------------------------------------------------------


def test_magickd_readyz_storage_and_a_full_queue(tmp_path):
    cfg = write_config(tmp_path, cluster_tree(tmp_path, overrides={"magickd": {"workers": 1, "queue_size": 1}}))[0]
    store = open_store(cfg.storage, cfg.local_root)
    service = render_service(cfg, store)
    client = falcon.testing.TestClient(render_app(cfg, store, service=service))
    assert client.simulate_get("/readyz").json["status"] == "ready"
    with ExitStack() as held:  # every ticket taken: a request now would get a 429
        for _ in range(2):
            held.enter_context(service.admission.ticket())
        r = client.simulate_get("/readyz")
        assert r.status_code == 503 and r.json["reasons"] == ["render queue full: every render slot and queue place is taken"]
        assert client.simulate_get("/healthz").status_code == 200
    assert client.simulate_get("/readyz").status_code == 200

    down = dead_s3_config(tmp_path / "down")
    client = falcon.testing.TestClient(render_app(down, open_store(down.storage, down.local_root)))
    assert client.simulate_get("/healthz").status_code == 200
    r = client.simulate_get("/readyz")
    assert r.status_code == 503 and r.json["reasons"][0].startswith("storage unreachable")
    r = client.simulate_post("/render", json={"user": "alice", "photo": str(10**18 + 3), "secret": "abcdef0123"},
                             headers=service_auth(down))
    assert_storage_503(r)


# -- ypws ------------------------------------------------------------------------------------------------


def test_ypws_ready_and_storage_failures_on_misses_pages_and_galleries(tmp_path):
    cfg = write_config(tmp_path, cluster_tree(tmp_path))[0]
    store = open_store(cfg.storage, cfg.local_root)
    rec = seed_photo(store, "alice", PHOTO)
    app = ypws_app(cfg, "ypws1", store, node_cache(cfg, "ypws1"))
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/readyz").json == {"status": "ready", "service": "ypws", "node": "ypws1"}

    down = dead_s3_config(tmp_path / "down")
    app = ypws_app(down, "ypws1", open_store(down.storage, down.local_root), node_cache(down, "ypws1"))
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/healthz").status_code == 200
    r = client.simulate_get("/readyz")
    assert r.status_code == 503 and r.json["error"] == "not_ready"
    assert r.json["reasons"][0].startswith("storage unreachable")
    base = f"/photos/alice/{rec.id}_{rec.secret}"
    assert_storage_503(client.simulate_get(f"{base}/small.jpg"))
    assert_storage_503(client.simulate_get(f"{base}/original.jpg"))
    assert_storage_503(client.simulate_get("/u/alice"))
    assert_storage_503(client.simulate_get(f"/p/alice/{rec.id}"))


# -- hashproxy: health board and routing -----------------------------------------------------------------


def test_health_board_routes_to_ready_nodes_and_falls_back_to_live_ones():
    board = HealthBoard(["a", "b", "c"], fail_threshold=2, rampup_seconds=0)
    assert board.up_nodes == (0, 1, 2) and board.steady()
    assert board.set_ready(1, False) and not board.set_ready(1, False)
    assert board.up_nodes == (0, 2) and not board.routable(1) and board.is_up(1) and not board.steady()
    board.set_ready(0, False)
    board.set_ready(2, False)
    assert board.up_nodes == (0, 1, 2)  # none ready: every live node, rather than nothing
    assert not any(board.is_ready(i) for i in range(3))
    board.failure(2)
    board.failure(2)
    assert board.up_nodes == (0, 1)  # a dead node is never a fallback
    board.set_ready(1, True)
    assert board.up_nodes == (1,) and board.routable(1) and not board.routable(0)
    assert board.snapshot()["b"]["ready"] is True


def test_hash_balancer_moves_only_the_unready_nodes_urls():
    names = ("ypws1", "ypws2", "ypws3")
    board = HealthBoard(names, rampup_seconds=0)
    nodes = NodeSet("ypws", names, tuple(("127.0.0.1", 1) for _ in names), board,
                    SharedCounters(1, list(names)).role(0, 0, 3))
    balancer = HashBalancer(nodes, factor=0)
    keys = [u.rsplit(".", 1)[0] for u in image_urls(300)]
    before = {k: balancer.choose(k)[0] for k in keys}
    board.set_ready(0, False)
    after = {k: balancer.choose(k)[0] for k in keys}
    assert all(after[k] != 0 for k in keys)
    assert all(after[k] == before[k] for k in keys if before[k] != 0)  # the others' URLs stay where they were
    assert any(before[k] == 0 for k in keys)
    board.set_ready(0, True)
    assert {k: balancer.choose(k)[0] for k in keys} == before


def _served_by(base: str, urls: list[str]) -> dict[str, str]:
    out = {}
    for u in urls:
        r = requests.get(base + u, timeout=10)
        assert r.status_code == 200, r.text
        out[u] = r.headers["X-Served-By"]
    return out


def _wait(predicate, timeout: float = 10.0, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def _wait_status(call, status: int, timeout: float = 10.0):
    """The first answer of ``call()`` with ``status`` (a Response is falsy when not ok: kept in a list)."""
    return _wait(lambda: [r for r in [call()] if r.status_code == status], timeout)[0]


def _set_ready(pc: ProxyCluster, name: str, ready: bool) -> None:
    requests.post(pc.cfg.node("ypws", name).url + f"/_ready/{int(ready)}", timeout=5).raise_for_status()


def test_hashproxy_routes_by_readiness_and_reports_its_own(tmp_path, services):
    pc = ProxyCluster(tmp_path, services, ypws=3).start()
    urls = image_urls(60, user="rita")
    pinned = _served_by(pc.base, urls)
    assert set(pinned.values()) == {"ypws1", "ypws2", "ypws3"}
    r = requests.get(pc.base + "/readyz", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ready"

    _set_ready(pc, "ypws1", False)  # live but not ready: no new traffic while others are ready
    def without_ypws1():
        served = _served_by(pc.base, urls)
        return served if "ypws1" not in served.values() else None

    now = _wait(without_ypws1)
    assert all(now[u] == pinned[u] for u in urls if pinned[u] != "ypws1")
    assert requests.get(pc.base + "/readyz", timeout=5).status_code == 200

    for name in ("ypws2", "ypws3"):
        _set_ready(pc, name, False)
    # none ready: the proxy falls back to the live nodes (pinning as before) and says it is not ready
    r = _wait_status(lambda: requests.get(pc.base + "/readyz", timeout=5), 503)
    assert r.json()["reasons"] == ["no ready ypws node"] and r.headers["Retry-After"] == "1"
    assert requests.get(pc.base + "/healthz", timeout=5).status_code == 200
    _wait(lambda: _served_by(pc.base, urls) == pinned)

    for name in ("ypws1", "ypws2", "ypws3"):
        _set_ready(pc, name, True)
    _wait(lambda: requests.get(pc.base + "/readyz", timeout=5).status_code == 200)
    _wait(lambda: _served_by(pc.base, urls) == pinned)  # every worker has seen every node ready again


def test_a_nodes_own_503_answers_do_not_take_it_out(tmp_path, services):
    """A 503 is a live node's deliberate answer (storage down...): /readyz decides, not the request path.
    (No active check in the test's time, so nothing would bring a node taken out back.)"""
    pc = ProxyCluster(tmp_path, services, ypws=3, hashproxy={"health_interval": 60.0, "workers": 1}).start()
    with requests.Session() as s:  # pages rotate over the nodes: each gets several in a row
        for _ in range(30):
            assert s.get(pc.base + "/_status/503", timeout=5).status_code == 503
        assert s.get(pc.base + "/_status/500", timeout=5).status_code == 500  # other 5xx still count
    health = requests.get(pc.base + "/healthz", timeout=5).json()["nodes"]["ypws"]
    assert all(state["up"] for state in health.values()), health
    assert sum(state["fails"] for state in health.values()) == 1, health


# -- the real thing: SeaweedFS stopped under a running cluster -------------------------------------------


def _answers_within(fn, limit: float):
    t0 = time.monotonic()
    r = fn()
    took = time.monotonic() - t0
    assert took < limit, f"took {took:.1f}s"
    return r


@pytest.mark.slow
@pytest.mark.s3
def test_storage_down_and_back_under_a_running_cluster(tmp_path, services):
    weed = start_seaweed(tmp_path / "weed")
    try:
        _storage_down_and_back(tmp_path, services, weed)
    finally:
        services.stop_all()
        weed.stop()


def _storage_down_and_back(tmp_path, services, weed) -> None:
    tree = cluster_tree(tmp_path, backend="s3", seaweed=weed, ypws_nodes=2, overrides={
        # two ypfs workers: the upload and the delete against the hung store wait side by side
        "ypfs": {"workers": 2}, "ypws": {"workers": 1}, "magickd": {"workers": 1},
        "hashproxy": {"workers": 1, "health_interval": 0.3, "health_timeout": 3.0, "fail_threshold": 3,
                      "rampup_seconds": 0.0},
        "storage": {"s3": {"deadline": 3.0}},  # a hung store costs each call 3 s here, not 8
    })
    cfg, path = write_config(tmp_path, tree)
    # a fresh SeaweedFS's first writes allocate its volumes, which can take seconds: seed patiently
    store = S3Store(dataclasses.replace(cfg.storage.s3, deadline=60.0))
    user = UserRecord("nina")
    token = user.new_token()
    user.save(store)
    auth = {"Authorization": f"Bearer {token}"}
    for role in ("magickd", "ypfs", "ypws"):
        for node in getattr(cfg, role).nodes:
            services.start_module(node.name, role, "serve", "--node", node.name, config_path=path,
                                  health_url=f"{node.url}/healthz")
    services.start_module("hashproxy", "hashproxy", "serve", config_path=path, health_url=f"{cfg.public_url}/healthz")
    base = cfg.public_url
    ready_urls = [f"{n.url}/readyz" for n in (*cfg.ypfs.nodes, *cfg.ypws.nodes, *cfg.magickd.nodes)] + [f"{base}/readyz"]
    _wait(lambda: all(requests.get(u, timeout=5).status_code == 200 for u in ready_urls), timeout=20)

    up = requests.post(f"{base}/upload", files={"photo": ("p.jpg", PHOTO.read_bytes())}, headers=auth, timeout=60)
    assert up.status_code == 201, up.text
    photo = up.json()
    hit = requests.get(photo["urls"]["small"], timeout=60)
    assert hit.status_code == 200 and Image.open(io.BytesIO(hit.content)).size[0] <= 240

    # hung: SeaweedFS frozen (SIGSTOP). The kernel still accepts connections, nothing answers:
    # issue 11's upload that hung 60 s, lost its worker and got a 504 from the proxy
    api = f"{base}/api/photos/nina/{photo['id']}"
    os.kill(weed.proc.pid, signal.SIGSTOP)
    try:
        hung_calls = {
            "upload": lambda: requests.post(f"{base}/upload", files={"photo": ("p.jpg", PHOTO.read_bytes())},
                                            headers=auth, timeout=60),
            "delete": lambda: requests.delete(api, headers=auth, timeout=60),
            "ypws miss": lambda: requests.get(photo["urls"]["large"], timeout=60),
            "magickd render": lambda: requests.post(f"{cfg.magickd.nodes[0].url}/render", json={
                "user": "nina", "photo": photo["id"], "secret": photo["secret"], "sizes": ["large"]}, headers=service_auth(cfg), timeout=60),
        }
        with ThreadPoolExecutor(4) as pool:  # side by side, as clients would: each waits out the hung store once
            hung = dict(zip(hung_calls, pool.map(lambda f: _answers_within(f, 15.0), hung_calls.values())))
        for what, r in hung.items():
            assert r.status_code == 503 and r.headers.get("Retry-After"), (what, r.status_code, r.text[:300])
        hung_hit = requests.get(photo["urls"]["small"], timeout=10)
        assert hung_hit.status_code == 200 and hung_hit.content == hit.content
    finally:
        os.kill(weed.proc.pid, signal.SIGCONT)
    _wait(lambda: all(requests.get(u, timeout=5).status_code == 200 for u in ready_urls), timeout=30)
    assert requests.get(api, timeout=30).status_code == 200  # the DELETE that failed deleted nothing

    weed.stop()  # SeaweedFS gone: master, volume, filer and S3 gateway
    t0 = time.monotonic()
    for u in ready_urls:
        r = _wait_status(lambda: requests.get(u, timeout=5), 503, timeout=15)
        assert r.headers["Retry-After"] and r.json()["error"] == "not_ready", (u, r.text)
        assert weed.secret_key not in r.text and cfg.cluster.admin_token not in r.text
    assert time.monotonic() - t0 < 15
    for n in (*cfg.ypfs.nodes, *cfg.ypws.nodes, *cfg.magickd.nodes):
        assert requests.get(f"{n.url}/healthz", timeout=5).status_code == 200  # alive all the same
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200

    # every endpoint: 503 + Retry-After, within a few seconds, never a 500 or a 504
    calls = {
        "upload": lambda: requests.post(f"{base}/upload", files={"photo": ("p.jpg", PHOTO.read_bytes())},
                                        headers=auth, timeout=30),
        "patch": lambda: requests.patch(api, json={"title": "dark"}, headers=auth, timeout=30),
        "delete": lambda: requests.delete(api, headers=auth, timeout=30),
        "listing": lambda: requests.get(f"{base}/api/users/nina/photos", timeout=30),
        "photo api": lambda: requests.get(api, timeout=30),
        "ypws miss": lambda: requests.get(photo["urls"]["medium"], timeout=30),
        "gallery": lambda: requests.get(f"{base}/u/nina", timeout=30),
        "magickd render": lambda: requests.post(f"{cfg.magickd.nodes[0].url}/render", json={
            "user": "nina", "photo": photo["id"], "secret": photo["secret"], "sizes": ["large"]}, headers=service_auth(cfg), timeout=30),
    }
    with ThreadPoolExecutor(4) as pool:  # side by side, as clients would
        answers = dict(zip(calls, pool.map(lambda f: _answers_within(f, 15.0), calls.values())))
    for what, r in answers.items():
        assert r.status_code == 503, (what, r.status_code, r.text[:300])
        assert r.headers.get("Retry-After"), (what, r.headers)
        assert json.loads(r.content)["error"], what
    # the cached size is still served: no ypws node is ready, so the proxy falls back to the live ones
    again = requests.get(photo["urls"]["small"], timeout=10)
    assert again.status_code == 200 and again.content == hit.content and again.headers["X-Cache"] == "HIT"
    for name in ("ypfs1", "ypws1", "ypws2", "magickd1"):
        assert "Traceback" not in services.log(name) and "WORKER TIMEOUT" not in services.log(name), name

    # SeaweedFS back (same data, S3 port and keys): everything is ready again and works
    restart_seaweed(weed)
    _wait(lambda: all(requests.get(u, timeout=5).status_code == 200 for u in ready_urls), timeout=30)
    r = _wait_status(lambda: requests.patch(api, json={"title": "light"}, headers=auth, timeout=30), 200, timeout=20)
    assert r.json()["title"] == "light"
    medium = requests.get(photo["urls"]["medium"], timeout=60)
    assert medium.status_code == 200 and Image.open(io.BytesIO(medium.content)).format == "JPEG"
    store.close()
