"""One metrics route: prometheus-client multiprocess, fed in batches off the hit paths (ypws, hashproxy).

In-process: a ypws hit only adds to a dict, a proxied request to a worker's int; the
prometheus counter moves when they are pushed (the cache's flush, hashproxy's timer, or
a scrape), never per request. Real processes: a scrape of a two-worker ypws node and of
a two-worker hashproxy sums both workers' counts; what a killed worker pushed stays; a
restarted node starts its counters again from zero.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import contextmanager

import pytest
import requests

from cluster import procs
from storage import open_store

from .fake_transport import FakeTransport
from .hashproxy_support import METRICS_AUTH, ProxyCluster, close_proxy_app, image_urls, proxy_app
from .http1_support import responses as parse_responses
from .helpers import CORPUS, cluster_tree, seed_photo
from .ypws_support import access_lines, app_config, image_path, metric, seed_rendition, start_ypws, wait_for

ADMIN = {"Authorization": "Bearer test-admin-token"}


# -- ypws, in-process ---------------------------------------------------------------------------------
def test_ypws_hits_reach_prometheus_in_batches_not_per_request(tmp_path):
    """Between two flushes the prometheus counter does not move however many hits are served;
    the flush adds them all at once, and a scrape flushes first, so it is never behind."""
    from falcon import testing

    from storage.local import LocalStore
    from ypws.app import create_app
    from ypws.diskcache import DiskCache

    cfg = app_config(tmp_path)
    store = LocalStore(cfg.local_root)
    rec = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg")
    now = [1000.0]
    cache = DiskCache(tmp_path / "cache", cfg.ypws.cache_bytes, cfg.ypws.cache_policy, flush_interval=10.0,
                      clock=lambda: now[0], node="ypws1")
    client = testing.TestClient(create_app(cfg, "ypws1", store, cache))
    path = image_path(cfg, rec, "original")

    def counted(name: str) -> float:  # the prometheus counter itself, as it stands (no flush)
        return cache.stats.registry.get_sample_value(f"ypws_{name}_total", {"node": "ypws1"}) or 0.0

    size = len(client.simulate_get(path).content)  # the miss
    cache.flush()
    assert counted("misses") == 1 and counted("hits") == 0 and counted("bytes_served") == size
    for _ in range(50):
        assert client.simulate_get(path).headers["X-Cache"] == "HIT"
    assert counted("hits") == 0 and counted("bytes_served") == size  # 50 hits: no prometheus increment yet
    now[0] += 10.0  # past the flush interval: the next hit sends the batch
    assert client.simulate_get(path).headers["X-Cache"] == "HIT"
    assert counted("hits") == 50 and counted("bytes_served") == 51 * size
    for _ in range(5):
        client.simulate_get(path)
    scrape = client.simulate_get("/metrics", headers=ADMIN)
    assert scrape.status_code == 200 and 'ypws_hits_total{node="ypws1"} 56.0' in scrape.text
    assert metric(scrape.text, "ypws_cache_entries") == 1 and metric(scrape.text, "ypws_origin_seconds_count") == 1
    cache.close()


# -- real two-worker servers ---------------------------------------------------------------------------
@contextmanager
def only_worker(pid: int, workers: list[int]):
    """While inside, every other worker is stopped (SIGSTOP): new connections can only be accepted
    by ``pid``. For a second or two: far inside the supervisors' heartbeat timeouts."""
    others = [w for w in workers if w != pid]
    for w in others:
        os.kill(w, signal.SIGSTOP)
    try:
        yield
    finally:
        for w in others:
            os.kill(w, signal.SIGCONT)


@pytest.mark.slow
def test_ypws_scrape_sums_every_worker_and_keeps_a_killed_workers_counts(tmp_path, services):
    tree = cluster_tree(tmp_path, overrides={"ypws": {"workers": 2},
                                             "cluster": {"admin_token": "test-admin-token"}})
    cfg, _ = start_ypws(services, tmp_path / "n", tree, "ypws1")
    base = cfg.ypws.nodes[0].url
    store = open_store(cfg.storage, cfg.local_root)
    rec = seed_photo(store, "alice", CORPUS / "formats" / "hopper.jpg")
    seed_rendition(store, cfg, rec, "small")
    url = base + image_path(cfg, rec, "small")
    assert requests.get(url, timeout=60).headers["X-Cache"] == "MISS"
    workers = wait_for(lambda: w if len(w := procs.descendants(services.procs["ypws1"].pid)) == 2 else None)
    assert workers, "the node did not start its two workers"
    hits = 0
    for pid, count in zip(workers, (7, 12)):  # each worker serves its own hits, over fresh connections
        with only_worker(pid, workers):
            for _ in range(count):
                assert requests.get(url, timeout=30).headers["X-Cache"] == "HIT"
                hits += 1
    served = wait_for(lambda: {l["pid"] for l in access_lines(services.log("ypws1")) if l["cache"] == "HIT"}
                      if sum(l["cache"] == "HIT" for l in access_lines(services.log("ypws1"))) == hits else None)
    assert served == set(workers)

    def scraped(name: str) -> float:
        return metric(requests.get(f"{base}/metrics", headers=ADMIN, timeout=10).text, name) or 0.0

    # one scrape, answered by one worker, counts both workers' hits (the other's within a flush interval)
    assert wait_for(lambda: scraped("ypws_hits_total") == hits, timeout=10), (scraped("ypws_hits_total"), hits)
    assert scraped("ypws_misses_total") == 1
    # a worker killed outright: what it pushed stays (gunicorn starts another one)
    os.kill(workers[0], signal.SIGKILL)
    assert wait_for(lambda: len(procs.descendants(services.procs["ypws1"].pid)) == 2
                    and workers[0] not in procs.descendants(services.procs["ypws1"].pid), timeout=20)
    assert wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, timeout=20)
    for _ in range(5):
        assert scraped("ypws_hits_total") == hits
    # the node restarted: its counters start again from zero (rate() takes that in its stride)
    assert services.stop("ypws1") == 0
    start_ypws(services, tmp_path / "n", tree, "ypws1")
    assert scraped("ypws_hits_total") == 0
    assert requests.get(url, timeout=30).headers["X-Cache"] == "HIT"  # the cache itself stayed warm
    assert wait_for(lambda: scraped("ypws_hits_total") == 1, timeout=10)


