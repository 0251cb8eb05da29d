"""Lay transparent pixels over white for formats without alpha (JPEG); WebP/PNG/AVIF keep it."""

from __future__ import annotations

from ..context import RenderContext

KEEPS_ALPHA = {"webp", "png", "avif"}
BACKGROUND = [255, 255, 255]


def flatten(ctx: RenderContext) -> None:
    assert ctx.image is not None and ctx.target is not None
    image = ctx.image
    if image.hasalpha() and ctx.target.fmt not in KEEPS_ALPHA:
        image = image.flatten(background=BACKGROUND)
    ctx.encoded = image
