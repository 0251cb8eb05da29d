"""The admin commands against a real node: rerender after re-tuning (with purges), resume, verify/repair."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading

import pytest

from cluster import procs
from cluster.profiles import by_name, profile_version
from storage.purge import Purger
from magickd.client import RenderClient
from magickd.rerender import Rerenderer, RerenderJob, checkpoint_dir
from storage import StorageUnavailable, open_store
from storage.purgelog import PurgeLog

from .helpers import CORPUS, REPO, Services, cluster_tree, deep_update, seed_photo, write_config
from .magickd_support import decode, start_magickd

pytestmark = pytest.mark.slow
FORMATS = CORPUS / "formats"
PHOTOS = ["hopper.jpg", "gps.jpg", "DSCN0010.jpg", "progressive_3.jpg", "canon_hdr_NO.jpg"]


class PurgeRecorder:
    """A stand-in for the one ypws node, recording the purges pushed to it."""

    def __init__(self):
        self.requests: list[tuple[str, str, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PURGE(self):
                recorder.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One node with the default profiles, and a config with `medium` re-tuned for a second node."""
    tmp = tmp_path_factory.mktemp("magickd-admin")
    recorder = PurgeRecorder()
    port = int(recorder.url.rsplit(":", 1)[1])
    tree = cluster_tree(tmp, overrides={"magickd": {"workers": 2},
                                        "ypws": {"nodes": [{"name": "ypws1", "host": "127.0.0.1", "port": port}]}})
    cfg, path = write_config(tmp, tree)
    services = Services(tmp)
    start_magickd(services, cfg, path)
    store = open_store(cfg.storage, cfg.local_root)
    recs = [seed_photo(store, "alice", FORMATS / name) for name in PHOTOS]
    yield {"cfg": cfg, "path": path, "tree": tree, "tmp": tmp, "store": store, "recs": recs,
           "services": services, "recorder": recorder}
    services.stop_all()
    recorder.close()


def _cli(path, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "magickd", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "YUPOO_CONFIG": str(path), "PYTHONPATH": str(REPO)},
                          timeout=timeout)


def test_verify_finds_missing_and_broken_and_repair_fixes_them(cluster):
    cfg, store, recs = cluster["cfg"], cluster["store"], cluster["recs"]
    client = RenderClient(cfg.magickd, cfg.cluster.admin_token)
    for rec in recs:
        client.render(rec.ref)
    ok = _cli(cluster["path"], "verify", "--no-progress")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"verify: {len(recs)} photo(s), 0 with problems" in ok.stdout
    small = cfg.size("small")
    missing = recs[0].ref.rendition_key("small", profile_version(small), "jpeg")
    broken = recs[1].ref.rendition_key("medium", profile_version(cfg.size("medium")), "jpeg")
    store.delete(missing)
    store.put(broken, store.get(broken)[:500])  # truncated
    bad = _cli(cluster["path"], "verify", "--no-progress")
    assert bad.returncode == 1
    assert "missing" in bad.stdout and missing in bad.stdout and "undecodable" in bad.stdout and broken in bad.stdout
    fixed = _cli(cluster["path"], "verify", "--repair", "--no-progress")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "repaired 2 rendition(s)" in fixed.stdout
    # caches may hold the broken bytes: the repaired sizes are purged (logged, and pushed)
    logged = {p for e in PurgeLog(store).read("") for p in e.paths if e.reason == "verify --repair"}
    assert logged == {recs[0].ref.purge_path("small"), recs[1].ref.purge_path("medium")}
    assert {p for _, p, _ in cluster["recorder"].requests} >= logged
    assert decode(store.get(missing)).size == (128, 128)  # hopper is 128x128: never upscaled
    assert decode(store.get(broken)).size[0] == 500
    assert _cli(cluster["path"], "verify", "--no-progress").returncode == 0


