"""The project's fault-injection suite: a mixed load through the front while processes die.

The whole cluster runs under `python -m cluster run` (its supervisor restarts what
dies), on each storage backend; the S3 one on a SeaweedFS of its own, so it can be
killed too. A load thread uploads, reads and deletes through hashproxy the whole time.
Then, one at a time: kill -9 of a worker and of the master of every process kind
(ypfs, ypws, magickd, hashproxy), of SeaweedFS (restarted after 2 s), a torn cache
entry, and (as root) a full cache disk. After each: every acknowledged upload is in
storage byte for byte, every 200 decodes and matches its ETag, no deleted photo is
served, requests failed only with 502/503 (never a 500), the cluster serves again
(recovery time recorded), and at the end no process is left over. A table per
scenario is printed: acked / lost / corrupt / failed by status / recovery seconds.
Bounded: every wait has a deadline, the whole module a few minutes.

The load phases are counted in requests, not seconds: the first fault comes once some
photos are acknowledged and read, and each scenario ends once the load has made
``AFTER_RECOVERY`` more requests through the recovered cluster; every scenario's window
must hold at least that many requests, so a window too short to say anything fails.
The scenarios whose fault is in the front or on the cache disk (hashproxy kills, torn
cache entries, a full cache disk; the store is only read, as by any miss) do not depend
on the store: in `make test` they run on the local backend only; every scenario that
kills a process writing to or following the store (ypfs, ypws with its purge log,
magickd) or the store itself (SeaweedFS) runs on both. The soak (YUPOO_FAULT_ROUNDS > 1)
runs every scenario on both.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import xxhash
from PIL import Image

from cluster import procs
from cluster.seaweed import start_seaweed
from storage import NotFound, open_store
from storage.keys import record_key
from storage.records import UserRecord

from .helpers import REPO, cluster_tree, restart_seaweed, write_config

pytestmark = pytest.mark.slow

OK_FAILURES = {502, 503}
RECOVERY_LIMIT = 30.0
#: requests the load makes through the recovered cluster before the next fault (the rejoin)
AFTER_RECOVERY = 20
#: before the first fault: photos acknowledged, and requests made, so there is something to lose
WARM_ACKED, WARM_REQUESTS = 6, 30
#: scenarios that do not touch the store: run on the local backend only (module docstring)
STORE_INDEPENDENT = {"hashproxy worker", "hashproxy master", "torn cache entries", "full cache disk"}
#: how many times the scenarios repeat: 1 in `make test`; `make bench` runs a soak (bench/bench_faults.py)
ROUNDS = int(os.environ.get("YUPOO_FAULT_ROUNDS", "1"))


def jpeg(n: int) -> bytes:
    rng = random.Random(n)
    im = Image.frombytes("RGB", (96, 64), rng.randbytes(96 * 64 * 3))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=80)
    return buf.getvalue()


@dataclass
class Ledger:
    """What the load saw: acknowledged uploads, deletes, and every answer's status."""

    acked: dict[str, tuple[str, str]] = field(default_factory=dict)   # id -> (original key, sha256)
    phase: str = "warm-up"                                            # the scenario under way
    acked_in: dict[str, str] = field(default_factory=dict)            # id -> the scenario it was acked in
    urls: dict[str, str] = field(default_factory=dict)                # id -> small rendition URL
    deleted: dict[str, str] = field(default_factory=dict)             # id -> small URL of a deleted photo
    #: DELETEs whose answer was lost (the node died mid-request): done or not, both are right
    maybe_deleted: set[str] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    served_deleted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self) -> tuple[int, int, int]:
        with self.lock:
            return len(self.statuses), len(self.corrupt), len(self.served_deleted)

    def wait_for(self, what: str, predicate, timeout: float = 30.0) -> None:
        """Poll (bounded) until ``predicate()`` holds, under the lock; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if predicate():
                    return
            assert time.monotonic() < deadline, f"the load did not get {what} within {timeout:.0f} s"
            time.sleep(0.05)


class Load(threading.Thread):
    """One client doing what a photo site's clients do, in a loop, until stopped."""

    def __init__(self, base: str, token: str, ledger: Ledger):
        super().__init__(daemon=True)
        self.base, self.ledger, self.stop = base, ledger, threading.Event()
        self.session = requests.Session()
        self.auth = {"Authorization": f"Bearer {token}"}
        self.n = 0

    def call(self, method: str, url: str, **kw) -> requests.Response | None:
        try:
            r = self.session.request(method, url, timeout=30, **kw)
        except requests.RequestException:
            with self.ledger.lock:
                self.ledger.statuses.append(0)  # the connection failed: a visible failure, never wrong bytes
            return None
        with self.ledger.lock:
            self.ledger.statuses.append(r.status_code)
        return r

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            self.n += 1
            step = self.n % 5
            if step in (0, 1):
                data = jpeg(self.n)
                r = self.call("POST", f"{self.base}/upload", files={"photo": (f"p{self.n}.jpg", data)}, headers=self.auth)
                if r is not None and r.status_code == 201:
                    p = r.json()
                    with self.ledger.lock:
                        self.ledger.acked[p["id"]] = (f"originals/{p['owner']}/{p['id']}_{p['secret']}",
                                                      hashlib.sha256(data).hexdigest())
                        self.ledger.urls[p["id"]] = p["urls"]["small"]
                        self.ledger.acked_in[p["id"]] = self.ledger.phase
            elif step in (2, 3):
                with self.ledger.lock:
                    live = list(self.ledger.urls.items())
                    gone = list(self.ledger.deleted.items())
                if live:
                    self.check(*rng.choice(live))
                if gone:
                    photo_id, url = rng.choice(gone)
                    r = self.call("GET", url)
                    if r is not None and r.status_code == 200:
                        with self.ledger.lock:
                            self.ledger.served_deleted.append(photo_id)
            elif self.n % 15 == 4:
                with self.ledger.lock:
                    live = list(self.ledger.urls)
                if len(live) > 3:
                    photo_id = rng.choice(live)
                    r = self.call("DELETE", f"{self.base}/api/photos/fay/{photo_id}", headers=self.auth)
                    if r is not None and r.status_code == 200:
                        with self.ledger.lock:
                            self.ledger.deleted[photo_id] = self.ledger.urls.pop(photo_id)
                            self.ledger.acked.pop(photo_id)
                    elif r is None or r.status_code >= 500:
                        with self.ledger.lock:
                            self.ledger.maybe_deleted.add(photo_id)
                            self.ledger.urls.pop(photo_id, None)
            time.sleep(0.02)

    def check(self, photo_id: str, url: str) -> None:
        r = self.call("GET", url)
        if r is None or r.status_code != 200:
            return
        etag = r.headers.get("ETag", "").strip('"')
        try:
            with Image.open(io.BytesIO(r.content)) as im:
                im.load()
            good = etag == xxhash.xxh3_64_hexdigest(r.content)
        except Exception:
            good = False
        if not good:
            with self.ledger.lock:
                self.ledger.corrupt.append(photo_id)


