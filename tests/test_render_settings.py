"""Per-size render settings (issue 17): ``progressive`` shapes the JPEG bytes, ``eager`` when a size is made.

- encode: a progressive profile's JPEG is SOF2, a baseline one SOF0/SOF1 with its own
  (optimised) Huffman tables, read from the markers, not from any decoder's opinion;
- ypfs asks magickd only for the eager sizes after an upload (in process, TestClient);
- through a real cluster: an on-demand size is absent from storage once the eager
  ones are there, its first view renders it and the second is a cache hit.
"""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
import threading
import time

import pytest
import requests
import urllib3
from falcon import testing
from PIL import Image

from cluster import procs
from cluster.config import from_dict, load_dict
from cluster.profiles import by_name, eager_sizes
from magickd import pipeline
from magickd.options import Limits, RenderOptions, parse_targets
from storage import open_store
from storage.keys import PhotoRef
from storage.local import LocalStore
from storage.records import UserRecord
from ypfs.app import create_app as ypfs_app
from ypfs.notify import RenderNotifier

from .helpers import CORPUS, REPO, cluster_tree, write_config

PHOTO = CORPUS / "formats" / "canon_hdr_NO.jpg"  # 2048x1536, EXIF orientation 6
#: the DC luminance code counts of the example tables of JPEG Annex K.3 (libjpeg's defaults)
STANDARD_DC_BITS = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])


