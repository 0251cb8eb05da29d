"""The purge log: the store holds every purge; each ypws node applies it from its checkpoint.

In-process first (the log on both stores, the applier against a real disk cache and
ImageService, with an injected clock), then the real cluster on both backends: a
photo deleted and one made private while a cache node is down, through two
different fronts, are never served by that node once it reports ready; a purge
logged while every node is down still applies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from cluster import procs
from cluster.config import from_dict, load_dict
from cluster.locks import try_flock
from cluster.profiles import by_name
from storage.local import LocalStore
from storage.keys import purge_log_floor, purge_log_key, purge_log_time
from storage.purgelog import PurgeLog, check_path
from ypws.diskcache import DiskCache
from ypws.images import ImageRequest, ImageService
from ypws.purgeapply import LOCK_FILE, PurgeApplier, SyncGate, SyncState

from .helpers import CORPUS, REPO, Services, cluster_tree, deep_update, seed_photo, write_config
from .ypws_support import seed_rendition, wait_for

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the log ----------------------------------------------------------------------------------------------


def test_log_keys_sort_by_time_and_a_floor_starts_at_a_time():
    a, b = purge_log_key(1_700_000_000_000, "a"), purge_log_key(1_700_000_060_000, "b")
    assert a < b and purge_log_time(a) == 1_700_000_000_000
    assert purge_log_floor(1_700_000_000_000) < a < purge_log_floor(1_700_000_000_001)
    assert purge_log_time(purge_log_floor(1_700_000_000_001)) == 1_700_000_000_001


@pytest.mark.parametrize("path", ["/photos/", "/photos/al/12_0123456789/", "/photos/al/12_0123456789/small",
                                  "/photos/al/12_0123456789/small.webp", "/photos/al/12_0123456789/original.jpg"])
def test_purge_paths_of_the_grammar_are_accepted(path):
    assert check_path(path) == path


@pytest.mark.parametrize("path", ["/", "/u/alice", "/photos/al/12_0123456789", "/photos/al/12_zz/small",
                                  "/photos/al/12_0123456789/small.exe", "/photos/../x/1_0123456789/",
                                  "/photos/al/12_0123456789/small/x", "/photos/al/12_0123456789/sm all"])
def test_other_paths_are_refused(path):
    with pytest.raises(ValueError):
        check_path(path)


def test_append_read_and_trim_on_each_store(store):
    clock = Clock()
    log = PurgeLog(store, settle=10.0, clock=clock)
    first = log.append(["/photos/al/1_0123456789/"], "delete", "ypfs1")
    clock.t += 90  # the next minute's folder
    second = log.append(["/photos/al/2_0123456789/small", "/photos/"], "admin")
    got = list(log.read(""))
    assert [e.key for e in got] == [first.key, second.key]
    assert got[0].paths == ("/photos/al/1_0123456789/",) and got[0].reason == "delete" and got[0].origin == "ypfs1"
    assert [e.key for e in log.read(purge_log_floor(int(clock.t * 1000)))] == [second.key]
    assert log.trim(int((T0 + 60) * 1000)) == 1
    assert [e.key for e in log.read("")] == [second.key]


def test_a_damaged_entry_is_skipped_not_fatal(tmp_path):
    store = LocalStore(tmp_path)
    log = PurgeLog(store, clock=Clock())
    store.put(purge_log_key(int(T0 * 1000) - 1, "bad"), b"{not json")
    good = log.append(["/photos/"])
    assert [e.key for e in log.read("")] == [good.key]


def test_an_append_slower_than_half_the_settle_time_is_written_again_under_a_fresh_key(tmp_path):
    """A reader may have listed past a slow write's key time: the entry gets a later copy."""
    times = iter([T0, T0 + 6.0, T0 + 6.5, T0 + 7.0])
    log = PurgeLog(LocalStore(tmp_path), settle=10.0, clock=lambda: next(times))
    entry = log.append(["/photos/"])
    keys = [e.key for e in log.read("")]
    assert len(keys) == 2 and keys[-1] == entry.key and purge_log_time(entry.key) == int((T0 + 6.5) * 1000)


