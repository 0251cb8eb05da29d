"""Helpers for the magickd tests: Pillow-side checks, independent of the render engine."""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageOps, ImageStat


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel (0..255) of two images of one size, as RGB."""
    a, b = a.convert("RGB"), b.convert("RGB")
    assert a.size == b.size, (a.size, b.size)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def has_metadata(data: bytes, im: Image.Image) -> list[str]:
    """Which kinds of metadata the encoded file still carries (empty list: none)."""
    found = []
    if im.info.get("exif") or len(im.getexif()):
        found.append("exif")
    if b"Exif\x00\x00" in data:
        found.append("exif-marker")
    if b"GPS" in data and b"Exif" in data:
        found.append("gps")
    if b"http://ns.adobe.com/xap/1.0/" in data or im.info.get("xmp"):
        found.append("xmp")
    if im.info.get("icc_profile"):
        found.append("icc")
    return found


def pillow_reference(path, size: tuple[int, int]) -> Image.Image:
    """The source upright (EXIF applied) and resized by Pillow, to compare renders against."""
    with Image.open(path) as im:
        im.seek(0)
        up = ImageOps.exif_transpose(im.convert("RGB"))
        return up.resize(size, Image.Resampling.LANCZOS)


def start_magickd(services, cfg, config_path, name: str | None = None):
    """Start a real magickd node (gunicorn) under ``services`` and wait for its /healthz."""
    node = cfg.node("magickd", name) if name else cfg.magickd.nodes[0]
    services.start_module(node.name, "magickd", "serve", "--node", node.name, config_path=config_path,
                          health_url=f"{node.url}/healthz")
    return node


def render_service(cfg, store, node: str = "magickd1"):
    """The node's ``RenderService`` in-process, from ``cfg``'s sections as ``magickd serve`` builds it."""
    from cluster.profiles import by_name
    from magickd.service import RenderService, node_dir

    return RenderService.for_node(cfg.magickd, cfg.limits, by_name(cfg.sizes), node_dir(cfg.data_dir, node), store)


def render_app(cfg, store, node: str = "magickd1", service=None):
    """The node's falcon app in-process (over ``service``, else ``render_service``)."""
    from magickd.app import create_app

    return create_app(service or render_service(cfg, store, node), node, cfg.cluster.admin_token)
