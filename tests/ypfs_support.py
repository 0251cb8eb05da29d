"""Helpers for the ypfs tests: a recording stand-in for magickd's /render, distinct real JPEGs,
and one ypfs node in-process (falcon's TestClient over ``ypfs.app.create_app``)."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import urllib3
from PIL import Image, ImageOps

from .helpers import CORPUS, cluster_tree, write_config

LIMIT = 8 * 1024 * 1024


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
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def calls_for(self, photo_id: str) -> list[dict]:
        return [c for c in self.calls if c.get("photo") == photo_id]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


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


def ypfs_tree(tmp_path: Path, recorder: RenderRecorder, backend: str = "local", seaweed=None) -> dict:
    """A config tree for one ypfs node whose magickd is ``recorder``."""
    tree = cluster_tree(tmp_path, backend=backend, seaweed=seaweed, overrides={
        "limits": {"max_upload_bytes": LIMIT, "spool_threshold": 256 * 1024},
        "ypfs": {"workers": 2, "render_retries": 3},
    })
    tree["magickd"]["nodes"] = [{"name": "magickd1", "host": "127.0.0.1", "port": recorder.server_address[1]}]
    return tree


class AppYpfs:
    """One ypfs node in-process over a real LocalStore, with the production notifier (a real
    RenderClient, to ``recorder``) and purger (pushes to ypws nodes, none of which runs)."""

    def __init__(self, tmp_path: Path, recorder: RenderRecorder):
        from falcon import testing

        from cluster.profiles import eager_sizes
        from storage.purge import Purger
        from magickd.client import RenderClient
        from storage import open_store
        from ypfs.app import create_app
        from ypfs.notify import RenderNotifier

        self.cfg, self.path = write_config(tmp_path, ypfs_tree(tmp_path, recorder))
        self.recorder = recorder
        self.store = open_store(self.cfg.storage, self.cfg.local_root)
        notifier = RenderNotifier(RenderClient(self.cfg.magickd, self.cfg.cluster.admin_token), self.cfg.ypfs.render_retries,
                                  eager_sizes(self.cfg.sizes))
        cfg = self.cfg
        purger = Purger.from_sections(cfg.purge, cfg.ypws.nodes, cfg.cluster.admin_token, cfg.public_url, self.store,
                                      "ypfs1")
        self.client = testing.TestClient(create_app(cfg, self.store, "ypfs1", notifier=notifier, purger=purger))
        self.tokens: dict[str, str] = {}
        self._lock = threading.Lock()

    def token(self, user: str) -> str:
        """The user's upload token (the user is created on first use, as ``ypfs user add`` does)."""
        from storage.keys import user_key
        from storage.records import UserRecord

        with self._lock:
            if user not in self.tokens:
                rec = UserRecord(user)
                self.tokens[user] = rec.new_token()
                self.store.put_if_absent(user_key(user), rec.to_json(), "application/json")
            return self.tokens[user]

    def auth(self, user: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"} if user else {}

    def upload(self, user: str | None, data: bytes, name: str = "photo.jpg", *, part: str = "photo", **fields):
        body, content_type = urllib3.encode_multipart_formdata({part: (name, data), **fields})
        return self.client.simulate_post("/upload", body=body, headers={**self.auth(user), "Content-Type": content_type})


def app_ypfs_fixture(name: str):
    """A module-scoped ``ypfs`` fixture: one AppYpfs whose render stand-in is stopped after the module."""

    @pytest.fixture(scope="module")
    def ypfs(tmp_path_factory):
        recorder = RenderRecorder()
        try:
            yield AppYpfs(tmp_path_factory.mktemp(name), recorder)
        finally:
            recorder.stop()

    return ypfs