# -- the applier against a real cache ---------------------------------------------------------------------


class Node:
    """One ypws node's service and cache over a local store, without HTTP."""

    def __init__(self, tmp_path, store=None, clock=None):
        tree = load_dict()
        tree["cluster"].update(data_dir=str(tmp_path / "var"), admin_token="t", url_key="k")
        self.cfg = from_dict(tree)
        self.store = store or LocalStore(tmp_path / "store")
        self.cache = DiskCache(tmp_path / "cache", 64 << 20)
        cfg = self.cfg
        self.service = ImageService(cfg.ypws, by_name(cfg.sizes), node_name="ypws1", url_key=cfg.cluster.url_key,
                                    public_url=cfg.public_url, render_budget=cfg.magickd.client_timeout,
                                    store=self.store, cache=self.cache)
        self.clock = clock or Clock()
        self.log = PurgeLog(self.store, settle=10.0, clock=self.clock)

    def photo(self):
        rec = seed_photo(self.store, "alice", CORPUS / "formats" / "hopper.jpg")
        seed_rendition(self.store, self.cfg, rec, "small")
        return rec

    def get(self, rec, size="small") -> str:
        reply = self.service.respond(ImageRequest("GET", rec.ref.size_url_path(size, "jpeg")))
        assert reply.status == 200, reply.body
        return reply.cache

    def cached(self, rec) -> bool:
        return self.get(rec) == "HIT"

    def applier(self, service=None, boot="b1") -> PurgeApplier:
        return PurgeApplier(self.log, service or self.service, self.cache.root, boot, interval=0.5,
                            retention=86400.0, clock=self.clock)


def test_a_logged_purge_applies_on_the_next_pass_and_nothing_else_goes(tmp_path):
    node = Node(tmp_path)
    applier = node.applier()
    applier.sync()  # the first pass: no checkpoint yet (an empty cache is flushed: nothing lost)
    gone, kept = node.photo(), node.photo()
    for rec in (gone, kept):
        assert node.get(rec) == "MISS" and node.cached(rec)
    node.clock.t += 1
    node.log.append([gone.ref.purge_path()], "delete")
    assert applier.sync() == 1
    assert node.get(gone) == "MISS"
    assert node.get(kept) == "HIT"


def test_a_crash_mid_batch_skips_nothing(tmp_path):
    node = Node(tmp_path)
    node.applier().sync()
    recs = [node.photo() for _ in range(12)]
    for rec in recs:
        node.get(rec)
    node.clock.t += 1
    for rec in recs:
        node.log.append([rec.ref.purge_path()], "delete")

    class Dies:  # the process is killed after the 5th purge of the batch
        def __init__(self, real):
            self.real, self.cache, self.calls = real, real.cache, 0

        def purge_photo(self, ref):
            self.calls += 1
            if self.calls > 5:
                raise SystemExit("killed")
            return self.real.purge_photo(ref)

    node.clock.t += 0.5
    with pytest.raises(SystemExit):
        node.applier(Dies(node.service)).sync()
    assert sum(node.cached(r) for r in recs) == 7  # 5 applied before the crash
    node.clock.t += 0.5
    node.applier().sync()  # a new process, from the checkpoint left before the batch
    assert not any(node.cached(r) for r in recs)


def test_an_entry_that_became_visible_late_is_still_applied(tmp_path):
    """A write in flight when a pass listed the log: its key is older than the pass, yet it is read."""
    node = Node(tmp_path)
    applier = node.applier()
    applier.sync()
    rec = node.photo()
    node.get(rec)
    late = PurgeLog(node.store, settle=10.0, clock=lambda: node.clock.t - 3.0)  # written 3 s "ago"
    late.append([rec.ref.purge_path()])
    node.clock.t += 0.5
    assert applier.sync() == 1 and node.get(rec) == "MISS"


def test_a_fill_racing_with_the_first_application_is_removed_by_the_second(tmp_path):
    node = Node(tmp_path)
    applier = node.applier()
    applier.sync()
    rec = node.photo()
    node.clock.t += 1
    node.log.append([rec.ref.purge_path()])
    applier.sync()
    node.get(rec)  # a miss that read the old bytes just before the change, filling after the purge
    assert node.cached(rec)
    node.clock.t += 11  # the checkpoint passes the entry: applied once more
    applier.sync()
    assert node.get(rec) == "MISS"


