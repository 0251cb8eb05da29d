"""The small image served instead of a hotlinked one (``hotlink_action = "placeholder"``)."""

from __future__ import annotations

import functools
import io


@functools.lru_cache(maxsize=1)
def placeholder_png(width: int = 160, height: int = 48) -> bytes:
    """A grey PNG saying where the photo lives: made once per process with Pillow."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), (224, 224, 224))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, width - 1, height - 1), outline=(160, 160, 160))
    draw.text((10, 10), "Photo hosted on Yupoo", fill=(64, 64, 64))
    draw.text((10, 26), "(embedding not allowed)", fill=(96, 96, 96))
    out = io.BytesIO()
    im.save(out, "PNG", optimize=True)
    return out.getvalue()
