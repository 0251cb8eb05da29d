"""What a page shows before a photo arrives: its ThumbHash and its dominant colour.

Both come from one tiny rendition (at most ``TINY`` px a side, sRGB, alpha kept,
EXIF orientation applied): the format's own loader, a JPEG shrunk on load as the
upload check decodes it (a 24 MP photo at 1/8 scale), a box shrink to a preview of a
few times ``TINY`` (``preview``), then libvips' ``thumbnail_image``. At upload the
image is decoded once: the check's strict decode (media.probe) is what makes the
preview, which had cost a second decode as long as the check's own. The library and
the loader are the decode policy's (media.formats, media.decode): BMP, HEIC and AVIF
sequences go through Pillow, with the format's own Pillow ids, and animations show
their first frame, decoded apart.

ThumbHash (Evan Wallace's algorithm, MIT; https://evanw.github.io/thumbhash/) keeps
a few DCT coefficients of the colour (L, P, Q) and alpha channels in ~25 bytes,
and also the aspect ratio and the average colour. The encoder below follows the
reference ``rgbaToThumbHash`` step for step (JavaScript's round-half-up included;
the DCT sums are separable, so a column pass then a row pass, which only reorders
additions). It is written out here because no maintained Python package fits:
``thumbhash`` (0.1.2) breaks on images with alpha (an operator-precedence slip)
and ships a broken decoder, ``thumbhash-python`` pins Pillow < 11, and
``fast-thumbhash`` (the official Rust crate, bound with PyO3) has wheels only for
CPython 3.11 and 3.12 on x86-64 and no source release. The tests hold this encoder
to that crate. The hash keeps at most 7 coefficients a side, so a 32 px rendition
loses nothing of it against the 100 px the reference allows, at a tenth of the
pure-Python cost (1-2 ms).

The dominant colour is found on a coarse histogram of the tiny rendition's pixels
that are at least half opaque (all pixels when none is): 3 bits per channel, 512
bins. The winning bin is the one whose neighbourhood (itself and the 26 bins around
it) holds the most pixels; ties go to the fuller bin, then the lower one. That
way a wide gradient of near colours (a sky, a wall) outweighs one small vivid
patch, as it does to the eye, and a smooth gradient does not pick an arbitrary
end of itself. It is reported as the mean of the winning bin's pixels, a colour
the photo really has (not a bin corner), as ``#rrggbb``. Unlike the average,
which turns a red and blue photo purple, it is a colour one sees in the photo:
what a box shows at once, before any script runs.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyvips

from .decode import check_shrink, killed_after, register_heif
from .formats import FORMATS, pillow_ids

log = logging.getLogger("media.placeholders")

#: longest side, in pixels, of the rendition both values are computed from
TINY = 32
#: the preview's longest side is at least this many times TINY (thumbnail_image then
#: resamples it the rest of the way, with a proper kernel)
PREVIEW_TIMES = 4

Source = str | Path | bytes


@dataclass(frozen=True)
class Placeholder:
    thumbhash: str  # base64 (standard alphabet, padded) of the ThumbHash bytes
    color: str      # "#rrggbb"


def placeholder_for(src: Source, fmt: str, timeout: float) -> Placeholder | None:
    """The placeholder of an image already accepted as ``fmt``; None (logged) if it cannot be
    made. Never raises for a bad image: a photo without a placeholder is still a photo."""
    return _made(fmt, lambda: tiny_rgba(src, fmt, timeout))


def placeholder_from(small: pyvips.Image, fmt: str) -> Placeholder | None:
    """The placeholder from the preview the upload check made (media.probe): no second decode.
    The same pixels as ``placeholder_for`` of the same image, so the same values."""
    return _made(fmt, lambda: _tiny(small))


def _made(fmt: str, tiny: Callable[[], tuple[int, int, bytes]]) -> Placeholder | None:
    try:
        w, h, rgba = tiny()
        return Placeholder(base64.b64encode(rgba_to_thumbhash(w, h, rgba)).decode("ascii"), dominant_color(rgba))
    except Exception as exc:  # pyvips.Error, Pillow's OSError/ValueError..., a timeout
        log.warning("no placeholder for a %s image: %s", fmt, str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return None


def tiny_rgba(src: Source, fmt: str, timeout: float) -> tuple[int, int, bytes]:
    """(width, height, RGBA bytes) of the image fitted into TINY x TINY, in sRGB."""
    spec = FORMATS[fmt]
    if spec.library == "pillow":
        return _pillow_tiny(src, fmt)
    try:
        return _vips_tiny(src, fmt, spec.vips_loaders[0], timeout)
    except pyvips.Error:
        if spec.pillow_fallback:  # e.g. AVIF sequences, which libheif in the wheel refuses
            return _pillow_tiny(src, fmt)
        raise


def preview(image: pyvips.Image) -> pyvips.Image:
    """A box shrink of a just-loaded image to a few times TINY: a plain average of every
    pixel, no colour work, so evaluating it decodes the whole image and can fail only as the
    decode fails (the upload check evaluates it as its decode, media.probe)."""
    factor = max(1, max(image.width, image.height) // (TINY * PREVIEW_TIMES))
    return image.shrink(factor, factor) if factor > 1 else image


def _vips_tiny(src: Source, fmt: str, loader_name: str, timeout: float) -> tuple[int, int, bytes]:
    # the format's own loader (never libvips' sniffing: an Ultra HDR JPEG is its SDR base here),
    # shrunk on load exactly as the upload check decodes, so both make the same preview
    data = src if isinstance(src, bytes) else str(src)
    loader = getattr(pyvips.Image, loader_name + ("_buffer" if isinstance(src, bytes) else ""))
    opts: dict = {"access": "sequential"}
    if loader_name == "jpegload":
        header = loader(data, access="sequential")
        if (shrink := check_shrink(fmt, header.width, header.height)) > 1:
            opts["shrink"] = shrink
    image = loader(data, **opts)
    with killed_after(image, timeout):
        small = preview(image).copy_memory()
    return _tiny(small)


def _tiny(small: pyvips.Image) -> tuple[int, int, bytes]:
    # thumbnail_image shrinks the preview the rest of the way, turns it upright from its EXIF
    # orientation and converts an embedded ICC profile to sRGB
    icc = {"output_profile": "srgb"} if small.get_typeof("icc-profile-data") else {}
    image = small.thumbnail_image(TINY, height=TINY, size="down", **icc)
    if image.interpretation != "srgb" or image.format != "uchar":
        image = image.colourspace("srgb")  # grey, 16-bit, CMYK...: 8-bit sRGB, alpha kept
    if image.bands == 3:
        image = image.bandjoin(255)
    elif image.bands > 4:
        image = image.extract_band(0, n=4)
    image = image.cast("uchar")
    return image.width, image.height, bytes(image.write_to_memory())


def _pillow_tiny(src: Source, fmt: str) -> tuple[int, int, bytes]:
    """Pillow's way, for what the decode policy gives Pillow (media.decode): the first frame,
    reduced as it loads where the plugin can, upright, its ICC profile converted to sRGB."""
    from PIL import Image, ImageCms, ImageOps

    register_heif()
    fh = io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")
    with fh, Image.open(fh, formats=pillow_ids(fmt)) as im:
        im.thumbnail((TINY, TINY))
        im = ImageOps.exif_transpose(im)
        icc = im.info.get("icc_profile")
        im = im.convert("RGBA")
        if icc:
            try:
                im = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                               ImageCms.createProfile("sRGB"), outputMode="RGBA")
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass  # an unreadable profile: the numbers as they are
        return im.width, im.height, im.tobytes()


def _round(x: float) -> int:
    """JavaScript's Math.round (halves up), as the reference encoder rounds."""
    return math.floor(x + 0.5)


