"""Decode the original once, shrinking while it loads to the largest size any target needs.

libvips' thumbnail does the shrink-on-load (JPEG DCT scaling, WebP/AVIF scaled
decode), turns the image upright from its EXIF orientation and converts an
embedded ICC profile (Adobe RGB, CMYK, P3, ...) to sRGB; CMYK without a profile
gets libvips' fallback CMYK profile; untagged RGB is taken as sRGB.
``fail_on=warning`` (as strict as ypfs' upload check) makes truncated or
corrupt data an error instead of grey fill. Only the first frame/page is loaded.

A JPEG is DCT-scaled by the largest power of two that still leaves the largest
box covered ("one shrink-on-load decode for the largest size asked"), then
resized by ``thumbnail_image``. libvips' own thumbnail keeps a 2x margin above
the target instead (a 24 MP photo for a 2048 box gets a full decode); the
renditions of the two differ by ~50 dB PSNR, while the full decode costs ~35%
more time and ~16 MB more peak memory per 24 MP render (bench_magickd).

An Ultra HDR JPEG, when some size keeps its gain map, is read with ``uhdrload``
instead (the same DCT shrink): libvips' thumbnail shrinks and turns the gain map
with the base, and media.gainmap takes it off, so every later step sees the same
plain SDR image as for any JPEG. Decoders and strictness are media.decode's.
"""

from __future__ import annotations

import pyvips

from media.decode import STRICT, decode_with_pillow
from media.errors import ImageRejected
from media.gainmap import GainMap, detach

from ..context import RenderContext
from ..errors import Undecodable


def scale_on_load(ctx: RenderContext) -> None:
    source = ctx.source
    assert source is not None
    base_w = max(b.resize_w for b in ctx.boxes.values())
    base_h = max(b.resize_h for b in ctx.boxes.values())
    if source.loader == "vips":
        # output_profile: without it libvips converts only CMYK and leaves e.g. Adobe RGB as it is;
        # it is given only with an embedded profile (on an untagged image it costs ~10x the decode)
        icc = {"output_profile": "srgb"} if source.has_icc else {}
        if source.fmt == "jpeg":
            shrink = jpeg_shrink(source.width, source.height, base_w, base_h)
            if source.ultra_hdr and _wants_gain_map(ctx):
                ctx.base, ctx.gain_map = _ultra_hdr(ctx.data, shrink, base_w, base_h, icc)
                if ctx.base is not None:
                    return
            # jpegload, not whatever loader sniffs first: an Ultra HDR JPEG is its SDR base image here
            image = pyvips.Image.jpegload_buffer(ctx.data, shrink=shrink, fail_on=STRICT, access="sequential")
            ctx.base = image.thumbnail_image(base_w, height=base_h, size="down", **icc)
        else:
            ctx.base = pyvips.Image.thumbnail_buffer(
                ctx.data, base_w, height=base_h, size="down", option_string=f"fail_on={STRICT}", **icc)
        return
    try:
        image = decode_with_pillow(ctx.data, source.fmt)
    except ImageRejected as exc:
        raise Undecodable(str(exc)) from None
    if image.get_typeof("icc-profile-data"):
        image = image.icc_transform("srgb", embedded=True)
    ctx.base = image.thumbnail_image(base_w, height=base_h, size="down")


def _wants_gain_map(ctx: RenderContext) -> bool:
    return any(t.fmt == "jpeg" and t.profile.keep_gain_map and not ctx.boxes[t.name].crops for t in ctx.options.targets)


def _ultra_hdr(data: bytes, shrink: int, box_w: int, box_h: int, icc: dict) -> tuple[pyvips.Image | None, GainMap | None]:
    """The SDR base and its gain map, both shrunk (and turned upright) together by libvips;
    (None, None) when libultrahdr cannot read the file, whose base JPEG is then rendered alone
    (it passed the same checks as any JPEG: an accepted photo always renders)."""
    try:
        image = pyvips.Image.uhdrload_buffer(data, shrink=shrink, fail_on=STRICT, access="sequential")
        return detach(image.thumbnail_image(box_w, height=box_h, size="down", **icc))
    except pyvips.Error:
        return None, None


def jpeg_shrink(width: int, height: int, box_w: int, box_h: int) -> int:
    """The largest DCT scale (1, 2, 4 or 8) whose decode still covers a box_w x box_h box."""
    shrink = 1
    while shrink < 8 and width // (shrink * 2) >= box_w and height // (shrink * 2) >= box_h:
        shrink *= 2
    return shrink
