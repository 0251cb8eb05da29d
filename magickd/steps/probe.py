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

from media.jpeg import JpegStructureError, count_scans
from media.probe import ImageRejected, strict_check

from ..context import RenderContext, Source
from ..errors import TooLarge, TooManyScans, Undecodable, UnsupportedFormat

#: libvips loaders we trust with originals, and the format each one means
VIPS_LOADERS = {
    "jpegload_buffer": "jpeg", "pngload_buffer": "png", "gifload_buffer": "gif",
    "webpload_buffer": "webp", "tiffload_buffer": "tiff", "heifload_buffer": "avif",
    # an Ultra HDR JPEG (a gain map in an MPF secondary image): rendered from its SDR base image,
    # which every viewer shows (scale_on_load reads it with jpegload)
    "uhdrload_buffer": "jpeg",
}
#: formats the pyvips binary cannot decode, read with Pillow instead (Pillow format id -> ours):
#: HEIC, BMP, and AVIF image sequences (libheif in the pyvips wheel refuses them; the first
#: frame is rendered, as for every animated original)
PILLOW_FORMATS = {"HEIF": "heif", "BMP": "bmp", "AVIF": "avif"}
ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def probe(ctx: RenderContext) -> None:
    if not ctx.data:
        raise Undecodable("the original is empty")
    source = _vips_header(ctx.data) or _pillow_header(ctx.data)
    if source is None:
        raise UnsupportedFormat("the original is not an image in an accepted format")
    pixels = source.width * source.height * max(1, source.pages)
    if source.width <= 0 or source.height <= 0:
        raise Undecodable("the original declares no pixels")
    if pixels > ctx.options.limits.max_pixels:
        raise TooLarge(f"{source.width}x{source.height}x{source.pages} pixels is over the limit of "
                       f"{ctx.options.limits.max_pixels}")
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
    fmt = VIPS_LOADERS.get(loader)
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

    from ..pillow_decode import register_heif

    register_heif()
    try:
        with Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS)) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            if orientation in ROTATED:
                w, h = h, w
            return Source("pillow", PILLOW_FORMATS[im.format], w, h, getattr(im, "n_frames", 1) or 1)
    except Exception:  # Pillow raises many types for bad input (see ../shared/corpus/README.md)
        return None


def _get(image: pyvips.Image, name: str, default):
    try:
        return image.get(name) if image.get_typeof(name) else default
    except pyvips.Error:
        return default
