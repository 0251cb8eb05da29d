"""ypws benchmark: cache-hit throughput per server CPU-second against nginx, and LRU vs S4LRU.

1. Hit path. One ~30 KB thumbnail, served from a warm ypws cache node (real
   gunicorn, ``ypws.workers`` workers, access log on, to a file) and by Debian's
   nginx from disk (as many workers, sendfile, buffered access log), each loaded
   by the same wrk run (2 threads, 32 connections) on this box. The load
   generator shares the cores, so the figure that compares servers is requests
   per CPU-second of the server's own processes (from /proc/PID/stat, the
   process and its children). Goal: ypws >= 0.25x nginx.
2. Eviction. One Zipf trace (alpha 0.9, 100k objects, 1M requests, log-normal
   ~30 KB sizes) replayed through LRU and S4LRU at three cache sizes.

Figures go to bench/results/latest.json under "ypws".
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.results import record, table
from cluster import procs
from cluster.config import dump_toml, load, load_dict

WRK_THREADS = 2
WRK_CONNECTIONS = 32
WRK_SECONDS = 10
WARMUP_SECONDS = 2
TARGET_BYTES = 30_000
GOAL = 0.25


# -- tools -----------------------------------------------------------------------------------
def ensure_tools() -> None:
    """Install Debian's nginx and wrk when root and missing."""
    missing = [pkg for cmd, pkg in (("nginx", "nginx"), ("wrk", "wrk")) if not shutil.which(cmd) and not Path(f"/usr/sbin/{cmd}").exists()]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"missing {', '.join(missing)} and not root: install them to run this benchmark")
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env,
                   timeout=600, stdout=subprocess.DEVNULL)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def run_wrk(url: str, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": requests, "rps": rps, "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
            "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)), "non_2xx": int(errors.group(1)) if errors else 0}


def _ms(value: str) -> float:
    num, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()
    return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def measure(name: str, pid: int, url: str) -> dict:
    run_wrk(url, WARMUP_SECONDS)
    cpu0 = procs.cpu_seconds(pid)
    t0 = time.monotonic()
    res = run_wrk(url, WRK_SECONDS)
    wall = time.monotonic() - t0
    cpu = procs.cpu_seconds(pid) - cpu0
    res.update(server=name, server_cpu_s=round(cpu, 2), wall_s=round(wall, 1),
               req_per_cpu_s=round(res["requests"] / cpu) if cpu else 0.0)
    return res


# -- the two servers ---------------------------------------------------------------------------
def thumbnail_bytes() -> bytes:
    """A JPEG of about 30 KB, from the test corpus."""
    from PIL import Image

    src = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "formats" / "DSCN0010.jpg"
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((500, 500))
        best = b""
        for q in range(95, 20, -3):
            out = io.BytesIO()
            im.save(out, "JPEG", quality=q)
            best = out.getvalue()
            if len(best) <= TARGET_BYTES * 1.05:
                break
    return best


def start_ypws(tmp: Path, body: bytes):
    from storage import open_store
    from storage.ids import new_secret
    from storage.records import PhotoRecord, profile_version

    tree = load_dict()
    port, *_ = procs.free_ports(2)
    tree["cluster"]["data_dir"] = str(tmp / "var")
    tree["storage"]["backend"] = "local"
    tree["ypws"]["nodes"] = [{"name": "bench1", "host": "127.0.0.1", "port": port}]
    tree["ypws"]["access_log"] = str(tmp / "ypws-access.log")
    path = tmp / "yupoo.toml"
    path.write_text(dump_toml(tree))
    cfg = load(path)
    store = open_store(cfg.storage, cfg.local_root)
    rec = PhotoRecord(id="1000000001", owner="bench", secret=new_secret(), format="jpeg", width=500, height=375,
                      bytes=len(body), sha256="0" * 64, uploaded_at=time.time())
    rec.save(store)
    store.put(rec.ref.original_key, body)
    profile = cfg.size("medium")
    store.put(rec.ref.rendition_key("medium", profile_version(profile), "jpeg"), body)
    node = cfg.ypws.nodes[0]
    proc = procs.start_ready(procs.python_module("ypws", "serve", "--node", node.name), f"{node.url}/readyz",
                             log=tmp / "ypws.log", env={"YUPOO_CONFIG": str(path)})
    url = f"{node.url}{rec.ref.size_url_path('medium', 'jpeg')}?v={profile_version(profile)}"
    import urllib.request

    answers = []
    for _ in range(5):  # the default policy's admission may turn a fill away (rarely, at 30 KB)
        with urllib.request.urlopen(url, timeout=10) as resp:
            answers.append(resp.headers["X-Cache"])
            assert resp.read() == body
        if answers[-1] == "HIT":
            break
    assert answers[0] == "MISS" and answers[-1] == "HIT", f"warming ypws: got {answers}"
    return proc, url, cfg.ypws.workers


def start_nginx(tmp: Path, body: bytes, workers: int):
    root = tmp / "nginx"
    (root / "logs").mkdir(parents=True)
    (root / "www" / "photos").mkdir(parents=True)
    (root / "www" / "photos" / "medium.jpg").write_bytes(body)
    port = procs.free_port()
    (root / "nginx.conf").write_text(f"""
worker_processes {workers};
error_log {root}/logs/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    types {{ image/jpeg jpg; }}
    access_log {root}/logs/access.log combined buffer=64k flush=1s;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        etag on;
    }}
}}
""")
    (root / "tmp").mkdir()
    url = f"http://127.0.0.1:{port}/photos/medium.jpg"
    proc = procs.start_ready([nginx_binary(), "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
                             url, timeout=30, log=tmp / "nginx.log")
    return proc, url


def hit_path() -> dict:
    body = thumbnail_bytes()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ypws-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)  # nginx's workers run as an unprivileged user when started as root
        ypws_proc, ypws_url, workers = start_ypws(tmp, body)
        nginx_proc = None
        try:
            nginx_proc, nginx_url = start_nginx(tmp, body, workers)
            rows.append(measure("nginx", nginx_proc.pid, nginx_url))
            rows.append(measure("ypws", ypws_proc.pid, ypws_url))
        finally:
            if nginx_proc is not None:
                procs.stop(nginx_proc)
            procs.stop(ypws_proc)
    by = {r["server"]: r for r in rows}
    ratio = by["ypws"]["req_per_cpu_s"] / by["nginx"]["req_per_cpu_s"]
    print(f"\nCache-hit path: one {len(body)} B JPEG, wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s, "
          f"{workers} server workers each, on {os.cpu_count()} cores shared with wrk")
    print(table(rows, ["server", "requests", "rps", "p50_ms", "p99_ms", "server_cpu_s", "req_per_cpu_s", "non_2xx"]))
    print(f"ypws / nginx per server CPU-second: {ratio:.2f}x (goal >= {GOAL}x: {'met' if ratio >= GOAL else 'NOT met'})")
    return {"body_bytes": len(body), "wrk": f"-t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s",
            "workers": workers, "servers": by, "ratio_per_cpu_s": round(ratio, 3),
            "ratio_rps": round(by["ypws"]["rps"] / by["nginx"]["rps"], 3), "goal": GOAL, "goal_met": ratio >= GOAL}


# -- eviction -------------------------------------------------------------------------------------
def eviction() -> dict:
    from ypws.simulate import compare, object_sizes, zipf_trace

    n_objects, n_requests, alpha = 100_000, 1_000_000, 0.9
    sizes = object_sizes(n_objects, seed=7)
    trace = zipf_trace(n_objects, n_requests, alpha=alpha, seed=7)
    total = sum(sizes)
    rows, figures = [], {}
    for fraction in (0.01, 0.05, 0.10):
        results = {r.policy: r for r in compare(["lru", "s4lru"], int(total * fraction), trace, sizes)}
        lru, s4 = results["lru"], results["s4lru"]
        rows.append({"cache": f"{fraction:.0%} of bytes", "lru_hit": round(lru.hit_ratio, 4),
                     "s4lru_hit": round(s4.hit_ratio, 4), "lru_byte_hit": round(lru.byte_hit_ratio, 4),
                     "s4lru_byte_hit": round(s4.byte_hit_ratio, 4),
                     "gain_points": round(100 * (s4.hit_ratio - lru.hit_ratio), 2)})
        figures[f"{int(fraction * 100)}pct"] = rows[-1]
    print(f"\nEviction on one Zipf trace (alpha {alpha}, {n_objects} objects, {n_requests} requests, "
          f"{total / 1e9:.2f} GB of distinct bytes):")
    print(table(rows, ["cache", "lru_hit", "s4lru_hit", "gain_points", "lru_byte_hit", "s4lru_byte_hit"]))
    return {"trace": {"alpha": alpha, "objects": n_objects, "requests": n_requests}, "by_cache_size": figures}


def main() -> None:
    ensure_tools()
    figures = {"hit_path": hit_path(), "eviction": eviction()}
    record("ypws", figures)


if __name__ == "__main__":
    main()
