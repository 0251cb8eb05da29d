"""Helpers shared by the test modules: cluster configs on ephemeral ports, and service processes."""

from __future__ import annotations

import copy
import dataclasses
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from cluster import procs
from cluster.config import Config, S3StoreConfig, defaults, dump_toml, load, load_dict

REPO = Path(__file__).resolve().parent.parent
#: the shared test corpora live beside the repository (../shared), never copied into it
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"
CORPUS2 = SHARED / "corpus2"
for _corpus in (CORPUS, CORPUS2):
    if not (_corpus / "MANIFEST.tsv").exists():  # a test-setup error, never a silent skip
        raise RuntimeError(f"the shared image corpus is missing: {_corpus} (the tests read it from ../shared "
                           "beside the repository)")


def deep_update(tree: dict, over: dict) -> dict:
    out = copy.deepcopy(tree)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def cluster_tree(tmp_path: Path, *, backend: str = "local", seaweed=None, bucket: str | None = None,
                 ypfs_nodes: int = 1, magickd_nodes: int = 1, ypws_nodes: int = 1,
                 overrides: dict | None = None) -> dict:
    """A whole-cluster config tree on free loopback ports, with its data under tmp_path."""
    tree = load_dict()
    ports = iter(procs.free_ports(ypfs_nodes + magickd_nodes + ypws_nodes + 1))
    tree["cluster"]["data_dir"] = str(tmp_path / "var")
    tree["ypfs"]["nodes"] = [
        {"name": f"ypfs{i + 1}", "host": "127.0.0.1", "port": next(ports), "node_id": i + 1} for i in range(ypfs_nodes)
    ]
    tree["magickd"]["nodes"] = [{"name": f"magickd{i + 1}", "host": "127.0.0.1", "port": next(ports)} for i in range(magickd_nodes)]
    tree["ypws"]["nodes"] = [{"name": f"ypws{i + 1}", "host": "127.0.0.1", "port": next(ports)} for i in range(ypws_nodes)]
    tree["hashproxy"]["port"] = next(ports)
    # AdaptSize admission (the default policy) turns a miss away with a small probability, so a
    # test that expects the second request to hit pins plain S3-FIFO; test_cache_policies runs
    # the default policy in a real node
    tree["ypws"]["cache_policy"] = "s3fifo"
    tree["storage"]["backend"] = backend
    if backend == "s3":
        assert seaweed is not None, "the s3 backend needs the seaweed fixture"
        tree["storage"]["s3"].update(
            endpoint=seaweed.endpoint, access_key=seaweed.access_key, secret_key=seaweed.secret_key,
            bucket=bucket or f"t-{os.urandom(4).hex()}",
        )
    return deep_update(tree, overrides or {})


def s3_settings(**changes: Any) -> S3StoreConfig:
    """[storage.s3] as defaults.toml has it, with ``changes``: for tests that open an S3Store directly."""
    return dataclasses.replace(defaults().storage.s3, **changes)


def tight_budget(read_timeout: float) -> dict:
    """Overrides that nest the whole timeout budget (cluster/budget.py) under a short
    ``hashproxy.read_timeout``: for tests of the proxy's own timeouts against stub nodes."""
    node = max(1, int(read_timeout * 0.7))          # gunicorn timeouts are whole seconds
    if not node < read_timeout:
        raise ValueError(f"hashproxy.read_timeout {read_timeout} leaves no room for a node timeout")
    request = node * 0.8
    client = request * 0.9
    render_request = client * 0.9
    return {
        "hashproxy": {"read_timeout": read_timeout},
        "ypfs": {"timeout": node, "request_deadline": request},
        "ypws": {"timeout": node, "request_deadline": request},
        "magickd": {"client_timeout": client, "request_deadline": render_request,
                    "render_timeout": render_request * 0.8, "queue_wait": render_request * 0.8},
        "storage": {"s3": {"deadline": render_request * 0.8}},
        "limits": {"decode_timeout": request * 0.8},
    }


def service_auth(cfg: Config) -> dict[str, str]:
    """Headers carrying the cluster's service credential (magickd /render, every /metrics)."""
    return {"Authorization": f"Bearer {cfg.cluster.admin_token}"}


def write_config(tmp_path: Path, tree: dict) -> tuple[Config, Path]:
    path = tmp_path / "yupoo.toml"
    path.write_text(dump_toml(tree))
    return load(path), path


