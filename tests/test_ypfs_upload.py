"""ypfs end to end: real gunicorn, real HTTP, real images from the corpus, local store and SeaweedFS."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageOps

from cluster import procs
from storage import open_store
from storage.keys import dedupe_key, record_key, timeline_key
from storage.purgelog import PurgeLog
from storage.records import PhotoRecord

from .helpers import CORPUS, REPO, Services, cluster_tree, write_config
from .jpeg_craft import many_scan_jpeg

MANIFEST = {r["path"]: r for r in csv.DictReader(open(CORPUS / "MANIFEST.tsv"), delimiter="\t")}
VALID = sorted(p for p in MANIFEST if p.startswith(("formats/", "orientation/")))
HOSTILE = sorted(p for p in MANIFEST if p.startswith("hostile/"))
LIMIT = 8 * 1024 * 1024

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


class RenderRecorder(ThreadingHTTPServer):
    """Stands in for magickd's POST /render to observe ypfs's fire-and-forget calls."""

    daemon_threads = True

    def __init__(self):
        self.calls: list[dict] = []
        self.status = 200

        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.calls.append({**json.loads(body), "_authorization": self.headers.get("Authorization")})
                payload = b'{"renditions": []}' if recorder.status == 200 else b'{"error": "down"}'
                self.send_response(recorder.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def calls_for(self, photo_id: str) -> list[dict]:
        return [c for c in self.calls if c.get("photo") == photo_id]


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


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
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    tree = cluster_tree(tmp_path, backend=backend, seaweed=seaweed, overrides={
        "limits": {"max_upload_bytes": LIMIT, "spool_threshold": 256 * 1024},
        "ypfs": {"workers": 2, "render_retries": 3},
    })
    tree["magickd"]["nodes"] = [{"name": "magickd1", "host": "127.0.0.1", "port": recorder.server_address[1]}]
    cfg, path = write_config(tmp_path, tree)
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
    node.recorder.shutdown()


def pillow_display_size(data: bytes) -> tuple[int, int]:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.exif_transpose(im).size if im.format in ("JPEG", "MPO", "TIFF", "WEBP", "PNG") else im.size


def jpeg_variant(source: str, i: int, max_side: int | None = None) -> bytes:
    """A distinct, real JPEG: a corpus photo re-encoded (and resized) differently for each i."""
    with Image.open(CORPUS / source) as im:
        im = im.convert("RGB")
        if max_side:
            im.thumbnail((max_side, max_side))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=60 + i % 35, subsampling=i % 3)
        return out.getvalue()


# -- the upload itself ---------------------------------------------------------------------------


def test_upload_end_to_end(ypfs):
    data = (CORPUS / "formats/iphone_hdr_NO.jpg").read_bytes()
    r = ypfs.upload("alice", data, "IMG_0001.JPG", title="Harbour at dusk")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["owner"] == "alice" and body["title"] == "Harbour at dusk"
    assert (body["width"], body["height"], body["format"]) == (3264, 2448, "jpeg")
    assert body["bytes"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["camera"] == "Apple iPhone 6" and body["taken_at"] == "2015-04-10T20:12:23"
    assert set(body["urls"]) == {"square", "thumb", "small", "medium", "large", "xlarge", "original"}
    assert body["urls"]["small"].startswith(f"{ypfs.cfg.public_url}/photos/alice/{body['id']}_{body['secret']}/small.jpg?v=")
    assert "gps" not in r.text.lower() and "latitude" not in r.text.lower()
    assert r.headers["Location"] == f"/api/photos/alice/{body['id']}"
    # durable before the ack: the original (byte for byte) and its record are in the store
    rec = PhotoRecord.load(ypfs.store, "alice", body["id"])
    assert ypfs.store.get(rec.ref.original_key) == data
    assert rec.sha256 == body["sha256"]
    # the API serves the same public view
    api = requests.get(f"{ypfs.url}/api/photos/alice/{body['id']}", timeout=10)
    assert api.status_code == 200 and api.json() == body
    # and magickd was asked for the standard sizes, fire-and-forget
    assert wait_for(lambda: ypfs.recorder.calls_for(body["id"]))
    call = ypfs.recorder.calls_for(body["id"])[0]
    assert (call["user"], call["secret"], call["sizes"]) == ("alice", body["secret"], None)
    assert call["_authorization"] == f"Bearer {ypfs.cfg.cluster.admin_token}"  # magickd needs the service credential


def test_same_bytes_again_returns_the_existing_photo(ypfs):
    data = jpeg_variant("formats/DSCN0010.jpg", 1)
    first = ypfs.upload("alice", data)
    again = ypfs.upload("alice", data)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other_user = ypfs.upload("bob", data)
    assert other_user.status_code == 201 and other_user.json()["id"] != first.json()["id"]


def test_same_bytes_again_as_private_does_not_pretend_to_be_private(ypfs):
    """Issue 13 (LOW): a private=1 re-upload of a public photo silently returned the public photo."""
    data = jpeg_variant("formats/DSCN0010.jpg", 1)
    first = ypfs.upload("priya", data)
    assert first.status_code == 201 and first.json()["private"] is False
    again = ypfs.upload("priya", data, private="1")
    assert again.status_code == 409, again.text
    body = again.json()
    assert body["error"] == "already_public"
    assert first.json()["id"] in body["message"] and "PATCH" in body["message"]
    assert body["photo"]["id"] == first.json()["id"] and body["photo"]["private"] is False
    assert again.headers["Location"] == f"/api/photos/priya/{first.json()['id']}"
    # the photo itself was not changed behind the owner's back
    assert PhotoRecord.load(ypfs.store, "priya", first.json()["id"]).private is False
    # a private photo uploaded again (privately or not) is answered as the private photo it is
    secret = ypfs.upload("priya", jpeg_variant("formats/DSCN0010.jpg", 2), private="1")
    assert secret.status_code == 201
    for fields in ({"private": "1"}, {}):
        r = ypfs.upload("priya", jpeg_variant("formats/DSCN0010.jpg", 2), **fields)
        assert r.status_code == 200 and r.json()["id"] == secret.json()["id"] and r.json()["private"] is True


@pytest.mark.parametrize("path", VALID)
def test_every_valid_corpus_file_is_accepted(ypfs, path):
    data = (CORPUS / path).read_bytes()
    r = ypfs.upload("valid", data, Path(path).name)
    assert r.status_code in (200, 201), r.text
    body = r.json()
    assert (body["width"], body["height"]) == pillow_display_size(data)
    assert "gps" not in r.text.lower()


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


def test_a_decode_past_its_deadline_is_a_clear_422():
    import dataclasses

    from cluster.config import load
    from media.probe import ImageRejected, probe

    limits = dataclasses.replace(load(with_secrets=False).limits, decode_timeout=0.002)
    data = (CORPUS / "formats" / "iphone_hdr_NO.jpg").read_bytes()  # ~20 ms to check
    with pytest.raises(ImageRejected) as info:
        probe(data, "jpeg", limits)
    assert (info.value.status, info.value.code) == (422, "decode_timeout")


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


def test_auth_errors(ypfs):
    data = (CORPUS / "formats/hopper.jpg").read_bytes()
    r = requests.post(f"{ypfs.url}/upload", files={"photo": ("a.jpg", data)}, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    for token in ["nobody.abc", "alice.wrong", "garbage", "../../etc.x"]:
        r = requests.post(f"{ypfs.url}/upload", files={"photo": ("a.jpg", data)},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 401, token


def test_malformed_requests_get_clear_json_errors(ypfs):
    auth = {"Authorization": f"Bearer {ypfs.token('alice')}"}
    jpeg = (CORPUS / "formats/hopper.jpg").read_bytes()
    r = requests.post(f"{ypfs.url}/upload", data=jpeg, headers={**auth, "Content-Type": "image/jpeg"}, timeout=10)
    assert r.status_code == 415 and r.json()["error"] == "not_multipart"
    r = requests.post(f"{ypfs.url}/upload", files={"picture": ("a.jpg", jpeg)}, headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "missing_photo"
    r = requests.post(f"{ypfs.url}/upload", files={"photo": ("a.jpg", jpeg)}, data={"title": "t" * 500}, headers=auth, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "title_too_long"
    r = requests.post(f"{ypfs.url}/upload", data=b"--x\r\ngarbage", timeout=10,
                      headers={**auth, "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and set(r.json()) == {"error", "message"}
    r = requests.get(f"{ypfs.url}/api/photos/alice/..%2f..%2fetc", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = requests.get(f"{ypfs.url}/nowhere", timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_private_photos_are_hidden_from_everyone_but_their_owner(ypfs):
    r = ypfs.upload("carol", jpeg_variant("formats/DSCN0010.jpg", 7), private="1")
    assert r.status_code == 201 and r.json()["private"] is True
    photo = r.json()["id"]
    assert requests.get(f"{ypfs.url}/api/photos/carol/{photo}", timeout=10).status_code == 404
    owner = requests.get(f"{ypfs.url}/api/photos/carol/{photo}", timeout=10,
                         headers={"Authorization": f"Bearer {ypfs.token('carol')}"})
    assert owner.status_code == 200 and owner.json()["id"] == photo
    listing = requests.get(f"{ypfs.url}/api/users/carol/photos", timeout=10).json()
    assert photo not in [p["id"] for p in listing["photos"]]
    mine = requests.get(f"{ypfs.url}/api/users/carol/photos", timeout=10,
                        headers={"Authorization": f"Bearer {ypfs.token('carol')}"}).json()
    assert photo in [p["id"] for p in mine["photos"]]
    theirs = requests.get(f"{ypfs.url}/api/users/carol/photos", timeout=10,
                          headers={"Authorization": f"Bearer {ypfs.token('alice')}"}).json()
    assert photo not in [p["id"] for p in theirs["photos"]]


def _as(ypfs, user: str | None) -> dict:
    return {"Authorization": f"Bearer {ypfs.token(user)}"} if user else {}


def test_the_owner_edits_title_and_visibility_and_nobody_else_may(ypfs):
    photo = ypfs.upload("editor", jpeg_variant("formats/DSCN0010.jpg", 11)).json()["id"]
    url = f"{ypfs.url}/api/photos/editor/{photo}"
    assert requests.patch(url, json={"title": "x"}, timeout=10).status_code == 401
    other = requests.patch(url, json={"title": "x"}, headers=_as(ypfs, "stranger"), timeout=10)
    assert other.status_code == 403 and other.json()["error"] == "forbidden"
    for body, status, code in [({"colour": "red"}, 400, "bad_changes"), ({"private": "yes"}, 400, "bad_changes"),
                               ({"title": "t" * 500}, 400, "bad_changes"), ({}, 400, "bad_changes"),
                               ([1, 2], 400, "bad_changes")]:
        r = requests.patch(url, json=body, headers=_as(ypfs, "editor"), timeout=10)
        assert (r.status_code, r.json()["error"]) == (status, code), body
    r = requests.patch(url, data="title=x", headers={**_as(ypfs, "editor"), "Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415 and r.json()["error"] == "not_json"
    json_type = {**_as(ypfs, "editor"), "Content-Type": "application/json"}
    r = requests.patch(url, data="{", headers=json_type, timeout=10)
    assert r.status_code == 400 and set(r.json()) == {"error", "message"}
    r = requests.patch(url, data=json.dumps({"title": "t" * 20_000}), headers=json_type, timeout=10)
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert PhotoRecord.load(ypfs.store, "editor", photo).title == ""  # no refused edit changed anything

    rec_before = PhotoRecord.load(ypfs.store, "editor", photo)
    original_bytes = ypfs.store.get(rec_before.ref.original_key)
    r = requests.patch(url, json={"title": "  Harbour\x07 ", "private": True, "original_public": False},
                       headers=_as(ypfs, "editor"), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["title"], body["private"], body["original_public"]) == ("Harbour", True, False)
    assert "original" not in body["urls"]
    # the cache tier must forget the old visibility: logged (every node applies it); no ypws runs
    # here to take the direct push, which the answer says instead of claiming it was applied
    assert body["cache"]["logged"] is True and body["cache"]["status"] == "logged"
    assert body["cache"]["applied"] == f"0 of {len(ypfs.cfg.ypws.nodes)} nodes"
    assert list(PurgeLog(ypfs.store).read(""))[-1].paths == (rec_before.ref.purge_path(),)
    rec = PhotoRecord.load(ypfs.store, "editor", photo)
    assert (rec.title, rec.private, rec.original_public) == ("Harbour", True, False)
    # made private: a new secret, so every URL handed out while it was public (and any copy an
    # outer cache keeps of it) names nothing now; the bytes moved to the new keys
    assert rec.secret != rec_before.secret and body["secret"] == rec.secret
    assert not ypfs.store.exists(rec_before.ref.original_key)
    assert ypfs.store.get(rec.ref.original_key) == original_bytes
    assert requests.get(url, timeout=10).status_code == 404  # private now
    assert requests.patch(url, json={"title": "x"}, headers=_as(ypfs, "stranger"), timeout=10).status_code == 404
    r = requests.patch(url, json={"title": "Harbour at dusk"}, headers=_as(ypfs, "editor"), timeout=10)
    assert r.status_code == 200 and "cache" not in r.json()  # a title is not cached with the images


def test_the_owner_deletes_a_photo_and_every_object_of_it_goes(ypfs):
    data = jpeg_variant("formats/DSCN0010.jpg", 12)
    rec = PhotoRecord.from_json(ypfs.store.get(record_key("gina", ypfs.upload("gina", data).json()["id"])))
    ref = rec.ref
    for key in (ref.rendition_key("small", "0123abcd", "jpeg"), ref.rendition_key("medium", "0123abcd", "webp")):
        ypfs.store.put(key, b"rendition")  # what magickd would have written
    keys = [ref.record_key, ref.original_key, dedupe_key("gina", rec.sha256), timeline_key(rec.id, "gina"),
            *ypfs.store.list(ref.rendition_prefix)]
    assert len(keys) == 6 and all(ypfs.store.exists(k) for k in keys)
    url = f"{ypfs.url}/api/photos/gina/{rec.id}"
    assert requests.delete(url, timeout=10).status_code == 401
    assert requests.delete(url, headers=_as(ypfs, "stranger"), timeout=10).status_code == 403
    assert all(ypfs.store.exists(k) for k in keys)

    r = requests.delete(url, headers=_as(ypfs, "gina"), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] == rec.id and r.json()["objects_removed"] == 6
    assert r.json()["cache"]["logged"] is True
    assert ref.purge_path() in [p for e in PurgeLog(ypfs.store).read("") for p in e.paths]
    assert [k for k in keys if ypfs.store.exists(k)] == []
    assert requests.get(url, timeout=10).status_code == 404
    assert requests.delete(url, headers=_as(ypfs, "gina"), timeout=10).status_code == 404  # a retry: nothing left
    listing = requests.get(f"{ypfs.url}/api/users/gina/photos", timeout=10).json()
    assert rec.id not in [p["id"] for p in listing["photos"]]
    again = ypfs.upload("gina", data)  # the same bytes again: a new photo, not the deleted one
    assert again.status_code == 201 and again.json()["id"] != rec.id


def test_deleting_a_photo_keeps_a_newer_upload_of_the_same_bytes(ypfs):
    """The duplicate entry belongs to whichever photo it names: deleting an older one leaves it."""
    data = jpeg_variant("formats/DSCN0010.jpg", 13)
    old = ypfs.upload("hana", data).json()["id"]
    entry = dedupe_key("hana", hashlib.sha256(data).hexdigest())
    ypfs.store.put(entry, json.dumps({"id": "1"}).encode())  # as if a later photo had claimed these bytes
    assert requests.delete(f"{ypfs.url}/api/photos/hana/{old}", headers=_as(ypfs, "hana"), timeout=10).status_code == 200
    assert json.loads(ypfs.store.get(entry)) == {"id": "1"}


def test_an_operator_takes_a_photo_down_from_the_command_line(ypfs):
    rec = PhotoRecord.from_json(ypfs.store.get(record_key("ivan", ypfs.upload(
        "ivan", jpeg_variant("formats/DSCN0010.jpg", 14)).json()["id"])))
    cli = [sys.executable, "-m", "ypfs", "--config", str(ypfs.path), "photo", "delete", "ivan"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([*cli, rec.id], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert out.returncode == 0 and f"deleted ivan/{rec.id}" in out.stdout, out.stderr
    assert "cache purge logged, applied on 0 of" in out.stdout  # no ypws runs here: said, not hidden
    assert rec.ref.purge_path() in [p for e in PurgeLog(ypfs.store).read("") for p in e.paths]
    assert not ypfs.store.exists(rec.ref.record_key) and not ypfs.store.exists(rec.ref.original_key)
    again = subprocess.run([*cli, rec.id], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert again.returncode == 1 and "no photo" in again.stderr


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
    assert os.listdir(spool_dir) == []  # and removed afterwards


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
        node.recorder.shutdown()
