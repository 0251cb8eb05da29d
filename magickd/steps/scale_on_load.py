"""Decode the original once, shrinking while it loads to the largest size any target needs.

libvips' thumbnail does the shrink-on-load (JPEG DCT scaling, WebP/AVIF scaled
decode), turns the image upright from its EXIF orientation and converts an
embedded ICC profile (Adobe RGB, CMYK, P3, ...) to sRGB; CMYK without a profile
gets libvips' fallback CMYK profile; untagged RGB is taken as sRGB.
``fail_on=warning`` (as strict as ypfs' upload check) makes truncated or
corrupt data an error instead of grey fill. Only the first frame/page is loaded.
Originals libvips cannot read (HEIC, BMP, and JPEGs it refuses: see
``tolerant_jpeg``) are decoded by Pillow instead.
"""

from __future__ import annotations

import dataclasses

import pyvips

from .. import pillow_decode
from ..context import RenderContext

#: Pillow format ids per original format, for the originals Pillow decodes
PILLOW_IDS = {"heif": ["HEIF"], "bmp": ["BMP"], "jpeg": ["JPEG", "MPO"]}


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
    image = pillow_decode.decode(ctx.data, PILLOW_IDS[source.fmt], at_least=max(base_w, base_h))
    if image.get_typeof("icc-profile-data"):
        image = image.icc_transform("srgb", embedded=True, input_profile="cmyk" if image.interpretation == "cmyk" else "srgb")
    elif image.interpretation == "cmyk":
        image = image.icc_transform("srgb", input_profile="cmyk")
    ctx.base = image.thumbnail_image(base_w, height=base_h, size="down")


def tolerant_jpeg(ctx: RenderContext) -> bool:
    """After libvips refused a JPEG: switch the source to Pillow and say whether to decode again.

    libjpeg reports "extraneous bytes before marker" or a scan ending early as a
    warning; with fail_on=warning libvips refuses such a file, while Pillow
    decodes it (what it cannot decode ypfs never accepted). Decoding it rather
    than failing keeps the promise that an accepted photo renders.
    """
    source = ctx.source
    if source is None or source.loader != "vips" or source.fmt != "jpeg" or ctx.deadline.expired:
        return False
    ctx.source = dataclasses.replace(source, loader="pillow")
    ctx.base = None
    return True
