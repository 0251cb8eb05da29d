"""Run the decode now, into memory, under the deadline: the one expensive read of the original.

Every size is then cut from this buffer, so the original is decoded exactly once,
and a corrupt or truncated original fails here, before anything is written.
A large original's decode (a progressive 24 MP JPEG holds ~72 MB of coefficients)
starts from a trimmed heap, so the worker's peak is this render's, not this render
on top of the free pages earlier renders left behind; small renders reuse those
pages instead of faulting fresh ones in.
"""

from __future__ import annotations

from .. import vips_setup
from ..context import RenderContext

LARGE_SOURCE = 12_000_000  # pixels


def materialize(ctx: RenderContext) -> None:
    assert ctx.base is not None and ctx.source is not None
    if ctx.source.width * ctx.source.height >= LARGE_SOURCE:
        vips_setup.release_memory(keep=0)
    ctx.base = ctx.deadline.watch(ctx.base).copy_memory()
    ctx.intermediates = [ctx.base]
