"""Read the original's header only: accepted format, upright size, and the pixel limit.

Nothing is decoded here, so a 4-gigapixel PNG bomb costs a header parse and is
refused before any pixel buffer exists; a JPEG's markers are walked too, so a
scan bomb (media.jpeg) is refused before libjpeg spends seconds on it. The
format is decided by content, not by the record or a file name, and only the
formats the cluster accepts pass.
"""

from __future__ import annotations

import io

import pyvips

from media.decode import PILLOW_DECODED, check_budget, register_heif
from media.errors import ImageRejected
from media.formats import BY_VIPS_LOADER
from media.jpeg import JpegStructureError, count_scans
from media.probe import strict_check

from ..context import RenderContext, Source
from ..errors import TooLarge, TooManyScans, Undecodable, UnsupportedFormat

ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def probe(ctx: RenderContext) -> None:
    if not ctx.data:
        raise Undecodable("the original is empty")
    source = _vips_header(ctx.data) or _pillow_header(ctx.data)
    if source is None:
        raise UnsupportedFormat("the original is not an image in an accepted format")
    try:  # the upload check's budgets (media.decode), against the render pool's pixel limit
        check_budget(source.width, source.height, source.pages, ctx.options.limits.max_pixels)
    except ImageRejected as exc:
        raise (Undecodable if exc.code == "undecodable" else TooLarge)(str(exc)) from None
    if source.fmt == "jpeg":
        try:
            count_scans(ctx.data)
        except JpegStructureError as exc:
            raise (TooManyScans if exc.code == "too_many_scans" else Undecodable)(str(exc)) from None
    try:  # what libvips tolerates and an upload is refused for (damaged chunks, truncated GIF data)
        strict_check(ctx.data, source.fmt, ctx.options.limits.upload)
    except ImageRejected as exc:
        raise Undecodable(str(exc)) from None
    ctx.source = source


def _vips_header(data: bytes) -> Source | None:
    try:
        image = pyvips.Image.new_from_buffer(data, "")
        loader = image.get("vips-loader")
    except pyvips.Error:
        return None
    fmt = BY_VIPS_LOADER.get(loader)
    if fmt is None:
        raise UnsupportedFormat(f"originals read by {loader} are not accepted")
    if fmt == "avif" and _get(image, "heif-compression", "av1") != "av1":
        return None  # HEIC (HEVC): the libvips build has no decoder for it; Pillow has
    pages = _get(image, "n-pages", 1) or 1
    orientation = _get(image, "orientation", 1)
    w, h = image.width, image.height
    if orientation in ROTATED:
        w, h = h, w
    return Source("vips", fmt, w, h, pages, has_icc=bool(image.get_typeof("icc-profile-data")),
                  ultra_hdr=loader == "uhdrload_buffer")


def _pillow_header(data: bytes) -> Source | None:
    from PIL import Image

    register_heif()
    try:
        with Image.open(io.BytesIO(data), formats=list(PILLOW_DECODED)) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            if orientation in ROTATED:
                w, h = h, w
            return Source("pillow", PILLOW_DECODED[im.format], w, h, getattr(im, "n_frames", 1) or 1)
    except Exception:  # Pillow raises many types for bad input (see ../shared/corpus/README.md)
        return None


def _get(image: pyvips.Image, name: str, default):
    try:
        return image.get(name) if image.get_typeof(name) else default
    except pyvips.Error:
        return default
