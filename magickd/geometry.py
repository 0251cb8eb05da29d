"""Output dimensions of a profile for a source size: computed once, in integers, shared by all.

The render pipeline sizes its images with these numbers and the service reports
them for renditions that already exist, so both always agree. Never upscales.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.config import SizeProfile


@dataclass(frozen=True)
class Box:
    """Where one profile lands: the resized image before cropping, and the final size."""

    resize_w: int
    resize_h: int
    out_w: int
    out_h: int

    @property
    def crops(self) -> bool:
        return (self.resize_w, self.resize_h) != (self.out_w, self.out_h)


def _round_div(num: int, den: int) -> int:
    """num / den rounded half up, in integers, never below 1."""
    return max(1, (2 * num + den) // (2 * den))


def fit(w: int, h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """(w, h) scaled to fit inside box_w x box_h, keeping the aspect; never larger."""
    if w <= box_w and h <= box_h:
        return w, h
    if w * box_h >= h * box_w:  # width is the limit
        return box_w, min(box_h, _round_div(h * box_w, w))
    return min(box_w, _round_div(w * box_h, h)), box_h


def cover(w: int, h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """(w, h) scaled to cover box_w x box_h, keeping the aspect; never larger than the source."""
    if w * box_h >= h * box_w:  # height is the limit
        if h <= box_h:
            return w, h
        return max(box_w, _round_div(w * box_h, h)), box_h
    if w <= box_w:
        return w, h
    return box_w, max(box_h, _round_div(h * box_w, w))


def box_for(profile: SizeProfile, w: int, h: int) -> Box:
    """The resize and output size of ``profile`` for an upright source of w x h."""
    if profile.crop == "none":
        rw, rh = fit(w, h, profile.width, profile.height)
        return Box(rw, rh, rw, rh)
    rw, rh = cover(w, h, profile.width, profile.height)
    return Box(rw, rh, min(rw, profile.width), min(rh, profile.height))
