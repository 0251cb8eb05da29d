"""Bring the decoded image to 8-bit sRGB (grey, 16-bit and odd band layouts included).

ICC conversion already happened on load; this covers images without a profile.
Alpha, if any, stays as the last band.
"""

from __future__ import annotations

from ..context import RenderContext


def to_srgb(ctx: RenderContext) -> None:
    image = ctx.base
    assert image is not None
    if image.format == "ushort" and image.interpretation not in ("rgb16", "grey16"):
        image = image.copy(interpretation="rgb16" if image.bands >= 3 else "grey16")
    if image.interpretation != "srgb" or image.bands not in (3, 4):
        image = image.colourspace("srgb")  # also scales 16-bit down to 8
    if image.format != "uchar":
        image = image.cast("uchar")
    if image.bands > 4:
        image = image.extract_band(0, n=4)
    ctx.base = image
