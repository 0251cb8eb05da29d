"""Decode the original once, shrinking while it loads to the largest size any target needs.

libvips' thumbnail does the shrink-on-load (JPEG DCT scaling, WebP/AVIF scaled
decode), turns the image upright from its EXIF orientation and converts an
embedded ICC profile (Adobe RGB, CMYK, P3, ...) to sRGB; CMYK without a profile
gets libvips' fallback CMYK profile; untagged RGB is taken as sRGB.
``fail_on=warning`` (as strict as ypfs' upload check) makes truncated or
corrupt data an error instead of grey fill. Only the first frame/page is loaded.
"""

from __future__ import annotations

import pyvips

from .. import pillow_decode
from ..context import RenderContext
from .probe import PILLOW_FORMATS


def scale_on_load(ctx: RenderContext) -> None:
    source = ctx.source
    assert source is not None
    base_w = max(b.resize_w for b in ctx.boxes.values())
    base_h = max(b.resize_h for b in ctx.boxes.values())
    if source.loader == "vips":
        # output_profile: without it libvips converts only CMYK and leaves e.g. Adobe RGB as it is;
        # it is given only with an embedded profile (on an untagged image it costs ~10x the decode)
        icc = {"output_profile": "srgb"} if source.has_icc else {}
        ctx.base = pyvips.Image.thumbnail_buffer(
            ctx.data, base_w, height=base_h, size="down", option_string="fail_on=warning", **icc)
        return
    formats = [k for k, v in PILLOW_FORMATS.items() if v == source.fmt]
    image = pillow_decode.decode(ctx.data, formats)
    if image.get_typeof("icc-profile-data"):
        image = image.icc_transform("srgb", embedded=True)
    ctx.base = image.thumbnail_image(base_w, height=base_h, size="down")
