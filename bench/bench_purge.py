"""Purge benchmark: how fast a purge leaves every cache node, and what following the log costs.

1. Latency, append -> no node serves it: three real ypws nodes (gunicorn) on a real
   SeaweedFS (S3), one rendition cached on all three (X-Cache: HIT), then its photo
   deleted from storage. The clock starts when the purge is handed to the writer and
   stops when no node serves the rendition any more (each node polled every 5 ms). Two ways: the writer's full path (log, then the
   direct push to every node) and the log alone (no push: the appliers' bound).
2. The applier's cost, in storage requests per node per second: the same
   PurgeApplier a node runs, over the same S3 store wrapped to count calls, idle for
   a while and then while a writer appends 100 purges a second.

Figures go to bench/results/latest.json under "purge".
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.results import record, table
from cluster import procs
from cluster.config import dump_toml, load, load_dict
from cluster.profiles import profile_version
from storage.purge import Purger
from cluster.seaweed import start_seaweed
from storage import open_store
from storage.ids import new_secret
from storage.purgelog import PurgeLog
from storage.records import PhotoRecord
from ypws.diskcache import DiskCache
from ypws.purgeapply import PurgeApplier

NODES = 3
SAMPLES = 40
COST_SECONDS = 10.0
RATE = 100


def served_anywhere(urls: list[str]) -> bool:
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read()
                return True
        except urllib.error.HTTPError as exc:  # 404 once purged: the photo is gone from storage
            exc.read()
    return False


def latency(purger: Purger, store, cfg, push: bool) -> list[float]:
    out = []
    body = (Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "formats" / "hopper.jpg").read_bytes()
    profile = cfg.size("small")
    for i in range(SAMPLES):
        rec = PhotoRecord(id=str(2_000_000_000_000_000_000 + i), owner="bench", secret=new_secret(), format="jpeg",
                          width=128, height=128, bytes=len(body), sha256="0" * 64, uploaded_at=time.time())
        rec.save(store)
        rendition = rec.ref.rendition_key("small", profile_version(profile), "jpeg")
        store.put(rendition, body)
        urls = [f"{n.url}{rec.ref.size_url_path('small', 'jpeg')}" for n in cfg.ypws.nodes]
        for url in urls:
            for _ in range(2):
                urllib.request.urlopen(url, timeout=10).read()
        store.delete(rec.ref.record_key)  # deleted: only the caches still have it (every node: HIT)
        store.delete(rendition)
        assert all(urllib.request.urlopen(u, timeout=10).headers["X-Cache"] == "HIT" for u in urls)
        t0 = time.perf_counter()
        entry = purger.log([rec.ref.purge_path()], "bench")
        if push:
            purger.push(entry)
        deadline = t0 + 10
        while served_anywhere(urls) and time.perf_counter() < deadline:
            time.sleep(0.005)
        out.append((time.perf_counter() - t0) * 1000)
    return out


class Counting:
    """The store a node's applier uses, counting the requests it makes."""

    def __init__(self, store):
        self.store = store
        self.calls = {"list": 0, "get": 0, "delete": 0}

    def list(self, prefix="", start_after=""):
        self.calls["list"] += 1  # one request per page of 1000; the log read here stays within one page
        return self.store.list(prefix, start_after)

    def get(self, key):
        self.calls["get"] += 1
        return self.store.get(key)

    def delete(self, key):
        self.calls["delete"] += 1
        return self.store.delete(key)


def applier_cost(store, tmp: Path, rate: int) -> dict:
    counting = Counting(store)

    class NoService:  # the cost of following the log, not of purging a cache
        cache = DiskCache(tmp / f"cache-{rate}", 1 << 20)

        def purge_photo(self, ref):
            return []

    applier = PurgeApplier(PurgeLog(counting, settle=10.0), NoService(), NoService.cache.root, "bench")
    applier.sync()
    counting.calls = dict.fromkeys(counting.calls, 0)
    stop = threading.Event()
    writer = PurgeLog(store)

    def write() -> None:
        k = 0
        start = time.monotonic()
        while not stop.is_set():
            writer.append([f"/photos/bench/{3_000_000_000 + k}_0123456789/"], "bench")
            k += 1
            time.sleep(max(0.0, start + k / rate - time.monotonic()))

    t = threading.Thread(target=write, daemon=True)
    if rate:
        t.start()
    stop_applier = threading.Event()
    runner = threading.Thread(target=applier.run, args=(stop_applier,), daemon=True)
    runner.start()
    time.sleep(COST_SECONDS)
    stop_applier.set()
    stop.set()
    runner.join(5)
    if rate:
        t.join(5)
    per_s = {k: v / COST_SECONDS for k, v in counting.calls.items()}
    return {"rate": rate, **{f"{k}/s": round(v, 1) for k, v in per_s.items()},
            "requests/s": round(sum(per_s.values()), 1)}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-purge-"))
    weed = start_seaweed(tmp / "seaweed")
    nodes = []
    try:
        tree = load_dict()
        ports = procs.free_ports(NODES)
        tree["cluster"].update(data_dir=str(tmp / "var"), admin_token="bench-admin", url_key="bench-key")
        tree["storage"]["backend"] = "s3"
        tree["storage"]["s3"].update(endpoint=weed.endpoint, access_key=weed.access_key, secret_key=weed.secret_key,
                                     bucket="bench-purge")
        tree["ypws"]["nodes"] = [{"name": f"ypws{i + 1}", "host": "127.0.0.1", "port": p} for i, p in enumerate(ports)]
        tree["ypws"]["access_log"] = "off"
        path = tmp / "yupoo.toml"
        path.write_text(dump_toml(tree))
        cfg = load(path)
        store = open_store(cfg.storage, cfg.local_root)
        for n in cfg.ypws.nodes:
            nodes.append(procs.start_ready(procs.python_module("ypws", "serve", "--node", n.name), f"{n.url}/readyz",
                                           log=tmp / f"{n.name}.log", env={"YUPOO_CONFIG": str(path)}))
        purger = Purger.from_sections(cfg.purge, cfg.ypws.nodes, cfg.cluster.admin_token, cfg.public_url, store,
                                      "bench")
        rows = []
        figures: dict = {}
        for name, push in (("log + direct push", True), ("log only (appliers)", False)):
            ms = latency(purger, store, cfg, push)
            row = {"path": name, "p50 ms": round(pct(ms, 50), 1), "p99 ms": round(pct(ms, 99), 1),
                   "max ms": round(max(ms), 1)}
            rows.append(row)
            figures["latency_push" if push else "latency_log_only"] = row
        print(f"purge latency, append -> no node of {NODES} serves it ({SAMPLES} purges, S3 on SeaweedFS, "
              f"poll_interval {cfg.purge.poll_interval} s):")
        print(table(rows, ["path", "p50 ms", "p99 ms", "max ms"]))
        cost = [applier_cost(store, tmp, 0), applier_cost(store, tmp, RATE)]
        print(f"\napplier cost per node ({COST_SECONDS:.0f} s each; storage requests per second):")
        print(table(cost, ["rate", "list/s", "get/s", "delete/s", "requests/s"]))
        figures["applier_cost"] = cost
        record("purge", figures)
    finally:
        for p in nodes:
            procs.stop(p)
        weed.stop()


if __name__ == "__main__":
    main()
