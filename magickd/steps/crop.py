"""Cut the square (or any "fill" box) out of the resized image: attention or centre crop."""

from __future__ import annotations

from ..context import RenderContext

INTERESTING = {"attention": "attention", "centre": "centre"}


def crop(ctx: RenderContext) -> None:
    box = ctx.box
    assert ctx.image is not None and ctx.profile is not None
    if not box.crops:
        return
    ctx.image = ctx.image.smartcrop(box.out_w, box.out_h, interesting=INTERESTING[ctx.profile.crop],
                                    premultiplied=False)
