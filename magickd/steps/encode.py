"""Write the rendition: progressive JPEG, WebP, AVIF or PNG, with every piece of metadata dropped.

``keep=0`` (VipsForeignKeep NONE) leaves out EXIF (GPS included), XMP, IPTC and
the ICC profile; pixels are sRGB already, which is what an untagged web image means.
An Ultra HDR original's JPEG in a size with ``keep_gain_map`` is written with its gain
map instead (media.gainmap: baseline, plus the few tags libultrahdr writes; never GPS).
"""

from __future__ import annotations

import pyvips

from media import gainmap

from ..context import Output, RenderContext

KEEP_NONE = 0


def encode(ctx: RenderContext) -> None:
    image, target = ctx.encoded, ctx.target
    assert image is not None and target is not None
    q = target.profile.quality
    limits = ctx.options.limits
    image = ctx.deadline.watch(image)
    if target.fmt == "jpeg" and (hdr := _ultra_hdr(ctx, image)) is not None:
        ctx.outputs.append(Output(target, hdr, image.width, image.height))
        return
    if target.fmt == "jpeg":
        data = image.jpegsave_buffer(Q=q, interlace=True, optimize_coding=True, keep=KEEP_NONE)
    elif target.fmt == "webp":
        data = image.webpsave_buffer(Q=q, effort=limits.webp_effort, keep=KEEP_NONE)
    elif target.fmt == "avif":
        data = image.heifsave_buffer(Q=q, compression="av1", effort=limits.avif_effort, keep=KEEP_NONE)
    elif target.fmt == "png":
        data = image.pngsave_buffer(compression=6, keep=KEEP_NONE)
    else:  # options.parse_targets only lets configured formats through
        raise ValueError(f"no encoder for {target.fmt!r}")
    ctx.outputs.append(Output(target, data, image.width, image.height))


def _ultra_hdr(ctx: RenderContext, image: pyvips.Image) -> bytes | None:
    """The rendition as an Ultra HDR JPEG, for an HDR original in a size that keeps its gain map
    (and covers the whole image: a crop would need the gain map cut alike); else None."""
    target = ctx.target
    assert target is not None
    if ctx.gain_map is None or not target.profile.keep_gain_map or ctx.box.crops:
        return None
    return gainmap.encode_jpeg(image, ctx.gain_map, target.profile.quality)