def test_rerender_after_sharpening_change_writes_new_version_purges_and_drops_the_old(cluster):
    cfg, store, recs, tmp = cluster["cfg"], cluster["store"], cluster["recs"], cluster["tmp"]
    client = RenderClient(cfg.magickd, cfg.cluster.admin_token)
    old_version = profile_version(cfg.size("medium"))
    old = {}
    for rec in recs:
        client.render(rec.ref, ["medium"], ["jpeg", "webp"])
        old[rec.id] = store.get(rec.ref.rendition_key("medium", old_version, "jpeg"))

    # re-tune medium's sharpening; the pool is restarted on the new config (a second node here)
    sizes = [dict(s, sharpen_amount=3.0, sharpen_sigma=1.0) if s["name"] == "medium" else s
             for s in cluster["tree"]["sizes"]]
    port = procs.free_port()
    tuned_tree = deep_update(cluster["tree"], {"sizes": sizes,
                                               "magickd": {"nodes": [{"name": "tuned", "host": "127.0.0.1",
                                                                      "port": port}]}})
    tuned_dir = tmp / "tuned"
    tuned_dir.mkdir()
    tuned, tuned_path = write_config(tuned_dir, tuned_tree)
    new_version = profile_version(tuned.size("medium"))
    assert new_version != old_version
    cluster["services"].start_module("tuned", "magickd", "serve", "--node", "tuned", config_path=tuned_path,
                                     health_url=f"http://127.0.0.1:{port}/healthz")
    try:
        dry = _cli(tuned_path, "rerender", "--size", "medium", "--all", "--dry-run", "--no-progress")
        assert dry.returncode == 0 and f"dry run: {len(recs)} photo record(s)" in dry.stdout
        assert not store.exists(recs[0].ref.rendition_key("medium", new_version, "jpeg"))

        cluster["recorder"].requests.clear()
        run = _cli(tuned_path, "rerender", "--size", "medium", "--all", "--concurrency", "3")
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"{len(recs)} re-rendered" in run.stdout
        assert "photo/s" in run.stderr and "rerender medium@" in run.stderr  # the progress bar, with its rate
    finally:
        cluster["services"].stop("tuned")

    for rec in recs:
        new_key = rec.ref.rendition_key("medium", new_version, "jpeg")
        new = store.get(new_key)
        assert new != old[rec.id]
        assert decode(new).size == decode(old[rec.id]).size
        # the old version is gone in every format; the webp variant was re-made at the new version
        assert not store.exists(rec.ref.rendition_key("medium", old_version, "jpeg"))
        assert not store.exists(rec.ref.rendition_key("medium", old_version, "webp"))
        assert decode(store.get(rec.ref.rendition_key("medium", new_version, "webp"))).format == "WEBP"
        # other sizes untouched
        assert store.exists(rec.ref.rendition_key("small", profile_version(cfg.size("small")), "jpeg"))
    token = f"Bearer {cfg.cluster.admin_token}"
    assert sorted(cluster["recorder"].requests) == sorted(
        ("PURGE", f"{rec.ref.url_path}/medium", token) for rec in recs)  # pushed to the node directly
    logged = [p for e in PurgeLog(store).read("") if e.reason == "rerender" for p in e.paths]
    assert sorted(logged) == sorted(rec.ref.purge_path("medium") for rec in recs)  # and committed to the log


class Unwritable:
    """A store whose writes fail as an unreachable S3's would: the purge log cannot commit."""

    def __init__(self, store):
        self.store = store

    def put(self, *args, **kwargs):
        raise StorageUnavailable("storage down (test)")

    def __getattr__(self, name):
        return getattr(self.store, name)


class InterruptingClient:
    """Renders through the real client, then acts like Ctrl-C when the nth photo starts."""

    def __init__(self, real: RenderClient, interrupt_at: int):
        self.real, self.interrupt_at, self.calls = real, interrupt_at, 0

    def render(self, ref, sizes=None, formats=None, timeout=None, force=False):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return self.real.render(ref, sizes, formats, force=force)


def test_rerender_resumes_where_it_stopped_and_reports_failures(cluster):
    cfg, store, recs = cluster["cfg"], cluster["store"], cluster["recs"]
    hostile = seed_photo(store, "alice", FORMATS / "hopper.jpg")
    store.put(hostile.ref.original_key, (CORPUS / "hostile" / "truncated_jpeg.jpg").read_bytes())
    job = RerenderJob(size="thumb", user="alice", concurrency=1, force=True, purge=False)
    sizes, checkpoints = by_name(cfg.sizes), checkpoint_dir(cfg.data_dir)

    def client() -> RenderClient:
        return RenderClient(cfg.magickd, cfg.cluster.admin_token)

    first = Rerenderer(sizes, checkpoints, store, InterruptingClient(client(), 3), None, progress=False)
    summary = first.run(job, restart=True)
    assert summary.interrupted and summary.rendered == 2

    unlogged = Purger(PurgeLog(Unwritable(store)), [("ypws1", f"http://127.0.0.1:{procs.free_port()}")], "t")
    second = Rerenderer(sizes, checkpoints, store, client(), unlogged, progress=False)
    summary = second.run(job)
    assert not summary.interrupted
    assert summary.seen == len(recs) + 1 - 2  # resumed after the two done photos
    assert list(summary.failures) == [hostile.ref.record_key]
    assert summary.failures[hostile.ref.record_key].startswith("422 undecodable")
    assert len(summary.purge_failures) == summary.rendered  # not logged: reported, not fatal
    assert all("purge not logged" in why for why in summary.purge_failures.values())

    third = Rerenderer(sizes, checkpoints, store, client(), None, progress=False).run(job)
    assert third.seen == 0 and list(third.failures) == [hostile.ref.record_key]  # done; failures kept
    store.delete(hostile.ref.record_key)