# -- hashproxy, in-process ----------------------------------------------------------------------------
class _OkNode(asyncio.Protocol):
    """A node that answers every request it is sent with a 200 (requests without bodies)."""

    def connection_made(self, transport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            self.buf = self.buf.partition(b"\r\n\r\n")[2]
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_hashproxy_counts_reach_prometheus_in_batches_not_per_request(tmp_path):
    """Proxied requests are counted in the worker's own ints; the prometheus counter moves when
    they are pushed (the worker's timer, or a scrape), never per request."""
    from cluster.config import from_dict
    from hashproxy.protocol import ProxyProtocol

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_OkNode, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    tree = cluster_tree(tmp_path, overrides={"cluster": {"admin_token": "test-admin-token"}})
    tree["ypws"]["nodes"] = [{"name": "ypws1", "host": "127.0.0.1", "port": port}]
    tree["ypfs"]["nodes"] = [{"name": "ypfs1", "host": "127.0.0.1", "port": port, "node_id": 1}]
    app = proxy_app(from_dict(tree), loop)
    proto = ProxyProtocol(app)
    transport = FakeTransport()
    proto.connection_made(transport)
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        for url in image_urls(n):
            proto.data_received(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url.encode())
            sent += 1
            deadline = time.monotonic() + 5
            while len(parse_responses(bytes(transport.out))) < sent and time.monotonic() < deadline:
                loop.run_until_complete(asyncio.sleep(0.005))
        assert [r[0] for r in parse_responses(bytes(transport.out))] == [200] * sent

    def counted() -> float:  # the prometheus counter itself, as it stands
        return app.tallies.registry.get_sample_value("hashproxy_upstream_requests_total",
                                                     {"role": "ypws", "node": "ypws1"}) or 0.0

    try:
        send(20)
        assert counted() == 0  # 20 requests proxied: no prometheus increment yet
        publisher = loop.create_task(app.publish(0.05))  # the worker's timer (every second in a worker)
        loop.run_until_complete(asyncio.sleep(0.2))
        publisher.cancel()
        assert counted() == 20
        send(5)
        assert counted() == 20
        auth = [(b"Host", b"x"), (b"Authorization", ADMIN["Authorization"].encode())]
        scrape = app.route(proto, "GET", b"/metrics", auth, "1.1", True).data
        assert b'hashproxy_upstream_requests_total{node="ypws1",role="ypws"} 25.0' in scrape
        assert b'hashproxy_upstream_in_flight{node="ypws1",role="ypws"} 0.0' in scrape
    finally:
        close_proxy_app(app, server, loop)


# -- hashproxy, a real two-worker proxy ---------------------------------------------------------------
@pytest.mark.slow
def test_hashproxy_scrape_sums_every_worker_and_keeps_a_killed_workers_counts(tmp_path, services):
    pc = ProxyCluster(tmp_path, services, ypws=2, hashproxy={"workers": 2}).start()
    workers = wait_for(lambda: w if len(w := pc.proxy_pids()[1:]) == 2 else None)  # after the supervisor
    assert workers, "the proxy did not start its two workers"
    sessions: dict[int, requests.Session] = {}  # a kept-alive connection to each worker
    for _ in range(100):  # each worker listens on its own SO_REUSEPORT socket: fresh connections spread
        s = requests.Session()
        pid = s.get(pc.base + "/healthz", timeout=10).json()["pid"]
        if pid in sessions:
            s.close()
        sessions.setdefault(pid, s)
        if len(sessions) == 2:
            break
    assert set(sessions) == set(workers)
    sent = 0
    for count, s in zip((7, 12), sessions.values()):  # each worker proxies its own requests
        for url in image_urls(count):
            assert s.get(pc.base + url, timeout=10).status_code == 200
            sent += 1
        s.close()

    def requests_total() -> float:
        text = requests.get(pc.base + "/metrics", headers=METRICS_AUTH, timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("hashproxy_upstream_requests_total{") and 'role="ypws"' in line)

    # each worker pushes every second: one scrape, from either worker, sums both
    assert wait_for(lambda: requests_total() == sent, timeout=10), (requests_total(), sent)
    os.kill(workers[0], signal.SIGKILL)  # the supervisor starts another; what the dead one pushed stays
    assert wait_for(lambda: len(pc.proxy_pids()) == 3 and workers[0] not in pc.proxy_pids(), timeout=10)
    for _ in range(5):
        assert requests_total() == sent
