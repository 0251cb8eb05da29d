"""ypfs as a real process: gunicorn, real HTTP, real images from the corpus, local store and SeaweedFS.

What only the real server shows: the hostile corpus without a worker dying, size limits enforced
while the body streams (or before it is read), chunked bodies refused, large uploads spooled to
disk, parallel uploads over two workers, a worker killed mid-upload, the render retried while
magickd fails, the S3 path; users made by ``python -m ypfs user add``. The app's answers
in-process: test_ypfs_accepts.py, test_ypfs_refusals.py, test_ypfs_owner_api.py.
"""

from __future__ import annotations

import csv
import hashlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from cluster import procs
from storage import open_store
from storage.keys import dedupe_key
from storage.records import PhotoRecord

from .helpers import CORPUS, REPO, Services, write_config
from .jpeg_craft import many_scan_jpeg
from .ypfs_support import LIMIT, RenderRecorder, jpeg_variant, wait_for, ypfs_tree

MANIFEST = {r["path"]: r for r in csv.DictReader(open(CORPUS / "MANIFEST.tsv"), delimiter="\t")}
HOSTILE = sorted(p for p in MANIFEST if p.startswith("hostile/"))


def expected_statuses(path: str) -> set[int] | None:
    """The statuses a hostile file may get; None when a clean accept is allowed too."""
    expect = MANIFEST[path]["expected_server_behaviour"]
    if expect.startswith("reject (413 or 422)"):
        return {413, 422}
    if expect.startswith("reject as unsupported"):
        return {400, 415}
    if expect.startswith("reject"):
        return {400, 415, 422}
    return None


def add_user(config_path: Path, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(config_path), "user", "add", name],
                         capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def gunicorn_workers(master_pid: int) -> set[int]:
    return set(procs.descendants(master_pid))


class Ypfs:
    def __init__(self, cfg, path, proc, recorder):
        self.cfg, self.path, self.proc, self.recorder = cfg, path, proc, recorder
        self.url = cfg.ypfs.nodes[0].url
        self.store = open_store(cfg.storage, cfg.local_root)
        self.tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def token(self, user: str) -> str:
        with self._lock:
            if user not in self.tokens:
                self.tokens[user] = add_user(self.path, user)
            return self.tokens[user]

    def upload(self, user: str, data: bytes, name: str = "photo.jpg", timeout: float = 30, **fields) -> requests.Response:
        return requests.post(f"{self.url}/upload", files={"photo": (name, data)}, data=fields,
                             headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=timeout)


def start_ypfs(tmp_path: Path, services: Services, backend: str = "local", seaweed=None) -> Ypfs:
    recorder = RenderRecorder()
    cfg, path = write_config(tmp_path, ypfs_tree(tmp_path, recorder, backend, seaweed))
    proc = services.start_module("ypfs1", "ypfs", "serve", "--node", "ypfs1", config_path=path,
                                 health_url=f"{cfg.ypfs.nodes[0].url}/healthz")
    return Ypfs(cfg, path, proc, recorder)


@pytest.fixture(scope="module")
def ypfs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ypfs")
    services = Services(tmp)
    node = start_ypfs(tmp, services)
    assert wait_for(lambda: len(gunicorn_workers(node.proc.pid)) == 2, timeout=30)
    node.initial_workers = gunicorn_workers(node.proc.pid)
    yield node
    services.stop_all()
    node.recorder.stop()


# -- the hostile corpus ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_corpus_file_gets_what_the_manifest_expects(ypfs, path):
    data = (CORPUS / path).read_bytes()
    started = time.monotonic()
    r = ypfs.upload("hostile", data, Path(path).name, timeout=10)
    elapsed = time.monotonic() - started
    assert r.status_code < 500, r.text
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    allowed = expected_statuses(path)
    if allowed is None:
        assert r.status_code in (200, 201, 400, 415, 422)
    else:
        assert r.status_code in allowed, r.text
    if r.status_code >= 400:
        err = r.json()
        assert set(err) == {"error", "message"} and err["message"]
        # refused means nothing stored, not even the de-duplication entry
        assert not ypfs.store.exists(dedupe_key("hostile", hashlib.sha256(data).hexdigest()))


