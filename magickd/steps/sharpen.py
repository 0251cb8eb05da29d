"""Unsharp mask from the profile's sigma and amount, as one small integer convolution.

``image + amount * (image - gaussian(sigma))`` folds into a single 3x3 (sigma
< 0.75) or 5x5 kernel applied to the colour bands in sRGB: a few ms on a 2048px
image, where libvips' ``sharpen`` (which works in Lab) costs tens of ms.

The kernel is built for libvips' vectorised integer path (~10x faster than its
general one), which does not apply a mask as given: it requantises the taps to
8-bit mantissas over one power-of-two exponent (``vips_convi_intize``), so a
kernel over 64 loses its small corner taps there and stops summing to one,
brightening flat areas by 6%, and a kernel it finds too inaccurate falls back
to the slow path. So the scale is the power of two that path uses for the
kernel's centre tap, and every tap is an integer it holds exactly: the
vectorised path, the general path and the kernel agree to the bit.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pyvips

from ..context import RenderContext

MAX_POSITIVE = 127  # sum of positive mantissas: x 255 must fit a signed 16-bit accumulator


@lru_cache(maxsize=64)
def kernel(sigma: float, amount: float) -> tuple[tuple[tuple[int, ...], ...], int]:
    """(integer unsharp kernel, its scale); the taps sum to the scale, so flat areas stay unchanged."""
    radius = max(1, math.ceil(2 * sigma - 0.5))
    span = range(-radius, radius + 1)
    gauss = [[math.exp(-(x * x + y * y) / (2 * sigma * sigma)) for x in span] for y in span]
    total = sum(map(sum, gauss))
    rows = [[-amount * g / total for g in row] for row in gauss]
    rows[radius][radius] += 1 + amount
    scale = 1 << max(0, _exponent(rows[radius][radius]))
    while True:
        ints = [[round(v * scale) for v in row] for row in rows]
        ints[radius][radius] += scale - sum(map(sum, ints))  # exact sum despite rounding
        if vector_exact(ints, scale) or scale == 1:
            return _trim(ints), scale
        scale //= 2


def _exponent(largest: float) -> int:
    """The exponent libvips' vector path gives a mask whose largest tap is ``largest``:
    mantissas are taps x 2**exponent (vips_convi_intize: shift = ceil(log2(max) + 1))."""
    return 7 - math.ceil(math.log2(largest) + 1)


def vector_exact(taps: list[list[int]], scale: int) -> bool:
    """Whether libvips' vectorised integer convolution applies ``taps / scale`` exactly
    (and takes it at all: mantissas within 8 bits, positive ones within the accumulator)."""
    flat = [v for row in taps for v in row]
    exponent = _exponent(max(flat) / scale)
    if exponent < 0 or (1 << exponent) % scale:
        return False
    mantissas = [v * (1 << exponent) // scale for v in flat]
    return (all(-128 <= m <= 127 for m in mantissas)
            and sum(m for m in mantissas if m > 0) <= MAX_POSITIVE)


def _trim(rows: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    """Drop an all-zero outer ring: a 5x5 kernel that rounds to 3x3 costs a 3x3's time."""
    while len(rows) > 3 and not any(rows[0] + rows[-1] + [r[0] for r in rows] + [r[-1] for r in rows]):
        rows = [r[1:-1] for r in rows[1:-1]]
    return tuple(tuple(row) for row in rows)


def sharpen(ctx: RenderContext) -> None:
    profile, image = ctx.profile, ctx.image
    assert profile is not None and image is not None
    if profile.sharpen_amount <= 0 or profile.sharpen_sigma <= 0:
        return
    taps, scale = kernel(profile.sharpen_sigma, profile.sharpen_amount)
    mask = pyvips.Image.new_from_array([list(row) for row in taps], scale=scale)
    if image.hasalpha():
        colour = image.extract_band(0, n=image.bands - 1)
        ctx.image = colour.conv(mask, precision="integer").bandjoin(image.extract_band(image.bands - 1))
    else:
        ctx.image = image.conv(mask, precision="integer")
