"""Resize to the profile's size from the nearest larger image already made (the cascade).

Targets run largest first, so 1024 comes from 2048, 500 from 1024 and so on:
each step shrinks an image a few times its output size, never the original.
Alpha is premultiplied around the resample so transparent edges do not darken.
"""

from __future__ import annotations

import pyvips

from ..context import RenderContext


def resize(ctx: RenderContext) -> None:
    box = ctx.box
    w, h = box.resize_w, box.resize_h
    source = min((im for im in ctx.intermediates if im.width >= w and im.height >= h),
                 key=lambda im: im.width * im.height, default=ctx.intermediates[0])
    if (source.width, source.height) == (w, h):
        ctx.image = source
        return
    ctx.image = ctx.deadline.watch(_exact(source, w, h)).copy_memory()
    ctx.intermediates.append(ctx.image)


def _exact(image: pyvips.Image, w: int, h: int) -> pyvips.Image:
    alpha = image.hasalpha()
    work = image.premultiply() if alpha else image
    work = work.resize(w / image.width, vscale=h / image.height, kernel="lanczos3")
    if alpha:
        work = work.unpremultiply().cast("uchar")
    if (work.width, work.height) != (w, h):  # rounding inside libvips: at most a pixel either way
        work = work.gravity("centre", w, h, extend="copy")
    return work