def test_after_the_hostile_corpus_no_worker_died_and_nothing_is_half_stored(ypfs):
    assert gunicorn_workers(ypfs.proc.pid) == ypfs.initial_workers
    records = [PhotoRecord.from_json(ypfs.store.get(k)) for k in ypfs.store.list("photos/hostile/")]
    originals = list(ypfs.store.list("originals/hostile/"))
    assert sorted(r.ref.original_key for r in records) == sorted(originals)
    for rec in records:
        assert hashlib.sha256(ypfs.store.get(rec.ref.original_key)).hexdigest() == rec.sha256
    accepted_ok = {p for p in HOSTILE if expected_statuses(p) is None}
    assert len(records) <= len(accepted_ok)


# -- limits and bad requests -------------------------------------------------------------------


def raw_request(url: str, head: str, body_chunks, timeout: float = 10.0) -> bytes:
    """Send a request, stopping as soon as the server answers; return the response bytes."""
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        sock.sendall(head.encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered early
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(timeout)
        out = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
            if b"\r\n\r\n" in out and b"}" in out:
                break
        return out
    finally:
        sock.close()


def test_a_jpeg_scan_bomb_is_refused_before_any_decoding(ypfs):
    """883 legal scans over a 64 MP canvas in 300 KB: libjpeg spends ~13 s of CPU on it."""
    r = ypfs.upload("hostile", many_scan_jpeg(8000, 8000), "bomb.jpg", timeout=10)
    assert r.status_code == 422 and r.json()["error"] == "too_many_scans"


def test_declared_body_over_the_limit_is_refused_before_it_is_read(ypfs):
    head = (f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ypfs.token('alice')}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 60000000\r\n\r\n")
    sent = [0]

    def chunks():
        for _ in range(915):  # would be ~60 MB if the server kept reading
            sent[0] += 65536
            yield b"x" * 65536

    resp = raw_request(ypfs.url, head, chunks())
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert b'"error": "too_large"' in resp
    assert sent[0] < 8 * 1024 * 1024  # answered long before the body could have been read


def test_file_part_over_the_limit_is_refused_while_streaming(ypfs):
    """A declared length just inside the framing slack passes the header check; the file
    part still crosses the byte limit and is refused as it streams in."""
    boundary = "bnd"
    jpeg = (CORPUS / "formats/hopper.jpg").read_bytes()
    part_head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n"
                 "Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    padding = LIMIT + 16 * 1024 - len(jpeg)
    length = len(part_head) + len(jpeg) + padding + len(tail)
    head = (f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ypfs.token('alice')}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n\r\n")

    def body():
        yield part_head + jpeg
        for i in range(0, padding, 65536):
            yield b"\0" * min(65536, padding - i)
        yield tail

    resp = raw_request(ypfs.url, head, body())
    assert resp.startswith(b"HTTP/1.1 413"), resp[:300]
    assert b"larger than the" in resp


def test_chunked_upload_is_refused_with_length_required(ypfs):
    head = (f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ypfs.token('alice')}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n")
    resp = raw_request(ypfs.url, head, [b"5\r\nhello\r\n", b"0\r\n\r\n"])
    assert resp.startswith(b"HTTP/1.1 411"), resp[:300]
    assert b'"length_required"' in resp


def test_large_uploads_are_spooled_to_disk_not_memory(ypfs):
    spool_dir = ypfs.cfg.data_dir / "ypfs" / "ypfs1" / "spool"
    data = jpeg_variant("formats/iphone_hdr_NO.jpg", 3)
    assert len(data) > 256 * 1024  # over the spool threshold
    seen: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if spool_dir.exists():
                seen.extend(os.listdir(spool_dir))
            time.sleep(0.001)

    t = threading.Thread(target=watch)
    t.start()
    try:
        framed = (b"--s\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\r\n"
                  + data + b"\r\n--s--\r\n")

        def slow_body():  # trickle the body so the spool file exists long enough to be seen
            for i in range(0, len(framed), 65536):
                yield framed[i:i + 65536]
                time.sleep(0.01)

        head = (f"POST /upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ypfs.token('alice')}\r\n"
                f"Content-Type: multipart/form-data; boundary=s\r\nContent-Length: {len(framed)}\r\n\r\n")
        resp = raw_request(ypfs.url, head, slow_body(), timeout=30)
    finally:
        stop.set()
        t.join(10)
    assert resp.startswith(b"HTTP/1.1 201"), resp[:300]
    assert any(name.startswith("upload-") for name in seen)
    deadline = time.monotonic() + 10  # and removed afterwards (the worker may finish just after the answer)
    while os.listdir(spool_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(spool_dir) == []


# -- concurrency and crashes --------------------------------------------------------------------------


def test_32_parallel_uploads_get_32_distinct_readable_ids(ypfs):
    payloads = [jpeg_variant("formats/DSCN0010.jpg", i) for i in range(32)]
    assert len({hashlib.sha256(p).hexdigest() for p in payloads}) == 32
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda p: ypfs.upload("dave", p), payloads))
    assert [r.status_code for r in responses] == [201] * 32
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 32
    for data, r in zip(payloads, responses):
        rec = PhotoRecord.load(ypfs.store, "dave", r.json()["id"])
        assert ypfs.store.get(rec.ref.original_key) == data


