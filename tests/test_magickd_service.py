"""A real magickd node (gunicorn, 2 workers) over a real SeaweedFS: the wire contract end to end."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from cluster import procs
from cluster.config import NodeConfig
from magickd.client import RenderClient, RenderError, node_order
from storage import open_store

from .helpers import CORPUS, Services, cluster_tree, seed_photo, write_config
from .magickd_support import decode, has_metadata, start_magickd

pytestmark = [pytest.mark.slow, pytest.mark.s3]
TOKEN = "magickd-test-service-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # /render and /metrics take the cluster's service credential
FORMATS = CORPUS / "formats"


@pytest.fixture(scope="module")
def node(seaweed, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("magickd-svc")
    tree = cluster_tree(tmp, backend="s3", seaweed=seaweed,
                        overrides={"cluster": {"admin_token": TOKEN},
                                   "magickd": {"workers": 2, "queue_size": 1, "queue_wait": 30.0,
                                               # the budget nests around the long queue wait
                                               "request_deadline": 40.0, "client_timeout": 45.0},
                                   "ypws": {"request_deadline": 50.0}})
    cfg, path = write_config(tmp, tree)
    services = Services(tmp)
    n = start_magickd(services, cfg, path)
    store = open_store(cfg.storage, cfg.local_root)
    yield cfg, store, services, n.url
    services.stop_all()
    store.close()


def _metric(url: str, name: str, **labels) -> float:
    text = requests.get(f"{url}/metrics", headers=AUTH, timeout=5).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_health_and_metrics(node):
    cfg, store, services, url = node
    r = requests.get(f"{url}/healthz", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["workers"] == 2
    m = requests.get(f"{url}/metrics", headers=AUTH, timeout=5)
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for name in ("magickd_queue_depth", "magickd_renders_in_progress"):
        assert name in m.text


def test_render_all_sizes_writes_decodable_renditions_to_s3(node):
    cfg, store, services, url = node
    rec = seed_photo(store, "alice", FORMATS / "gps.jpg")
    renditions = RenderClient(cfg.magickd, cfg.cluster.admin_token).render(rec.ref)
    assert [r.size for r in renditions] == [p.name for p in cfg.sizes]
    for r in renditions:
        data = store.get(r.key)
        im = decode(data)
        assert im.format == "JPEG" and im.size == (r.width, r.height) and r.bytes == len(data)
        assert has_metadata(data, im) == []
        assert r.key == rec.ref.rendition_key(r.size, r.version, "jpeg")


def test_render_is_idempotent(node):
    cfg, store, services, url = node
    rec = seed_photo(store, "alice", FORMATS / "DSCN0010.jpg")
    client = RenderClient(cfg.magickd, cfg.cluster.admin_token)
    first = client.render(rec.ref, ["small", "medium"], ["jpeg", "webp"])
    stamps = {r.key: (store.stat(r.key).mtime, store.get(r.key)) for r in first}
    time.sleep(1.1)
    before = _metric(url, "magickd_render_requests_total", outcome="existing")
    second = client.render(rec.ref, ["small", "medium"], ["jpeg", "webp"])
    assert second == first
    assert {r.key: (store.stat(r.key).mtime, store.get(r.key)) for r in second} == stamps
    assert _metric(url, "magickd_render_requests_total", outcome="existing") == before + 1


def test_concurrent_requests_for_one_photo_render_once(node):
    cfg, store, services, url = node
    rec = seed_photo(store, "bob", FORMATS / "iphone_hdr_NO.jpg")
    before = _metric(url, "magickd_renditions_total", size="large", format="jpeg")
    client = RenderClient(cfg.magickd, cfg.cluster.admin_token)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: client.render(rec.ref, ["large", "small"]), range(3)))
    assert results[0] == results[1] == results[2]
    assert _metric(url, "magickd_renditions_total", size="large", format="jpeg") == before + 1


def test_full_queue_answers_429_with_retry_after(node):
    """2 render slots + 1 queued; slow AVIF renders of 6 photos at once: the rest get 429 at once."""
    cfg, store, services, url = node
    recs = [seed_photo(store, "carol", FORMATS / "iphone_hdr_NO.jpg") for _ in range(6)]
    barrier = threading.Barrier(len(recs))

    def post(rec):
        barrier.wait(10)
        return requests.post(f"{url}/render", json={"user": rec.owner, "photo": rec.id, "secret": rec.secret,
                                                    "sizes": ["xlarge"], "formats": ["avif"]}, headers=AUTH, timeout=120)

    with ThreadPoolExecutor(len(recs)) as pool:
        answers = list(pool.map(post, recs))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1, statuses
    assert set(statuses) <= {200, 429}
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.json()["error"] == "busy" and int(busy.headers["Retry-After"]) >= 1


def test_hostile_originals_get_422_and_are_then_refused_quickly_without_killing_workers(node):
    cfg, store, services, url = node
    boots = services.log("magickd1").count("Booting worker")
    for name in ("truncated_jpeg.jpg", "16384x16384.png", "circle.svg", "png_decompression_dos.png",
                 "clusterfuzz-testcase-minimized-file-fuzzer-5752063708495872.heic"):
        rec = seed_photo(store, "mallory", CORPUS / "formats" / "hopper.jpg")
        store.put(rec.ref.original_key, (CORPUS / "hostile" / name).read_bytes())  # swap in the hostile bytes
        body = {"user": rec.owner, "photo": rec.id, "secret": rec.secret, "sizes": None, "formats": None}
        r = requests.post(f"{url}/render", json=body, headers=AUTH, timeout=60)
        if r.status_code == 200:  # damaged metadata only: a clean rendition is acceptable
            assert name == "png_decompression_dos.png"
            continue
        assert r.status_code == 422, (name, r.status_code, r.text)
        assert set(r.json()) == {"error", "message"}
        again = requests.post(f"{url}/render", json=body, headers=AUTH, timeout=60)
        assert again.status_code == 422 and "remembered" in again.json()["message"]
        assert again.json()["error"] == r.json()["error"]
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    good = seed_photo(store, "mallory", FORMATS / "hopper.jpg")
    assert RenderClient(cfg.magickd, cfg.cluster.admin_token).render(good.ref, ["thumb"])[0].width == 100
    assert services.log("magickd1").count("Booting worker") == boots  # no worker died and was replaced


def test_the_client_raises_render_error_on_a_404(node):
    """A definite refusal is RenderError (not retried on other nodes). Every /render refusal
    in-process: test_magickd_requests.py."""
    cfg, store, services, url = node
    rec = seed_photo(store, "dave", FORMATS / "hopper.jpg")
    with pytest.raises(RenderError) as info:
        RenderClient(cfg.magickd, cfg.cluster.admin_token).render(rec.ref.__class__("dave", "123", rec.secret))
    assert info.value.status == 404


def test_client_fails_over_to_the_next_node(node):
    cfg, store, services, url = node
    live = cfg.magickd.nodes[0]
    dead = NodeConfig(name="magickd-dead", host="127.0.0.1", port=procs.free_port())
    magickd = cfg.magickd.__class__(**{**cfg.magickd.__dict__, "nodes": (dead, live)})
    two = cfg.replace(magickd=magickd)
    rec = next(r for r in (seed_photo(store, "erin", FORMATS / "hopper.jpg") for _ in range(20))
               if node_order(two.magickd.nodes, r.id)[0].name == dead.name)
    renditions = RenderClient(two.magickd, two.cluster.admin_token).render(rec.ref, ["thumb"])
    assert decode(store.get(renditions[0].key)).size == (100, 100)