class Services:
    """Processes a test started; all stopped by PID (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], config_path: Path | None = None,
              health_url: str | None = None, env: dict[str, Any] | None = None, timeout: float = 60.0) -> subprocess.Popen:
        full_env = {"PYTHONPATH": str(REPO), **({"YUPOO_CONFIG": str(config_path)} if config_path else {}), **(env or {})}
        proc = procs.start(argv, log=self.tmp_path / f"{name}.log", env=full_env, cwd=str(REPO))
        self.procs[name] = proc
        if health_url:
            self.wait_healthy(name, health_url, timeout)
        return proc

    def wait_healthy(self, name: str, health_url: str, timeout: float = 60.0) -> None:
        """Wait (bounded) until a started process answers ``health_url``; its log tail if not."""
        try:
            procs.wait_http(health_url, timeout=timeout, proc=self.procs[name])
        except Exception:
            raise RuntimeError(f"{name} did not become healthy; log:\n{self.log(name)[-3000:]}")

    def start_module(self, name: str, module: str, *args: str, **kw) -> subprocess.Popen:
        return self.start(name, procs.python_module(module, *args), **kw)

    def log(self, name: str) -> str:
        path = self.tmp_path / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, timeout: float = 10.0) -> int | None:
        proc = self.procs.pop(name, None)
        return procs.stop(proc, timeout) if proc else None

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every process at once, then wait for each (SIGKILL once ``timeout`` has
        passed): their graceful stops overlap instead of adding up."""
        running = list(self.procs.values())
        self.procs.clear()
        for proc in running:
            if proc.poll() is None:
                procs.signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            procs.stop(proc, max(0.1, deadline - time.monotonic()))


def seed_photo(store, user: str, path: Path, *, photo_id: str | None = None, private: bool = False,
               original_public: bool = True, title: str = ""):
    """Put an original and its record straight into a store (no ypfs); returns the PhotoRecord.

    For tests of components downstream of ypfs. Dimensions come from Pillow, with
    EXIF orientation applied, as ypfs records them.
    """
    import hashlib
    import time as _time

    from PIL import Image, ImageOps

    from media.sniff import HEAD_BYTES, sniff
    from storage.ids import new_secret
    from storage.records import PhotoRecord

    data = Path(path).read_bytes()
    with Image.open(path) as im:
        fmt = sniff(data[:HEAD_BYTES]) or "jpeg"
        w, h = ImageOps.exif_transpose(im).size if im.format in ("JPEG", "MPO", "TIFF", "WEBP", "PNG") else im.size
        pages = getattr(im, "n_frames", 1)
    rec = PhotoRecord(
        id=photo_id or str(next(_SEED_IDS)), owner=user, secret=new_secret(), format=fmt, width=w, height=h,
        bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), uploaded_at=_time.time(), title=title,
        pages=pages, private=private, original_public=original_public,
    )
    store.put(rec.ref.original_key, data)
    rec.save(store)
    return rec


_SEED_IDS = iter(range(10**18 + (int(__import__("time").time() * 1000) << 22), 2**63))  # 19 digits, like real ids


def check_connection_cap(port: int, cap: int) -> None:
    """A server capped at ``cap`` connections per worker (one worker): with ``cap`` idle ones
    held open, the next is answered 503 and closed at once; once they go, it serves again."""
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(cap)]
    try:
        time.sleep(0.3)  # let the worker take them all
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := extra.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b'"overloaded"' in answer and b"Retry-After: 1" in answer
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if sock.recv(65536).startswith(b"HTTP/1.1 200"):
                return
        assert time.monotonic() < deadline, "still refusing after the held connections closed"
        time.sleep(0.1)


def restart_seaweed(weed, attempts: int = 3) -> None:
    """Start the stopped SeaweedFS again on its data, keys and S3 port. Its internal ports are
    picked afresh: one of the old ones may meanwhile be some connection's ephemeral port."""
    for attempt in range(1, attempts + 1):
        argv = [a if a.startswith("-s3.port=") or ".port" not in a.split("=")[0] or "=" not in a
                else f"{a.split('=')[0]}={procs.free_port()}" for a in weed.proc.args]
        weed.proc = procs.start(argv, log=weed.workdir / f"weed-restart-{attempt}.log")
        try:
            procs.wait_http(f"http://{weed.endpoint}/", timeout=60, proc=weed.proc, ok=(200, 403))
            return
        except RuntimeError:
            procs.stop(weed.proc)
            if attempt == attempts:
                log = (weed.workdir / f"weed-restart-{attempt}.log").read_text(errors="replace")
                raise AssertionError(f"SeaweedFS did not come back:\n{log[-2000:]}") from None
            time.sleep(1)