def test_kill_9_of_a_worker_mid_upload_loses_nothing_acknowledged(ypfs):
    payloads = [jpeg_variant("formats/iphone_hdr_NO.jpg", i, max_side=2400) for i in range(16)]
    results: list[tuple[bytes, object]] = []
    lock = threading.Lock()
    killed = threading.Event()

    def one(data: bytes) -> None:
        try:
            r = ypfs.upload("erin", data, timeout=30)
        except requests.RequestException as exc:  # the killed worker's connection
            r = exc
        with lock:
            results.append((data, r))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, p) for p in payloads]
        assert wait_for(lambda: len(results) >= 2, timeout=30)
        victim = sorted(gunicorn_workers(ypfs.proc.pid))[0]
        os.kill(victim, signal.SIGKILL)
        killed.set()
        for f in futures:
            f.result(timeout=60)
    ok = [(d, r) for d, r in results if not isinstance(r, Exception) and r.status_code in (200, 201)]
    assert len(ok) >= len(payloads) // 2
    for data, r in ok:  # every acknowledged photo is whole and readable
        rec = PhotoRecord.load(ypfs.store, "erin", r.json()["id"])
        assert ypfs.store.get(rec.ref.original_key) == data
    # nothing partial is visible: every stored original is exactly one of the payloads
    shas = {hashlib.sha256(p).hexdigest() for p in payloads}
    for key in ypfs.store.list("originals/erin/"):
        assert hashlib.sha256(ypfs.store.get(key)).hexdigest() in shas
    # and gunicorn replaced the dead worker
    assert wait_for(lambda: len(gunicorn_workers(ypfs.proc.pid)) == 2, timeout=30)
    ypfs.initial_workers = gunicorn_workers(ypfs.proc.pid)


def test_upload_succeeds_while_magickd_fails_and_the_render_is_retried(ypfs):
    ypfs.recorder.status = 503
    try:
        r = ypfs.upload("alice", jpeg_variant("formats/DSCN0010.jpg", 11))
        assert r.status_code == 201
        photo = r.json()["id"]
        assert wait_for(lambda: len(ypfs.recorder.calls_for(photo)) >= 3, timeout=15)
    finally:
        ypfs.recorder.status = 200


# -- the S3 path, against a real SeaweedFS ------------------------------------------------------------


@pytest.mark.s3
def test_upload_into_seaweedfs(tmp_path, services, seaweed):
    node = start_ypfs(tmp_path, services, backend="s3", seaweed=seaweed)
    try:
        data = (CORPUS / "formats/canon_hdr_NO.jpg").read_bytes()
        r = node.upload("alice", data, title="s3")
        assert r.status_code == 201, r.text
        body = r.json()
        assert (body["width"], body["height"]) == (1536, 2048)  # EXIF orientation 6 applied
        assert node.store.name == "s3"
        rec = PhotoRecord.load(node.store, "alice", body["id"])
        assert node.store.get(rec.ref.original_key) == data
        assert node.upload("alice", data).json()["id"] == body["id"]
        bad = node.upload("alice", (CORPUS / "hostile/truncated_jpeg.jpg").read_bytes())
        assert bad.status_code == 422
        assert list(node.store.list("originals/alice/")) == [rec.ref.original_key]
        big = jpeg_variant("formats/iphone_hdr_NO.jpg", 5)
        r = node.upload("alice", big)
        assert r.status_code == 201
        assert node.store.get(PhotoRecord.load(node.store, "alice", r.json()["id"]).ref.original_key) == big
    finally:
        node.recorder.stop()
