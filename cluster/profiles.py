"""The size profile: one home for what a rendition size is, how it is checked, versioned and fitted.

A profile's fields come from the config's ``[[sizes]]`` entries; ``validate`` checks one
profile and ``validate_sizes`` the list (the config calls it at load time). Its
``version`` goes into every rendition key and URL, so it is derived here from exactly
the fields that shape a rendition's bytes, together with ``PIPELINE_REVISION``.
``box_for`` gives the output dimensions for a source size in integers, so the render
pool that makes a rendition and the pages that announce its size always agree.

This module imports nothing of the role packages: magickd, ypws, ypfs and storage
import it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping

CROP_MODES = ("none", "attention", "centre")
OUTPUT_FORMATS = ("jpeg", "webp", "png", "avif")
MAX_SIDE = 8192

#: bump when the render pipeline changes its output for unchanged profile parameters
PIPELINE_REVISION = 2  # 2: sharpening kernels exact on libvips' vector path (no 6% brightening)

#: fields that shape no single rendition's bytes: left out of the version, so changing them
#: keeps every rendition URL (variants: which formats exist; eager: when it is rendered)
_UNVERSIONED = ("name", "variants", "eager")


@dataclass(frozen=True)
class SizeProfile:
    name: str
    width: int
    height: int
    crop: str = "none"
    sharpen_sigma: float = 0.5
    sharpen_amount: float = 1.0
    quality: int = 85
    format: str = "jpeg"
    variants: tuple[str, ...] = ()
    keep_gain_map: bool = False  # an Ultra HDR original's JPEG rendition keeps a resized gain map
    progressive: bool = True   # JPEG: progressive scans; false: baseline with optimised Huffman tables
    eager: bool = True         # rendered right after upload; false: on its first request only

    @property
    def formats(self) -> tuple[str, ...]:
        """Every format this profile may be served in, default first."""
        return (self.format, *[f for f in self.variants if f != self.format])

    @property
    def version(self) -> str:
        """8 hex chars naming this profile's output: see ``profile_version``."""
        return profile_version(self)

    def validate(self) -> None:
        """Raise ConfigError naming the key when a field is out of range."""
        where = f"sizes.{self.name}"
        if self.name == "original" or not self.name:
            raise _error(f"sizes: reserved or empty size name {self.name!r}")
        if self.crop not in CROP_MODES:
            raise _error(f"{where}.crop: one of {CROP_MODES}")
        for fmt in self.formats:
            if fmt not in OUTPUT_FORMATS:
                raise _error(f"{where}: unknown format {fmt!r}")
        if not (0 < self.width <= MAX_SIDE and 0 < self.height <= MAX_SIDE):
            raise _error(f"{where}.width/height: 1..{MAX_SIDE}")
        if not 1 <= self.quality <= 100:
            raise _error(f"{where}.quality: 1..100")
        if self.keep_gain_map and self.crop != "none":
            raise _error(f"{where}.keep_gain_map: only sizes with crop = \"none\" can keep a gain map")


def _error(message: str) -> Exception:
    # imported here: cluster.config imports this module for SizeProfile
    from .config import ConfigError

    return ConfigError(message)


def validate_sizes(profiles: Iterable[SizeProfile]) -> None:
    """Every profile valid and every name used once."""
    seen: set[str] = set()
    for p in profiles:
        if p.name in seen:
            raise _error(f"sizes: duplicate size name {p.name!r}")
        seen.add(p.name)
        p.validate()


#: the configured size profiles by name, in the config's order: what a core that looks sizes up
#: by name takes (built once at a composition root with ``by_name``), rather than the whole config
Sizes = Mapping[str, SizeProfile]


def by_name(profiles: Iterable[SizeProfile]) -> dict[str, SizeProfile]:
    """The profiles keyed by name, keeping their order (names are unique: ``validate_sizes``)."""
    return {p.name: p for p in profiles}


def eager_sizes(profiles: Iterable[SizeProfile]) -> tuple[str, ...]:
    """Names of the sizes rendered right after an upload (the rest are rendered on first view)."""
    return tuple(p.name for p in profiles if p.eager)


@lru_cache(maxsize=256)  # every rendition URL carries one: pages and upload answers make many
def profile_version(profile: SizeProfile) -> str:
    """8 hex chars derived from everything that shapes a rendition's pixels and bytes.

    Re-tuning a profile (sharpening, quality, box, crop, progressive) changes its version,
    so its renditions get new keys and a stale one is never served as the new one.
    ``progressive`` enters only when false: progressive was the one JPEG mode before it
    became a setting, so a progressive profile keeps the version it always had.
    """
    params = dataclasses.asdict(profile)
    for key in _UNVERSIONED:
        params.pop(key)
    if params["progressive"]:
        params.pop("progressive")
    blob = json.dumps({"rev": PIPELINE_REVISION, **params}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


# -- geometry -----------------------------------------------------------------------------


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
    """The resize and output size of ``profile`` for an upright source of w x h (never upscaled)."""
    if profile.crop == "none":
        rw, rh = fit(w, h, profile.width, profile.height)
        return Box(rw, rh, rw, rh)
    rw, rh = cover(w, h, profile.width, profile.height)
    return Box(rw, rh, min(rw, profile.width), min(rh, profile.height))
