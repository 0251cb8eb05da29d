"""Helpers for the ypws tests: nodes on free ports, seeded renditions, decoding, log lines."""

from __future__ import annotations

import io
import json
import random
import socket
import time
from pathlib import Path

from PIL import Image

from cluster.config import Config
from cluster.profiles import SizeProfile, profile_version
from storage.records import PhotoRecord

from .helpers import Services, write_config


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def seed_rendition(store, cfg: Config, rec: PhotoRecord, size: str, fmt: str = "jpeg", source: Path | None = None) -> bytes:
    """Put a rendition straight into the store (made by Pillow, no magickd): for cache-only tests."""
    profile: SizeProfile = cfg.size(size)
    if source is not None:
        im = Image.open(source).convert("RGB")
        im.thumbnail((profile.width, profile.height))
    else:  # noise: incompressible, so sizes are realistic and no two renditions alike
        noise = random.Random(f"{rec.id}/{size}").randbytes(profile.width * profile.height * 3)
        im = Image.frombytes("RGB", (profile.width, profile.height), noise)
    out = io.BytesIO()
    im.save(out, {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "avif": "AVIF"}[fmt], quality=90)
    data = out.getvalue()
    store.put(rec.ref.rendition_key(size, profile_version(profile), fmt), data)
    return data


def wait_for(predicate, timeout: float = 10.0, step: float = 0.1):
    """Poll ``predicate`` until it returns something truthy (bounded in time); return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def access_lines(log_text: str) -> list[dict]:
    """The structured access-log records in a node's log (JSON objects, one per line)."""
    out = []
    for line in log_text.splitlines():
        if line.startswith('{"t":'):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled-or-node-labelled sample in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def raw_http(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes (for requests no client library would send) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def start_ypws(services: Services, tmp: Path, tree: dict, node: str = "ypws1", name: str | None = None):
    """Write ``tree`` as a config and start one ypws node of it; returns (cfg, config path)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg, path = write_config(tmp, tree)
    url = cfg.node("ypws", node).url
    services.start_module(name or node, "ypws", "serve", "--node", node, config_path=path, health_url=f"{url}/readyz")
    return cfg, path