def test_no_checkpoint_or_one_older_than_retention_flushes_the_whole_cache(tmp_path):
    node = Node(tmp_path)
    rec = node.photo()
    node.get(rec)
    applier = node.applier()
    applier.sync()  # a cache without a checkpoint: it cannot say what it missed
    assert applier.flushes == 1 and node.get(rec) == "MISS"
    node.clock.t += 3600
    applier.sync()
    assert applier.flushes == 1 and node.cached(rec)  # an hour behind: within retention, no flush
    node.clock.t += 86400  # down longer than the log keeps entries
    node.applier().sync()
    assert node.get(rec) == "MISS"


def test_appliers_trim_entries_past_retention(tmp_path):
    node = Node(tmp_path)
    old = PurgeLog(node.store, clock=lambda: T0 - 2 * 86400).append(["/photos/"])
    new = node.log.append(["/photos/al/1_0123456789/"])
    node.applier().sync()
    keys = [e.key for e in node.log.read("")]
    assert old.key not in keys and new.key in keys
    assert list((node.store.root / "purgelog").iterdir()) == [node.store._path(new.key).parent]  # no empty folders


def test_one_applier_per_node_holds_the_lock_and_another_takes_over_when_it_stops(tmp_path):
    node = Node(tmp_path)
    a, b = node.applier(), node.applier()
    stop_a, stop_b = threading.Event(), threading.Event()
    threads = [threading.Thread(target=x.run, args=(s,), daemon=True) for x, s in ((a, stop_a), (b, stop_b))]
    threads[0].start()
    assert wait_for(lambda: SyncState.load(node.cache.root) is not None, 5)
    threads[1].start()
    time.sleep(0.3)
    assert try_flock(node.cache.root / LOCK_FILE) is None  # held by one of them
    passes = a.flushes + b.flushes
    assert passes == 1  # only the holder ran (its first pass flushed)
    stop_a.set()
    threads[0].join(5)
    node.clock.t += 1
    node.log.append(["/photos/"])
    assert wait_for(lambda: b.applied >= 1, 5)
    stop_b.set()
    threads[1].join(5)


def test_the_gate_trusts_the_cache_only_after_a_pass_in_this_boot(tmp_path):
    node = Node(tmp_path)
    rec = node.photo()
    gate = SyncGate(node.cache.root, "boot-2", 0.5, clock=node.clock)
    node.service.gate = gate
    reply = node.service.respond(ImageRequest("GET", rec.ref.size_url_path("small", "jpeg")))
    assert reply.status == 503 and dict(reply.headers)["Retry-After"] == "1"
    assert gate.ready() == (False, "purge log not yet applied since the node started")
    node.applier(boot="boot-1").sync()  # a pass of the previous run does not count
    time.sleep(0.15)
    assert not gate.trusted()
    node.applier(boot="boot-2").sync()
    time.sleep(0.15)
    assert gate.trusted() and gate.ready()[0]
    assert node.service.respond(ImageRequest("GET", rec.ref.size_url_path("small", "jpeg"))).status == 200
    node.clock.t += 10  # passes stopped (storage down, applier stuck): not ready, still trusted
    time.sleep(0.15)
    assert not gate.ready()[0] and gate.trusted()


