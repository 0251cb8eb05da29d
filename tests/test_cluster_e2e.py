"""The whole cluster as `make run` starts it: hashproxy -> ypws nodes -> magickd, ypfs, storage.

Runs the real supervisor (`python -m cluster run`, what `make run` calls) on free
loopback ports, uploads through the proxy as a client would, fetches thumbnails
through it, and stops it with SIGINT as Ctrl-C would: every process must be gone.
Once on the embedded local store and once on S3 against a real SeaweedFS.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from cluster import procs
from storage import open_store
from storage.keys import PhotoRef

from .helpers import CORPUS, REPO, cluster_tree, write_config

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def cluster(request, tmp_path):
    seaweed = request.getfixturevalue("seaweed") if request.param == "s3" else None
    tree = cluster_tree(tmp_path, backend=request.param, seaweed=seaweed, ypws_nodes=3,
                        overrides={"ypws": {"workers": 2}, "magickd": {"workers": 2}, "hashproxy": {"workers": 2}})
    cfg, path = write_config(tmp_path, tree)
    log = tmp_path / "cluster.log"
    proc = procs.start(procs.python_module("cluster", "run", "--config", str(path)), log=log,
                       env={"PYTHONPATH": str(REPO)}, cwd=str(REPO))
    deadline = time.monotonic() + 120
    while "Cluster is up" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    yield cfg, path, proc, log
    procs.stop(proc, timeout=30)


def test_upload_and_view_through_the_proxy_then_ctrl_c(cluster):
    cfg, path, proc, log = cluster
    base = cfg.public_url
    children = procs.descendants(proc.pid)
    assert len(children) >= 6  # magickd, ypfs, 3 ypws, hashproxy (+ their workers)

    token = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "user", "add", "alice"],
                           capture_output=True, text=True, cwd=REPO, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    data = (CORPUS / "formats/canon_hdr_NO.jpg").read_bytes()  # 2048x1536, EXIF orientation 6
    r = requests.post(f"{base}/upload", files={"photo": ("canon.jpg", data)}, data={"title": "e2e"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 201, r.text
    photo = r.json()
    assert (photo["width"], photo["height"]) == (1536, 2048)

    served_by = {}
    for size, box in [("small", 240), ("medium", 500), ("square", 75)]:
        url = photo["urls"][size]
        first = requests.get(url, timeout=60)
        assert first.status_code == 200, first.text[:300]
        with Image.open(io.BytesIO(first.content)) as im:
            assert im.format == "JPEG"
            if size == "square":
                assert im.size == (75, 75)
            else:
                assert im.size == (round(box * 1536 / 2048), box)  # portrait: upright after orientation 6
        again = requests.get(url, timeout=60)
        assert again.status_code == 200 and again.content == first.content
        assert again.headers["X-Cache"] == "HIT"
        assert again.headers["X-Served-By"] == first.headers["X-Served-By"]  # pinned to one node
        served_by[size] = first.headers["X-Served-By"]
    assert all(name.startswith("ypws") for name in served_by.values())

    # the API answers through the proxy too, and GPS never leaks
    api = requests.get(f"{base}/api/photos/alice/{photo['id']}", timeout=30)
    assert api.status_code == 200 and "gps" not in api.text.lower()

    # the owner makes it private: the cached copies are purged, so an unsigned URL stops working
    owner = {"Authorization": f"Bearer {token}"}
    api_url = f"{base}/api/photos/alice/{photo['id']}"
    r = requests.patch(api_url, json={"private": True}, headers=owner, timeout=30)
    assert r.status_code == 200 and r.json()["private"] is True, r.text
    assert r.json()["cache"]["status"] == "applied" and r.json()["cache"]["applied"] == "3 of 3 nodes", r.text
    assert requests.get(photo["urls"]["small"], timeout=30).status_code == 404
    r = requests.patch(api_url, json={"private": False}, headers=owner, timeout=30)
    assert r.status_code == 200 and r.json()["cache"]["status"] == "applied"
    # made private, it got a new secret: the URLs handed out before stay dead, the new ones work
    assert r.json()["secret"] != photo["secret"]
    assert requests.get(photo["urls"]["small"], timeout=30).status_code == 404
    photo = r.json()
    assert requests.get(photo["urls"]["small"], timeout=60).status_code == 200

    # ... and deletes it: every object goes, every URL of it answers 404, from any cache node too
    store = open_store(cfg.storage, cfg.local_root)
    ref = PhotoRef("alice", photo["id"], photo["secret"])
    assert store.exists(ref.original_key) and list(store.list(ref.rendition_prefix))
    r = requests.delete(api_url, headers=owner, timeout=30)
    assert r.status_code == 200 and r.json()["cache"]["status"] == "applied", r.text
    for size in served_by:
        assert requests.get(photo["urls"][size], timeout=30).status_code == 404, size
    assert requests.get(api_url, timeout=30).status_code == 404
    assert not store.exists(ref.original_key) and not store.exists(ref.record_key)
    assert list(store.list(ref.rendition_prefix)) == []

    # Ctrl-C: SIGINT to the supervisor stops every process it started
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode == 0
    deadline = time.monotonic() + 30
    while any(alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in children if alive(p)] == []
    assert "stopping" in log.read_text()