class World:
    def __init__(self, tmp: Path, backend: str):
        self.tmp, self.backend = tmp, backend
        self.weed = start_seaweed(tmp / "weed") if backend == "s3" else None
        self.cachefs = tmp / "cachefs"
        self.cachefs.mkdir()
        self.tmpfs = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(self.cachefs)]).returncode == 0
        tree = cluster_tree(tmp, backend=backend, seaweed=self.weed, ypws_nodes=2, overrides={
            "ypfs": {"workers": 2}, "ypws": {"workers": 2, "cache_dir": str(self.cachefs)},
            "magickd": {"workers": 2}, "hashproxy": {"workers": 2, "health_interval": 0.3, "rampup_seconds": 0.0},
            "supervise": {"restart_delay": 0.1},  # a killed master is restarted all the same, sooner
        })
        self.cfg, self.path = write_config(tmp, tree)
        self.store = open_store(self.cfg.storage, self.cfg.local_root)
        user = UserRecord("fay")
        self.token = user.new_token()
        user.save(self.store)
        self.log = tmp / "cluster.log"
        self.proc = procs.start(procs.python_module("cluster", "run", "--config", str(self.path)), log=self.log,
                                env={"PYTHONPATH": str(REPO)}, cwd=str(REPO))
        deadline = time.monotonic() + 120
        while "Cluster is up" not in self.log.read_text(errors="replace"):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.2)
        self.base = self.cfg.public_url

    def masters(self, role: str) -> list[int]:
        """PIDs of ``role``'s serve processes started by `cluster run`."""
        out = []
        for pid in procs.descendants(self.proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-m" in cmd and role.encode() in cmd and b"serve" in cmd:
                parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == self.proc.pid:
                    out.append(pid)
        return out

    def workers(self, role: str) -> list[int]:
        return [w for m in self.masters(role) for w in procs.descendants(m)]

    def serving(self) -> bool:
        try:
            if requests.get(f"{self.base}/readyz", timeout=3).status_code != 200:
                return False
            r = requests.post(f"{self.base}/upload", files={"photo": ("probe.jpg", jpeg(random.randrange(10**9)))},
                              headers={"Authorization": f"Bearer {self.token}"}, timeout=15)
            return r.status_code == 201 and requests.get(r.json()["urls"]["thumb"], timeout=15).status_code == 200
        except requests.RequestException:
            return False

    def all_ready(self) -> bool:
        """Every node of the config (restarted ones included) and the front say ready."""
        urls = [f"{n.url}/readyz" for role in ("ypfs", "magickd", "ypws") for n in getattr(self.cfg, role).nodes]
        try:
            return all(requests.get(u, timeout=3).status_code == 200 for u in [*urls, f"{self.base}/readyz"])
        except requests.RequestException:
            return False

    def recover(self) -> float:
        """Seconds until every node is ready again and an upload and a render go through."""
        t0 = time.monotonic()
        while not (self.all_ready() and self.serving()):
            assert time.monotonic() - t0 < RECOVERY_LIMIT, self.log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        return time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # as Ctrl-C: `cluster run` stops its nodes
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        procs.stop(self.proc, timeout=30)
        if self.weed is not None:
            self.weed.stop()
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.cachefs)])
            self.tmpfs = False