# -- the real cluster -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def cluster(request, tmp_path_factory):
    """One cluster per backend for the module's cluster tests: each has its own user and photos and
    leaves every node running (``world`` restarts any a failed test left down)."""
    tmp_path = tmp_path_factory.mktemp(f"purge-{request.param}")
    seaweed = request.getfixturevalue("seaweed") if request.param == "s3" else None
    tree = cluster_tree(tmp_path, backend=request.param, seaweed=seaweed, ypws_nodes=2,
                        overrides={"ypws": {"workers": 2}, "magickd": {"workers": 1}, "hashproxy": {"workers": 1}})
    cfg, path = write_config(tmp_path, tree)
    second = tmp_path / "front2"
    second.mkdir()
    tree2 = deep_update(tree, {"hashproxy": {"port": procs.free_port()}})  # a second front, same cluster
    _, path2 = write_config(second, tree2)
    services = Services(tmp_path)
    try:
        services.start_module("magickd1", "magickd", "serve", "--node", "magickd1", config_path=path,
                              health_url=f"{cfg.magickd.nodes[0].url}/healthz")
        services.start_module("ypfs1", "ypfs", "serve", "--node", "ypfs1", config_path=path,
                              health_url=f"{cfg.ypfs.nodes[0].url}/healthz")
        for n in cfg.ypws.nodes:
            services.start_module(n.name, "ypws", "serve", "--node", n.name, config_path=path,
                                  health_url=f"{n.url}/readyz")
        services.start_module("front1", "hashproxy", "serve", config_path=path, health_url=f"{cfg.public_url}/healthz")
        services.start_module("front2", "hashproxy", "serve", config_path=path2,
                              health_url=f"http://127.0.0.1:{tree2['hashproxy']['port']}/healthz")
        yield cfg, path, services, f"http://127.0.0.1:{tree2['hashproxy']['port']}"
    finally:
        services.stop_all()


@pytest.fixture
def world(cluster):
    """The module's cluster with every cache node running and ready."""
    cfg, path, services, _ = cluster
    for n in cfg.ypws.nodes:
        proc = services.procs.get(n.name)
        if proc is None or proc.poll() is not None:
            services.procs.pop(n.name, None)
            services.start_module(n.name, "ypws", "serve", "--node", n.name, config_path=path,
                                  health_url=f"{n.url}/readyz")
    return cluster


def _token(path, user):
    out = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "user", "add", user],
                         capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _kill(services, name):
    """kill -9 of a node's whole process group (master and workers): what a crash leaves."""
    proc = services.procs.pop(name)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_a_node_down_during_deletes_and_privacy_changes_never_serves_them_once_ready(world):
    cfg, path, services, front2 = world
    front1 = cfg.public_url
    owner = {"Authorization": f"Bearer {_token(path, 'dora')}"}
    data = (CORPUS / "formats" / "DSCN0010.jpg").read_bytes()
    photos = []
    for i in range(2):
        r = requests.post(f"{front1}/upload", files={"photo": (f"p{i}.jpg", data + bytes([i]))}, headers=owner,
                          timeout=60)
        assert r.status_code == 201, r.text
        photos.append(r.json())
    down = cfg.ypws.nodes[1]
    paths = [p["urls"][s].split("?")[0].replace(cfg.public_url, "") for p in photos for s in ("small", "large")]
    paths += [f"/photos/dora/{p['id']}_{p['secret']}/original.jpg" for p in photos]
    for p in paths:  # cached on the node that will go down (straight at it: its cache, whatever the ring says)
        assert requests.get(down.url + p, timeout=60).status_code == 200
        assert requests.get(down.url + p, timeout=60).headers["X-Cache"] == "HIT"

    _kill(services, down.name)
    gone, hidden = photos
    r = requests.delete(f"{front2}/api/photos/dora/{gone['id']}", headers=owner, timeout=60)  # through front 2
    assert r.status_code == 200, r.text
    assert r.json()["cache"]["status"] == "logged" and r.json()["cache"]["applied"] == "1 of 2 nodes"
    assert "applies from the log" in r.json()["cache"]["nodes"][down.name]
    r = requests.patch(f"{front1}/api/photos/dora/{hidden['id']}", json={"private": True}, headers=owner,
                       timeout=60)  # through front 1
    assert r.status_code == 200 and r.json()["cache"]["status"] == "logged", r.text

    # back with its old cache: not one 200 for those URLs, from its first answer on
    proc = services.start_module(down.name, "ypws", "serve", "--node", down.name, config_path=path)
    seen: list[int] = []
    deadline = time.monotonic() + 60
    ready = False
    while time.monotonic() < deadline and not ready:
        assert proc.poll() is None, services.log(down.name)[-2000:]
        try:
            ready = requests.get(f"{down.url}/readyz", timeout=2).status_code == 200
            seen += [requests.get(down.url + p, timeout=10).status_code for p in paths]
        except requests.ConnectionError:
            time.sleep(0.05)
    assert ready, services.log(down.name)[-2000:]
    seen += [requests.get(down.url + p, timeout=10).status_code for p in paths]
    assert 200 not in seen and 404 in seen and set(seen) <= {404, 503}, seen
    for front in (front1, front2):  # the fronts take the node back after their next health check
        for p in paths:
            codes = [requests.get(front + p, timeout=30).status_code]
            deadline = time.monotonic() + 15
            while codes[-1] != 404 and time.monotonic() < deadline:
                time.sleep(0.2)
                codes.append(requests.get(front + p, timeout=30).status_code)
            assert 200 not in codes and codes[-1] == 404, codes


