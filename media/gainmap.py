"""Ultra HDR: carry an original's gain map into the renditions that are worth the bytes.

An Ultra HDR JPEG is an ordinary SDR JPEG plus a small secondary image, the gain
map (in an MPF secondary image, described by ``hdrgm`` XMP and ISO 21496-1
metadata): SDR viewers show the base image, HDR screens raise it by the gain map.
libvips 8.18 reads it with ``uhdrload`` (the gain map arrives as the ``gainmap``
image and the ``gainmap-*`` fields) and its ``thumbnail_image`` shrinks, turns
and crops the gain map along with the base. Every other operation copies the
gain map unchanged, which after a resize no longer matches the pixels.

So the render pipeline takes the gain map off the decoded base (``detach``): the
steps after it see a plain SDR image, exactly as for any other JPEG, and every
rendition without a gain map stays as it was (``keep=0`` writes no metadata).
A size that keeps the gain map gets it resized to its own geometry at the
moment it is encoded (``encode_jpeg``): the gain map keeps the original's
proportion to the image (a quarter of each side for most cameras), and
``uhdrsave`` (libultrahdr) writes base and gain map as one Ultra HDR JPEG
without recomputing anything, so the tone mapping the camera chose is kept.

libultrahdr writes baseline JPEG (no progressive option), an sRGB ICC profile
and a few EXIF fields of its own (resolution, orientation 1, colour space;
nothing of the camera, never GPS); WebP, AVIF and PNG renditions are SDR only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyvips

#: VipsForeignKeep GAINMAP: the only metadata an Ultra HDR rendition keeps
KEEP_GAIN_MAP = 32
_IMAGE_FIELD, _DATA_FIELD = "gainmap", "gainmap-data"


@dataclass(frozen=True)
class GainMap:
    """The gain map of the decoded base image (in memory) and the ``gainmap-*`` fields that
    say how to apply it (content boost, gamma, offsets, HDR capacity)."""

    image: pyvips.Image
    base_width: int
    base_height: int
    fields: tuple[tuple[str, int, Any], ...]  # (name, GType, value)


def detach(image: pyvips.Image) -> tuple[pyvips.Image, GainMap | None]:
    """``image`` without its gain map, and the gain map (None when it has none or an
    unreadable one: the rendition is then SDR, as every viewer sees it anyway)."""
    names = [f for f in image.get_fields() if f.startswith(_IMAGE_FIELD)]
    if not names:
        return image, None
    try:
        gain = image.get_gainmap()
        gain = gain.copy_memory() if gain is not None else None
    except pyvips.Error:
        gain = None
    fields = tuple((f, image.get_typeof(f), image.get(f)) for f in names if f not in (_IMAGE_FIELD, _DATA_FIELD))
    plain = image.copy()
    for name in names:
        plain.remove(name)
    if gain is None:
        return plain, None
    return plain, GainMap(gain, image.width, image.height, fields)


def encode_jpeg(image: pyvips.Image, gain: GainMap, quality: int) -> bytes:
    """``image`` (the base cut to one rendition's size, sRGB) as an Ultra HDR JPEG carrying
    ``gain`` resized to match it. Only for images that cover the whole base (no crop)."""
    w = max(1, round(gain.image.width * image.width / gain.base_width))
    h = max(1, round(gain.image.height * image.height / gain.base_height))
    resized = gain.image
    if (w, h) != (resized.width, resized.height):
        resized = resized.resize(w / resized.width, vscale=h / resized.height, )
    out = image.copy()
    for name, gtype, value in gain.fields:
        out.set_type(gtype, name, value)
    out.set_type(pyvips.GValue.image_type, _IMAGE_FIELD, resized)
    return out.uhdrsave_buffer(Q=quality, keep=KEEP_GAIN_MAP)