def kill9(pids: list[int]) -> None:
    assert pids, "nothing to kill"
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def tear_a_cache_entry(world: World) -> None:
    entries = sorted(world.cachefs.glob("*/entries/*/*"), key=lambda p: p.stat().st_size, reverse=True)
    assert entries, "no cache entry to tear"
    for entry in entries[:3]:
        size = entry.stat().st_size
        with open(entry, "r+b") as fh:  # a run of zeros mid-file, as a lost page leaves
            fh.seek(size // 2)
            fh.write(b"\0" * min(4096, size // 3))


def fill_the_cache_disk(world: World) -> Path:
    filler = world.cachefs / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return filler


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def world(request, tmp_path):
    w = World(tmp_path, request.param)
    try:
        yield w
    finally:
        w.close()


def test_no_acknowledged_upload_lost_no_corrupt_bytes_no_500_and_recovery(world):
    ledger = Ledger()
    load = Load(world.base, world.token, ledger)
    scenarios = [
        ("ypfs worker", lambda: kill9(world.workers("ypfs")[:1])),
        ("ypfs master", lambda: kill9(world.masters("ypfs"))),
        ("ypws worker", lambda: kill9(world.workers("ypws")[:1])),
        ("ypws master", lambda: kill9(world.masters("ypws")[:1])),
        ("magickd worker", lambda: kill9(world.workers("magickd")[:1])),
        ("magickd master", lambda: kill9(world.masters("magickd"))),
        ("hashproxy worker", lambda: kill9(world.workers("hashproxy")[:1])),
        ("hashproxy master", lambda: kill9(world.masters("hashproxy"))),
        ("torn cache entries", lambda: tear_a_cache_entry(world)),
    ]
    if world.weed is not None:
        def kill_weed() -> None:
            kill9([world.weed.proc.pid])
            world.weed.proc.wait(10)
            start = len(ledger.statuses)  # the cluster runs on without its store until the load sees it refused
            ledger.wait_for("a refusal while SeaweedFS is down",
                            lambda: any(s in (0, 502, 503) for s in ledger.statuses[start:]), timeout=15)
            restart_seaweed(world.weed)
        scenarios.append(("SeaweedFS", kill_weed))
    filler = None
    if world.tmpfs:
        def full_disk() -> None:
            nonlocal filler
            filler = fill_the_cache_disk(world)
        scenarios.append(("full cache disk", full_disk))

    if world.backend != "local" and ROUNDS == 1:  # the soak (bench_faults) runs every one on both
        scenarios = [(n, f) for n, f in scenarios if n not in STORE_INDEPENDENT]
    load.start()
    report = []
    try:  # some photos acknowledged and cached before the first fault
        ledger.wait_for("its warm-up done", lambda: len(ledger.acked) >= WARM_ACKED
                        and len(ledger.statuses) >= WARM_REQUESTS)
        for name, fault in [(f"{n} #{k + 1}" if ROUNDS > 1 else n, f) for k in range(ROUNDS) for n, f in scenarios]:
            with ledger.lock:
                ledger.phase = name
            before = ledger.mark()
            fault()
            time.sleep(0.3)  # a killed process is gone; its node is not ready until restarted
            recovery = 0.3 + world.recover()
            recovered = len(ledger.statuses)  # the load runs on through the rejoin
            ledger.wait_for(f"{AFTER_RECOVERY} requests after {name}",
                            lambda: len(ledger.statuses) >= recovered + AFTER_RECOVERY)
            after = ledger.mark()
            with ledger.lock:
                window = ledger.statuses[before[0]:after[0]]
            failed = sorted({s for s in window if s >= 400 and s not in (404,)})
            report.append({"scenario": name, "requests": len(window), "failed": failed,
                           "corrupt": after[1] - before[1], "deleted served": after[2] - before[2],
                           "recovery s": round(recovery, 1)})
            if filler is not None:  # space back before the next scenario
                filler.unlink()
                filler = None
    finally:
        load.stop.set()
        load.join(60)

    lost = [pid for pid, (key, sha) in ledger.acked.items() if not intact(world.store, pid, key, sha, ledger)]
    print(f"\n{'scenario':<20}{'requests':>8}{'acked':>7}{'lost':>6}  {'failed by status':<18}{'corrupt':>8}"
          f"{'deleted served':>16}{'recovery s':>12}")
    for r in report:
        acked = sum(1 for p in ledger.acked_in.values() if p == r["scenario"])
        lost_here = sum(1 for p in lost if ledger.acked_in.get(p) == r["scenario"])
        print(f"{r['scenario']:<20}{r['requests']:>8}{acked:>7}{lost_here:>6}  {str(r['failed']):<18}{r['corrupt']:>8}"
              f"{r['deleted served']:>16}{r['recovery s']:>12}")
    print(f"acked {len(ledger.acked)}, lost {len(lost)}, deleted {len(ledger.deleted)}")
    assert len(ledger.acked) >= 10 and ledger.deleted, "the load did too little to say anything"
    assert lost == []
    assert ledger.corrupt == [] and ledger.served_deleted == []
    assert 500 not in ledger.statuses and 504 not in ledger.statuses, [r for r in report if 500 in r["failed"]]
    for r in report:
        assert set(r["failed"]) <= OK_FAILURES | {0}, r  # 0: a connection the killed front dropped
        assert r["requests"] >= AFTER_RECOVERY, r  # every window held load through the fault and the rejoin

    # and when the cluster stops, nothing it started is left running
    pids = procs.descendants(world.proc.pid)
    world.close()
    deadline = time.monotonic() + 30
    while [p for p in pids if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in pids if alive(p)] == []


def intact(store, photo_id: str, key: str, sha: str, ledger: Ledger) -> bool:
    """The acknowledged original is in storage byte for byte; or a DELETE whose answer was lost
    removed the whole photo (its record first: storage/ypfs manage.py)."""
    try:
        return hashlib.sha256(store.get(key)).hexdigest() == sha
    except NotFound:
        return photo_id in ledger.maybe_deleted and not store.exists(record_key("fay", photo_id))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