def test_a_purge_logged_while_every_cache_node_is_down_applies_when_they_return(world):
    cfg, path, services, _ = world
    admin = {"Authorization": f"Bearer {cfg.cluster.admin_token}"}
    owner = {"Authorization": f"Bearer {_token(path, 'enzo')}"}
    r = requests.post(f"{cfg.public_url}/upload", files={"photo": ("p.jpg", (CORPUS / "formats" / "hopper.jpg").read_bytes())},
                      headers=owner, timeout=60)
    assert r.status_code == 201, r.text
    url = r.json()["urls"]["small"].split("?")[0].replace(cfg.public_url, "")
    for n in cfg.ypws.nodes:
        requests.get(n.url + url, timeout=60)
        assert requests.get(n.url + url, timeout=60).headers["X-Cache"] == "HIT"
    for n in cfg.ypws.nodes:
        _kill(services, n.name)
    r = requests.request("PURGE", cfg.public_url + url, headers=admin, timeout=30)
    assert r.status_code == 200 and r.json()["logged"] is True and r.json()["applied"] == "0 of 2 nodes", r.text
    assert requests.request("PURGE", cfg.public_url + url, timeout=30).status_code == 401
    for n in cfg.ypws.nodes:
        services.start_module(n.name, "ypws", "serve", "--node", n.name, config_path=path,
                              health_url=f"{n.url}/readyz")
    for n in cfg.ypws.nodes:
        assert requests.get(n.url + url, timeout=60).headers["X-Cache"] == "MISS"


# -- the writer's push and the CDN hook -------------------------------------------------------------------


class Recorder:
    """A stand-in HTTP server (a ypws node, or a CDN's purge API) answering PURGE with ``status``."""

    def __init__(self, status: int):
        import http.server

        self.requests: list[tuple[str, str]] = []
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PURGE(self):
                rec.requests.append((self.path, self.headers.get("Authorization", "")))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_push_reports_each_node_and_a_401_is_a_failure_not_a_success(tmp_path):
    from storage.purge import Purger

    good, refusing, cdn = Recorder(200), Recorder(401), Recorder(200)
    down = f"http://127.0.0.1:{procs.free_port()}"
    try:
        log = PurgeLog(LocalStore(tmp_path))
        purger = Purger(log, [("a", good.url), ("b", refusing.url), ("c", down)], "tok", origin="test",
                        timeout=1.0, cdn_purge_url=cdn.url + "/purge?url={url}", public_url="https://photos.example")
        path = "/photos/al/12_0123456789/"
        report = purger.purge([path], "admin")
        assert report["logged"] is True and report["status"] == "logged" and report["applied"] == "1 of 3 nodes"
        assert report["nodes"]["a"] == "applied"
        assert report["nodes"]["b"].startswith("answered 401")
        assert report["nodes"]["c"].startswith("unreachable")
        assert good.requests == [(path, "Bearer tok")]
        assert [e.paths for e in log.read("")] == [(path,)]  # committed whatever the push did
        assert cdn.requests == [("/purge?url=https%3A%2F%2Fphotos.example%2Fphotos%2Fal%2F12_0123456789%2F", "")]
        assert report["cdn"] == {path: "purged"}
    finally:
        for r in (good, refusing, cdn):
            r.close()
