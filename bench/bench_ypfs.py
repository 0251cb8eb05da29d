"""ypfs upload throughput vs the raw S3 ceiling, into the same SeaweedFS, in one run.

The same ~2 MB real JPEG (an iPhone photo from the corpus), made distinct for each
upload by a comment segment carrying its number (so de-duplication never
short-circuits the work), is
- uploaded through ypfs (multipart POST, auth, validation decode, original + record
  + dedupe entry written to S3), each load-generator thread being one user uploading
  a series of photos, as an upload client does, and
- PUT raw with the minio client to the same SeaweedFS (the ceiling), the same bytes,
at concurrency 1 and 8. Reports MB/s, the ypfs/raw ratio (goal >= 0.6), p50/p99, and
the CPU milliseconds each upload cost ypfs, SeaweedFS and the load generator: with
two cores shared by all three, that sum is what bounds throughput at c=8.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from cluster import procs
from cluster.config import dump_toml, load
from cluster.seaweed import start_seaweed
from storage import open_store
from storage.records import UserRecord

from .results import record, table

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO.parent / "shared" / "corpus" / "formats" / "iphone_hdr_NO.jpg"  # the shared corpus, beside the repo
RUNS = {1: 30, 8: 96}  # uploads per concurrency level
WORKERS = 4


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def numbered(jpeg: bytes, n: int) -> bytes:
    """The JPEG with a comment segment right after SOI naming upload ``n``: distinct bytes, same image."""
    text = f"bench upload {n}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def _measure(fn, jobs: int, concurrency: int, servers: dict[str, int]) -> dict:
    """Throughput and latency of ``jobs`` calls of ``fn``, and the CPU milliseconds per call
    each server (name -> pid, with its children) and this load generator spent."""
    latencies: list[float] = []
    lock = threading.Lock()

    def timed(i: int) -> None:
        t0 = time.perf_counter()
        fn(i)
        with lock:
            latencies.append(time.perf_counter() - t0)

    fn(-1)  # warm-up (connections, bucket, imports)
    cpu_before = {name: procs.cpu_seconds(pid) for name, pid in servers.items()}
    own_before = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(jobs)))
    wall = time.perf_counter() - start
    cpu_ms = {name: (procs.cpu_seconds(pid) - cpu_before[name]) * 1000 / jobs for name, pid in servers.items()}
    cpu_ms["loadgen"] = (time.process_time() - own_before) * 1000 / jobs
    size = PHOTO.stat().st_size
    return {
        "ops": jobs, "seconds": wall, "mib_s": jobs * size / wall / 2**20,
        "p50_ms": statistics.median(latencies) * 1000, "p99_ms": _percentile(latencies, 0.99) * 1000,
        "cpu_ms_per_op": cpu_ms,
    }


def _settle(pid: int, quiet: float = 0.02, timeout: float = 30.0) -> None:
    """Wait until a server tree is idle: /healthz answers from the first worker up while the
    others still import pyvips and friends, and that CPU must not land in the first measurement."""
    deadline = time.monotonic() + timeout
    before = procs.cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = procs.cpu_seconds(pid)
        if now - before < quiet:
            return
        before = now


def main() -> None:
    data = PHOTO.read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ypfs-"))
    weed = start_seaweed(tmp / "weed")
    proc = None
    try:
        port = procs.free_port()
        tree = {
            "cluster": {"data_dir": str(tmp / "var")},
            "storage": {"backend": "s3", "s3": {"endpoint": weed.endpoint, "access_key": weed.access_key,
                                                 "secret_key": weed.secret_key, "bucket": "bench-ypfs"}},
            "ypfs": {"workers": WORKERS, "render_after_upload": False,
                     "nodes": [{"name": "ypfs1", "host": "127.0.0.1", "port": port, "node_id": 1}]},
        }
        cfg_path = tmp / "bench.toml"
        cfg_path.write_text(dump_toml(tree))
        cfg = load(cfg_path)
        store = open_store(cfg.storage, cfg.local_root)
        tokens = []
        for i in range(sum(RUNS) + 1):  # one user per load-generator thread (concurrency), + the warm-up
            user = UserRecord(f"bench{i}")
            tokens.append(user.new_token())
            user.save(store)
        proc = procs.start(procs.python_module("ypfs", "serve", "--node", "ypfs1"), log=tmp / "ypfs.log",
                           env={"YUPOO_CONFIG": str(cfg_path), "PYTHONPATH": str(REPO)})
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        _settle(proc.pid)

        clients = threading.local()  # per load-generator thread: its HTTP session and its user
        users, numbers = iter(range(len(tokens))), iter(range(10**9))  # every upload's bytes are distinct
        counter_lock = threading.Lock()

        def upload(_i: int) -> None:
            with counter_lock:
                i = next(numbers)
                if not hasattr(clients, "session"):
                    clients.session, clients.token = requests.Session(), tokens[next(users)]
            r = clients.session.post(f"http://127.0.0.1:{port}/upload", files={"photo": ("p.jpg", numbered(data, i))},
                                     headers={"Authorization": f"Bearer {clients.token}"}, timeout=60)
            if r.status_code != 201:
                raise RuntimeError(f"upload failed: {r.status_code} {r.text[:200]}")

        def raw_put(_i: int) -> None:  # the bare minio client, as the ceiling is defined
            with counter_lock:
                i = next(numbers)
            body = numbered(data, i)
            store.client.put_object(store.cfg.bucket, f"rawput/{i}.jpg", io.BytesIO(body), len(body),
                                    content_type="image/jpeg")

        rows, figures = [], {}
        servers = {"ypfs": proc.pid, "seaweedfs": weed.proc.pid}
        for conc, jobs in RUNS.items():
            raw = _measure(raw_put, jobs, conc, servers)
            up = _measure(upload, jobs, conc, servers)
            ratio = up["mib_s"] / raw["mib_s"]
            figures[f"c{conc}"] = {"ypfs": up, "raw_put": raw, "ratio": ratio, "goal_ratio": 0.6, "meets_goal": ratio >= 0.6}
            for what, m, r in (("raw minio PUT", raw, ""), ("ypfs upload", up, f"{ratio:.2f}")):
                cpu = m["cpu_ms_per_op"]
                rows.append({"concurrency": conc, "what": what, "MiB/s": m["mib_s"], "p50 ms": m["p50_ms"],
                             "p99 ms": m["p99_ms"], "ratio": r, "CPU ms/op ypfs": cpu["ypfs"],
                             "weed": cpu["seaweedfs"], "loadgen": cpu["loadgen"]})
        print(f"2 MB JPEG ({len(data)} bytes) into SeaweedFS; ypfs with {WORKERS} sync workers; load generator on the same box")
        print(table(rows, ["concurrency", "what", "MiB/s", "p50 ms", "p99 ms", "ratio", "CPU ms/op ypfs", "weed", "loadgen"]))
        print("CPU ms/op: CPU time per upload of each process tree; the box has 2 cores, so at c=8 the sum bounds ops/s")
        record("ypfs_upload", {"photo_bytes": len(data), "ypfs_workers": WORKERS, **figures})
    finally:
        if proc is not None:
            procs.stop(proc)
        weed.stop()


if __name__ == "__main__":
    sys.exit(main())
