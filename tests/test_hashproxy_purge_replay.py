"""PURGE while a node is down: journaled per node, replayed before the node gets traffic again.

The scenarios run real gunicorn ypws nodes (one disk cache each, kept across
their restarts) behind a real ``python -m hashproxy serve`` with two workers;
the journal-sharing one uses the stub nodes of the other hashproxy tests, which
record every PURGE they receive. The journal's own rules are checked in-process,
its sharing between processes with real forked processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
import requests

from hashproxy.health import HealthBoard
from hashproxy.journal import HEADER, PurgeJournal
from hashproxy.ring import Ring
from storage import open_store
from ypws.app import cache_dir

from .hashproxy_support import ProxyCluster
from .helpers import CORPUS, Services, cluster_tree, seed_photo, service_auth, write_config
from .ypws_support import seed_rendition

# -- the journal, in-process -------------------------------------------------------------------------------


def journal(tmp_path: Path, **kw) -> PurgeJournal:
    return PurgeJournal(["n1", "n2"], tmp_path / "hp", **kw)


def test_journal_replays_what_was_queued_and_keeps_what_came_meanwhile(tmp_path):
    j = journal(tmp_path)
    assert not j.pending(0) and not j.snapshot(0)
    assert not j.append(0, ["/photos/a/1_s/small.jpg", "/photos/a/1_s/medium"])
    assert j.pending(0) and not j.pending(1)
    snap = j.snapshot(0)
    assert snap.paths == ("/photos/a/1_s/small.jpg", "/photos/a/1_s/medium") and not snap.flush
    j.append(0, ["/photos/a/2_s/large"])  # queued while the replay runs
    assert not j.commit(0, snap)  # not empty: the new path stays
    assert j.snapshot(0).paths == ("/photos/a/2_s/large",)
    assert j.commit(0, j.snapshot(0)) and not j.pending(0)


def test_journal_overflow_becomes_a_whole_flush(tmp_path):
    j = journal(tmp_path, max_paths=3)
    assert not j.append(0, ["/p/1", "/p/2"])
    assert j.append(0, ["/p/3", "/p/4"])  # past 3 paths: the node's whole cache must go
    snap = j.snapshot(0)
    assert snap.flush and snap.paths == ()
    assert not j.append(0, ["/p/5"])  # after the overflow: kept, a flush under way must not swallow it
    assert j.commit(0, snap) is False and j.snapshot(0).paths == ("/p/5",) and not j.snapshot(0).flush
    by_bytes = journal(tmp_path / "b", max_bytes=100)
    assert by_bytes.append(1, ["/photos/" + "x" * 120])
    assert by_bytes.snapshot(1).flush


def test_an_overflow_during_a_replay_keeps_the_flush(tmp_path):
    j = journal(tmp_path, max_paths=2)
    j.append(0, ["/p/1"])
    snap = j.snapshot(0)
    j.append(0, ["/p/2", "/p/3"])  # overflows while /p/1 is being replayed
    assert not j.commit(0, snap)
    assert j.snapshot(0).flush


def test_a_torn_append_is_ignored(tmp_path):
    j = journal(tmp_path)
    j.append(0, ["/p/1"])
    with open(tmp_path / "hp" / "purge-n1.journal", "ab") as fh:
        fh.write(b"/p/half-writ")  # bytes past the header's length: never acknowledged
    assert j.snapshot(0).paths == ("/p/1",)
    j.append(0, ["/p/2"])
    assert j.snapshot(0).paths == ("/p/1", "/p/2")


def _append_many(directory: str, worker: int) -> None:
    j = PurgeJournal(["n1"], Path(directory))
    for i in range(50):
        j.append(0, [f"/photos/w{worker}/{i}_s/small"])


def test_processes_append_to_one_journal_without_losing_a_path(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path / "hp"), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    snap = PurgeJournal(["n1"], tmp_path / "hp").snapshot(0)
    assert sorted(snap.paths) == sorted(f"/photos/w{w}/{i}_s/small" for w in range(4) for i in range(50))
    assert os.path.getsize(tmp_path / "hp" / "purge-n1.journal") == HEADER.size + sum(len(p) + 1 for p in snap.paths)


def test_one_process_at_a_time_holds_the_replay_lock(tmp_path):
    j = journal(tmp_path)
    fd = j.try_replay_lock(0)
    assert fd is not None
    assert j.try_replay_lock(0) is None  # another open file (as another worker has): refused at once
    other = j.try_replay_lock(1)
    assert other is not None
    j.release(fd)
    j.release(other)
    again = j.try_replay_lock(0)
    assert again is not None
    j.release(again)


def test_a_held_node_comes_back_only_once_released():
    board = HealthBoard(["a", "b"], fail_threshold=1, rampup_seconds=0)
    assert board.hold(0) and not board.is_up(0)
    assert not board.success(0) and not board.is_up(0)  # checks pass, but purges are pending
    board.release(0)
    assert board.success(0) and board.is_up(0)
    board.failure(1)
    assert not board.success(1, revive=False) and not board.is_up(1)  # a passive success never revives
    assert board.success(1)


# -- real ypws nodes behind a real hashproxy ------------------------------------------------------------------


class Cluster:
    """Real ypws nodes (one worker each) and a real hashproxy (two workers) on free loopback ports."""

    def __init__(self, tmp_path: Path, services: Services, ypws: int, hashproxy: dict | None = None):
        self.services = services
        tree = cluster_tree(tmp_path, ypws_nodes=ypws, overrides={
            "ypws": {"workers": 1, "threads": 4, "access_log": "off"},
            "hashproxy": {"workers": 2, "health_interval": 0.2, "health_timeout": 3.0, "fail_threshold": 3,
                          "rampup_seconds": 0.0, **(hashproxy or {})}})
        self.cfg, self.path = write_config(tmp_path, tree)
        self.base = f"http://127.0.0.1:{self.cfg.hashproxy.port}"
        self.names = [n.name for n in self.cfg.ypws.nodes]
        self.ring = Ring(self.names)
        self.store = open_store(self.cfg)
        self.auth = {"Authorization": f"Bearer {self.cfg.cluster.admin_token}"}
        for name in self.names:
            self.start_node(name)
        services.start_module("hashproxy", "hashproxy", "serve", config_path=self.path,
                              health_url=self.base + "/healthz", timeout=30)

    def start_node(self, name: str) -> None:
        url = self.cfg.node("ypws", name).url
        self.services.start_module(name, "ypws", "serve", "--node", name, config_path=self.path,
                                   health_url=url + "/healthz", timeout=60)

    def get(self, path: str) -> requests.Response:
        r = requests.get(self.base + path, timeout=30)
        assert r.status_code == 200, r.text
        return r

    def purge(self, path: str) -> requests.Response:
        return requests.request("PURGE", self.base + path, headers=self.auth, timeout=30)

    def wait_rejoined(self, name: str, timeout: float = 30.0) -> None:
        """Every worker routes to the node again and nothing is pending for it (bounded)."""
        workers = self.cfg.hashproxy.workers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = requests.get(self.base + "/metrics", headers=service_auth(self.cfg), timeout=10).text
            if (sample(text, "hashproxy_node_up", f'node="{name}",role="ypws"') == workers
                    and sample(text, "hashproxy_node_purges_pending", f'node="{name}"') == 0):
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} did not rejoin within {timeout}s")


def sample(text: str, name: str, labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def cached_files(cfg, name: str) -> int:
    entries = cache_dir(cfg, name) / "entries"
    return sum(1 for sub in entries.iterdir() for _ in sub.iterdir())


def owned_size(c: Cluster, rec, node: str) -> str:
    """A size of the photo whose first choice is ``node``."""
    for p in c.cfg.sizes:
        if c.ring.order_names(f"{rec.ref.url_path}/{p.name}")[0] == node:
            return p.name
    raise AssertionError(f"no size of {rec.ref.url_path} is owned by {node}")


@pytest.mark.slow
def test_purge_while_a_node_is_down_is_replayed_before_it_serves_again(tmp_path, services):
    c = Cluster(tmp_path, services, ypws=3)
    rec = seed_photo(c.store, "alice", CORPUS / "formats" / "hopper.jpg")
    old = seed_rendition(c.store, c.cfg, rec, "small")
    url = f"{rec.ref.url_path}/small.jpg"
    owner = c.ring.order_names(f"{rec.ref.url_path}/small")[0]
    assert c.get(url).headers["X-Served-By"] == owner
    r = c.get(url)
    assert (r.headers["X-Served-By"], r.headers["X-Cache"], r.content) == (owner, "HIT", old)

    services.stop(owner)
    new = seed_rendition(c.store, c.cfg, rec, "small", source=CORPUS / "formats" / "DSCN0010.jpg")
    assert new != old  # a re-render: new bytes under the same key
    r = c.purge(rec.ref.url_path + "/")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and body["node_status"][owner] == "queued"
    assert {s for n, s in body["node_status"].items() if n != owner} == {"purged"}
    assert all(x["status"] == "queued" for x in body["results"] if x["node"] == owner)
    assert cached_files(c.cfg, owner) >= 1  # the stale entry is still in the node's disk cache

    c.start_node(owner)
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = c.get(url)
        seen.append((r.headers["X-Served-By"], r.headers["X-Cache"]))
        assert r.content == new, f"stale bytes served after {seen}"  # never the purged entry, not even once
        if r.headers["X-Served-By"] == owner:
            break
        time.sleep(0.05)
    assert seen[-1] == (owner, "MISS"), seen
    c.wait_rejoined(owner)
    assert c.get(url).headers["X-Cache"] == "HIT"


@pytest.mark.slow
def test_journal_overflow_flushes_the_whole_cache_on_rejoin(tmp_path, services):
    c = Cluster(tmp_path, services, ypws=2, hashproxy={"purge_journal_paths": 2})
    node = "ypws1"
    purged = seed_photo(c.store, "bob", CORPUS / "formats" / "hopper.jpg")
    kept = seed_photo(c.store, "bob", CORPUS / "formats" / "hopper.jpg")
    urls = {}
    for rec in (purged, kept):
        size = owned_size(c, rec, node)
        seed_rendition(c.store, c.cfg, rec, size)
        urls[rec.id] = f"{rec.ref.url_path}/{size}.jpg"
        assert c.get(urls[rec.id]).headers["X-Served-By"] == node
        assert c.get(urls[rec.id]).headers["X-Cache"] == "HIT"

    services.stop(node)
    for size in ("square", "thumb"):  # two purges fill the down node's journal of 2...
        r = c.purge(f"{purged.ref.url_path}/{size}")
        assert r.status_code == 202 and not any(x.get("replay") == "flush" for x in r.json()["results"]), r.text
    r = c.purge(purged.ref.url_path + "/")  # ...and the third overflows it
    assert r.status_code == 202, r.text
    mine = [x for x in r.json()["results"] if x["node"] == node]
    assert mine and all(x["status"] == "queued" for x in mine)
    assert any(x.get("replay") == "flush" for x in mine)

    c.start_node(node)
    c.wait_rejoined(node)
    r = c.get(urls[kept.id])  # never purged, yet gone: the whole cache was flushed
    assert (r.headers["X-Served-By"], r.headers["X-Cache"]) == (node, "MISS")

    # the node's own PURGE /photos/ (what the replay sends): admin only, empties the cache
    direct = c.cfg.node("ypws", node).url + "/photos/"
    r = requests.request("PURGE", direct, timeout=30)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert c.get(urls[kept.id]).headers["X-Cache"] == "HIT"
    r = requests.request("PURGE", direct, headers=c.auth, timeout=30)
    assert r.status_code == 200 and r.json()["purged"] >= 1 and r.json()["all"] is True
    assert c.get(urls[kept.id]).headers["X-Cache"] == "MISS"
    assert requests.get(direct, timeout=30).status_code == 404


@pytest.mark.slow
def test_journal_is_shared_by_the_workers_and_survives_a_proxy_restart(tmp_path, services):
    pc = ProxyCluster(tmp_path, services, ypws=2, hashproxy={"workers": 2}).start()
    node = "ypws1"
    services.stop(node)
    auth = {"Authorization": f"Bearer {pc.cfg.cluster.admin_token}"}
    paths = [f"/photos/kim/{i}_abcdef0123/small.jpg" for i in range(20)]
    for path in paths:  # a fresh connection each: the kernel spreads them over both workers
        r = requests.request("PURGE", pc.base + path, headers={**auth, "Connection": "close"}, timeout=10)
        assert r.status_code == 202, r.text
        assert r.json()["node_status"] == {node: "queued", "ypws2": "purged"}

    services.stop("hashproxy")
    pc.start_proxy()
    text = requests.get(pc.base + "/metrics", headers=service_auth(pc.cfg), timeout=10).text
    assert sample(text, "hashproxy_node_purges_pending", f'node="{node}"') == 1

    pc.start_node(node)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = requests.get(pc.base + "/metrics", headers=service_auth(pc.cfg), timeout=10).text
        if (sample(text, "hashproxy_node_up", f'node="{node}",role="ypws"') == 2
                and sample(text, "hashproxy_node_purges_pending", f'node="{node}"') == 0):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{node} did not rejoin")
    # every path queued by either worker of the old proxy, delivered once: one process replayed
    assert sorted(pc.node_stats(node)["purges"]) == sorted(paths)