def markers(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the first scan, walked by hand."""
    assert jpeg[:2] == b"\xff\xd8"
    out, i = [], 2
    while i + 4 <= len(jpeg):
        assert jpeg[i] == 0xFF, f"not a marker at {i}"
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2:i + 4], "big")
        out.append((marker, jpeg[i + 4:i + 2 + length]))
        if marker == 0xDA:  # SOS: entropy-coded data follows
            break
        i += 2 + length
    return out


def frame_type(jpeg: bytes) -> str:
    sofs = {0xC0: "SOF0", 0xC1: "SOF1", 0xC2: "SOF2"}
    found = [sofs.get(m, f"0x{m:02X}") for m, _ in markers(jpeg) if 0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)]
    assert len(found) == 1, found
    return found[0]


def dc_luminance_bits(jpeg: bytes) -> bytes:
    for marker, payload in markers(jpeg):
        i = 0
        while marker == 0xC4 and i < len(payload):  # a DHT segment may hold several tables
            tc_th, bits = payload[i], payload[i + 1:i + 17]
            if tc_th == 0x00:
                return bits
            i += 17 + sum(bits)
    raise AssertionError("no DC table 0")


def test_encode_honours_progressive_per_size():
    base = from_dict(load_dict())
    sizes = tuple(dataclasses.replace(p, progressive=p.name != "small") for p in base.sizes)
    cfg = base.replace(sizes=sizes)
    options = RenderOptions(parse_targets(by_name(cfg.sizes), ["small", "medium"], None), Limits.from_config(cfg.limits, cfg.magickd))
    outs = {o.target.name: o.data for o in pipeline.render(PHOTO.read_bytes(), options)}
    assert frame_type(outs["medium"]) == "SOF2"
    assert frame_type(outs["small"]) in ("SOF0", "SOF1")
    assert dc_luminance_bits(outs["small"]) != STANDARD_DC_BITS  # optimised Huffman tables, not the stock ones
    for data in outs.values():
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # and both are whole JPEGs
            assert im.format == "JPEG"


def test_the_default_profiles_encode_as_configured():
    cfg = from_dict(load_dict())
    options = RenderOptions(parse_targets(by_name(cfg.sizes), None, None), Limits.from_config(cfg.limits, cfg.magickd))
    outs = pipeline.render(PHOTO.read_bytes(), options)
    for out in outs:
        assert (frame_type(out.data) == "SOF2") == out.target.profile.progressive, out.target.name


class RecordingClient:
    """Stands in for magickd's client: records what ypfs asks for (the request, not a render)."""

    def __init__(self):
        self.calls: list[tuple[str, tuple[str, ...] | None]] = []
        self.called = threading.Event()

    def render(self, ref: PhotoRef, sizes=None, **_kw):
        self.calls.append((ref.photo_id, None if sizes is None else tuple(sizes)))
        self.called.set()
        return []


def _upload(tmp_path, eager: dict[str, bool]) -> tuple[RecordingClient, str]:
    tree = cluster_tree(tmp_path)
    for entry in tree["sizes"]:
        entry["eager"] = eager.get(entry["name"], entry.get("eager", True))
    cfg = from_dict(tree)
    store = LocalStore(cfg.local_root)
    user = UserRecord("ann")
    token = user.new_token()
    user.save(store)
    client = RecordingClient()
    notifier = RenderNotifier(client, 1, eager_sizes(cfg.sizes))
    app = testing.TestClient(ypfs_app(cfg, store, "ypfs1", notifier=notifier))
    body, content_type = urllib3.encode_multipart_formdata({"photo": ("a.jpg", PHOTO.read_bytes(), "image/jpeg")})
    r = app.simulate_post("/upload", body=body, headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    return client, r.json["id"]


def test_ypfs_asks_only_for_the_eager_sizes(tmp_path):
    client, photo_id = _upload(tmp_path, {"medium": False, "xlarge": False})
    assert client.called.wait(10)
    assert client.calls == [(photo_id, ("square", "thumb", "small", "large"))]


def test_with_every_size_on_demand_nothing_is_asked_for(tmp_path):
    client, _ = _upload(tmp_path, {n: False for n in ("square", "thumb", "small", "medium", "large", "xlarge")})
    assert not client.called.wait(1.0)
    assert client.calls == []


@pytest.mark.slow
def test_an_on_demand_size_is_rendered_on_its_first_view(tmp_path):
    tree = cluster_tree(tmp_path, overrides={"ypws": {"workers": 1}, "magickd": {"workers": 1},
                                             "hashproxy": {"workers": 1}, "ypfs": {"workers": 1}})
    for entry in tree["sizes"]:
        entry["eager"] = entry["name"] not in ("medium", "xlarge")
    cfg, path = write_config(tmp_path, tree)
    log = tmp_path / "cluster.log"
    proc = procs.start(procs.python_module("cluster", "run", "--config", str(path)), log=log,
                       env={"PYTHONPATH": str(REPO)}, cwd=str(REPO))
    try:
        deadline = time.monotonic() + 120
        while "Cluster is up" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        token = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "user", "add", "ann"],
                               capture_output=True, text=True, cwd=REPO, timeout=60,
                               env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
        r = requests.post(f"{cfg.public_url}/upload", files={"photo": ("c.jpg", PHOTO.read_bytes())},
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert r.status_code == 201, r.text
        photo = r.json()
        ref = PhotoRef("ann", photo["id"], photo["secret"])
        store = open_store(cfg.storage, cfg.local_root)

        def key(name: str) -> str:
            profile = cfg.size(name)
            return ref.rendition_key(name, profile.version, profile.format)

        eager = [p.name for p in cfg.sizes if p.eager]
        deadline = time.monotonic() + 60
        while not all(store.exists(key(n)) for n in eager):
            assert time.monotonic() < deadline, [n for n in eager if not store.exists(key(n))]
            time.sleep(0.1)
        time.sleep(0.5)  # the after-upload request is done (its sizes are all stored): nothing else comes
        assert not store.exists(key("medium")) and not store.exists(key("xlarge"))

        first = requests.get(photo["urls"]["xlarge"], timeout=60)
        assert first.status_code == 200 and first.headers["X-Cache"] == "MISS", first.text[:300]
        with Image.open(io.BytesIO(first.content)) as im:
            assert (im.format, im.size) == ("JPEG", (1536, 2048))  # portrait once upright, never upscaled
        assert frame_type(first.content) == "SOF2"
        assert store.exists(key("xlarge"))  # rendered on demand, and kept
        again = requests.get(photo["urls"]["xlarge"], timeout=60)
        assert again.status_code == 200 and again.headers["X-Cache"] == "HIT" and again.content == first.content
        assert not store.exists(key("medium"))  # only what was viewed
    finally:
        procs.stop(proc, timeout=30)


def test_verify_and_rerender_leave_an_unviewed_on_demand_size_alone(tmp_path):
    """verify does not call a never-viewed on-demand size missing (an eager one it does), and
    rerender skips the photos that do not have it (it would make every photo pay for it)."""
    from magickd.rerender import Rerenderer, RerenderJob
    from magickd.verify import Verifier

    from .helpers import seed_photo

    cfg = from_dict(cluster_tree(tmp_path))
    store = LocalStore(cfg.local_root)
    rec = seed_photo(store, "ann", PHOTO)
    eager = [p.name for p in cfg.sizes if p.eager]
    assert "xlarge" not in eager  # the default: rendered on its first view
    options = RenderOptions(parse_targets(by_name(cfg.sizes), eager, None), Limits.from_config(cfg.limits, cfg.magickd))
    for out in pipeline.render(PHOTO.read_bytes(), options):
        store.put(rec.ref.rendition_key(out.target.name, out.target.version, out.target.fmt), out.data)
    verifier = Verifier(by_name(cfg.sizes), store, None)
    assert verifier.photo(rec.ref.record_key, repair=False).problems == []
    store.delete(rec.ref.rendition_key("small", cfg.size("small").version, "jpeg"))
    assert [(p.size, p.kind) for p in verifier.photo(rec.ref.record_key, repair=False).problems] == [("small", "missing")]
    rerenderer = Rerenderer(by_name(cfg.sizes), tmp_path / "rerender", store, None, None, progress=False)
    result = rerenderer.photo(RerenderJob("xlarge"), cfg.size("xlarge"), rec.ref.record_key)
    assert result.skipped and not result.rendered and not result.failure