def rgba_to_thumbhash(w: int, h: int, rgba: bytes) -> bytes:
    """The ThumbHash of a w x h RGBA image (w, h <= 100), as the reference encoder makes it."""
    if not (0 < w <= 100 and 0 < h <= 100):
        raise ValueError(f"{w}x{h} does not fit in 100x100")
    n = w * h
    if len(rgba) != 4 * n:
        raise ValueError(f"{len(rgba)} bytes are not a {w}x{h} RGBA image")
    alpha = [v / 255 for v in rgba[3::4]]
    avg_a = sum(alpha)
    avg = [sum(a / 255 * v for a, v in zip(alpha, rgba[c::4])) for c in range(3)]
    if avg_a:
        avg = [v / avg_a for v in avg]
    has_alpha = avg_a < n
    l_limit = 5 if has_alpha else 7
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    # each colour composited over the average colour where it is transparent
    r, g, b = ([avg[c] * (1 - a) + a / 255 * v for a, v in zip(alpha, rgba[c::4])] for c in range(3))
    lum = [(x + y + z) / 3 for x, y, z in zip(r, g, b)]
    p = [(x + y) / 2 - z for x, y, z in zip(r, g, b)]
    q = [x - y for x, y in zip(r, g)]

    def encode(channel: list[float], nx: int, ny: int) -> tuple[float, list[float], float]:
        dc, ac, scale = 0.0, [], 0.0
        for cy in range(ny):
            fy = [math.cos(math.pi / h * cy * (y + 0.5)) for y in range(h)]
            column = [0.0] * w  # sum over y of channel * cos(y), for every x
            for y in range(h):
                row, f = channel[y * w:(y + 1) * w], fy[y]
                column = [c + v * f for c, v in zip(column, row)]
            cx = 0
            while cx * ny < nx * (ny - cy):
                f = sum(c * math.cos(math.pi / w * cx * (x + 0.5)) for x, c in enumerate(column)) / n
                if cx or cy:
                    ac.append(f)
                    scale = max(scale, abs(f))
                else:
                    dc = f
                cx += 1
        if scale:
            ac = [0.5 + 0.5 / scale * f for f in ac]
        return dc, ac, scale

    l_dc, l_ac, l_scale = encode(lum, max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = encode(p, 3, 3)
    q_dc, q_ac, q_scale = encode(q, 3, 3)
    landscape = w > h
    header24 = (_round(63 * l_dc) | (_round(31.5 + 31.5 * p_dc) << 6) | (_round(31.5 + 31.5 * q_dc) << 12)
                | (_round(31 * l_scale) << 18) | (int(has_alpha) << 23))
    header16 = ((ly if landscape else lx) | (_round(63 * p_scale) << 3) | (_round(63 * q_scale) << 9)
                | (int(landscape) << 15))
    out = [header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8]
    acs = [l_ac, p_ac, q_ac]
    if has_alpha:
        a_dc, a_ac, a_scale = encode(alpha, 5, 5)
        out.append(_round(15 * a_dc) | (_round(15 * a_scale) << 4))
        acs.append(a_ac)
    nibbles = [_round(15 * f) for ac in acs for f in ac]
    nibbles += [0] * (len(nibbles) % 2)
    out += [lo | (hi << 4) for lo, hi in zip(nibbles[::2], nibbles[1::2])]
    return bytes(out)


def dominant_color(rgba: bytes) -> str:
    """``#rrggbb``: the mean of the bin with the fullest neighbourhood (see the module doc)."""
    pixels = list(zip(rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4]))
    if not pixels:
        raise ValueError("no pixels")
    counted = [px for px in pixels if px[3] >= 128] or pixels
    bins: dict[tuple[int, int, int], list[int]] = {}
    for r, g, b, _ in counted:
        acc = bins.setdefault((r >> 5, g >> 5, b >> 5), [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += r
        acc[2] += g
        acc[3] += b
    steps = (-1, 0, 1)

    def rank(key: tuple[int, int, int]) -> tuple[int, int, tuple[int, int, int]]:
        near = sum(bins[n][0] for dr in steps for dg in steps for db in steps
                   if (n := (key[0] + dr, key[1] + dg, key[2] + db)) in bins)
        return -near, -bins[key][0], key

    count, r, g, b = bins[min(bins, key=rank)]
    return "#{:02x}{:02x}{:02x}".format(*(_round(v / count) for v in (r, g, b)))
