"""Decoding the two formats the pyvips binary cannot read (HEIC/HEVC and BMP) with Pillow.

The pixels are handed to pyvips straight away, so the rest of the pipeline is
the same for every original. Decompression-bomb warnings are errors here, and
the size was already checked against the pixel limit from the header.
"""

from __future__ import annotations

import io
import warnings

import pyvips

from .errors import Undecodable

_heif_registered = False
#: Pillow mode -> (mode to convert to, bands, libvips interpretation)
MODES = {"RGB": ("RGB", 3, "srgb"), "RGBA": ("RGBA", 4, "srgb"), "L": ("L", 1, "b-w"), "LA": ("LA", 2, "b-w")}


def register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _heif_registered = True


def decode(data: bytes, formats: list[str]) -> pyvips.Image:
    """The first frame, upright, 8-bit, as a pyvips image carrying the original's ICC profile."""
    from PIL import Image, ImageOps

    register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=formats) as im:
                im.load()
                icc = im.info.get("icc_profile")
                upright = ImageOps.exif_transpose(im)
                mode = upright.mode if upright.mode in MODES else ("RGBA" if "A" in upright.getbands() else "RGB")
                pixels = upright.convert(MODES[mode][0]) if upright.mode != mode else upright
                width, height = pixels.size
                raw = pixels.tobytes()
    except Exception as exc:  # Pillow raises many types for bad input (see ../shared/corpus/README.md)
        raise Undecodable(f"cannot decode the original: {exc.__class__.__name__}: {exc}") from None
    _, bands, interpretation = MODES[mode]
    image = pyvips.Image.new_from_memory(raw, width, height, bands, "uchar").copy(interpretation=interpretation)
    if icc:
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    return image
