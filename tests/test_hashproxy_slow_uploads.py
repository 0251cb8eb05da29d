"""Slow uploads cannot take ypfs down (issue 13, finding 2), and an upload has an overall deadline.

A real ypfs (gunicorn, two sync workers) behind a real hashproxy. Clients that send
an upload's head and part of its body, and then nothing, used to hold both ypfs
workers: every upload and API call got 503 until their sockets closed. The proxy
now takes a body bound for ypfs whole before a ypfs worker sees it, so the
stalled uploads cost ypfs nothing, and a client that keeps trickling (each gap
shorter than the per-gap timeout) is cut at ``hashproxy.upload_deadline``.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from .hashproxy_support import ProxyCluster
from .helpers import REPO

pytestmark = pytest.mark.slow

DEADLINE = 4.0


def add_user(config_path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(config_path), "user", "add", name],
                         capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def small_jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (seed % 256, 80, 160)).save(out, "JPEG", quality=80)
    return out.getvalue()


@pytest.fixture
def edge(tmp_path, services):
    pc = ProxyCluster(tmp_path, services, ypws=1, ypfs=1, hashproxy={
        "workers": 1, "upload_deadline": DEADLINE, "client_timeout": 30.0})
    # ypfs: the real one (two sync workers); no magickd, so no renders after upload
    tree_cfg = pc.cfg
    pc.start_node("ypws1")
    node = tree_cfg.ypfs.nodes[0]
    services.start_module("ypfs1", "ypfs", "serve", "--node", "ypfs1", config_path=pc.config_path,
                          health_url=node.url + "/healthz")
    pc.start_proxy()
    return pc, add_user(pc.config_path, "sam")


def _partial_upload(port: int, token: str, sent: int = 1000, declared: int = 400_000) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() +
                 b"\r\nContent-Type: multipart/form-data; boundary=zz\r\nContent-Length: %d\r\n\r\n" % declared +
                 b"--zz\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\n" +
                 b"\xff" * sent)
    return sock


def test_stalled_uploads_do_not_hold_the_upload_workers(edge):
    pc, token = edge
    stalled = [_partial_upload(pc.cfg.hashproxy.port, token) for _ in range(4)]  # twice the ypfs workers
    try:
        time.sleep(0.5)
        started = time.monotonic()
        r = requests.post(pc.base + "/upload", files={"photo": ("p.jpg", small_jpeg(1))},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < 10
        api = requests.get(pc.base + f"/api/photos/sam/{r.json()['id']}", timeout=10)
        assert api.status_code == 200 and api.json()["id"] == r.json()["id"]
    finally:
        for sock in stalled:
            sock.close()


def test_a_trickling_upload_is_cut_at_the_deadline(edge):
    pc, token = edge
    sock = _partial_upload(pc.cfg.hashproxy.port, token, sent=10)
    started = time.monotonic()
    data = b""
    try:
        sock.settimeout(0.3)
        while time.monotonic() - started < DEADLINE + 10:  # one byte every 0.3 s: never a 30 s gap
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                chunk = None
            if chunk == b"":
                break
            if chunk:
                data += chunk
                continue
            try:
                sock.sendall(b"\xff")
            except OSError:
                break
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b'"upload_deadline"' in data
    assert DEADLINE - 0.5 <= elapsed < DEADLINE + 5


def test_the_spool_budget_bounds_what_one_worker_holds(tmp_path):
    from hashproxy.spool import MEMORY, BodySpool, SpoolBudget

    budget = SpoolBudget(3 * MEMORY, tmp_path / "spool")
    first, second = BodySpool(budget), BodySpool(budget)
    block = b"b" * (MEMORY // 2)
    assert all(first.write(block) for _ in range(4))      # 2 MiB: past memory, on disk
    assert second.write(block) and second.write(block)    # 3 MiB held in all
    assert not second.write(b"x")                          # nothing more: the caller answers 503
    assert b"".join(first.blocks()) == block * 4
    first.close()
    assert budget.used == MEMORY and second.write(block)  # what a finished upload held is free again
    second.close()
    assert budget.used == 0
    assert oct((tmp_path / "spool").stat().st_mode & 0o777) == "0o700"
