"""Compute every target's geometry once, from the upright source size, before any pixels move."""

from __future__ import annotations

from cluster.profiles import box_for

from ..context import RenderContext


def prepare(ctx: RenderContext) -> None:
    assert ctx.source is not None
    for target in ctx.options.targets:
        ctx.boxes[target.name] = box_for(target.profile, ctx.source.width, ctx.source.height)
