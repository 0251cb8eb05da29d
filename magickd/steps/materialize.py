"""Run the decode now, into memory, under the deadline: the one expensive read of the original.

Every size is then cut from this buffer, so the original is decoded exactly once,
and a corrupt or truncated original fails here, before anything is written.
"""

from __future__ import annotations

from ..context import RenderContext


def materialize(ctx: RenderContext) -> None:
    assert ctx.base is not None
    ctx.base = ctx.deadline.watch(ctx.base).copy_memory()
    ctx.intermediates = [ctx.base]
