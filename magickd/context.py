"""Per-render state: one explicit object handed to every step (imgproxy's ``Context``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyvips

from cluster.config import SizeProfile
from media.gainmap import GainMap

from .deadline import Deadline
from .geometry import Box
from .options import RenderOptions, Target


@dataclass(frozen=True)
class Source:
    """What the header says about the original (dimensions upright, after EXIF orientation)."""

    loader: str          # "vips" or "pillow"
    fmt: str             # jpeg, png, gif, webp, tiff, avif, heif, bmp
    width: int
    height: int
    pages: int
    has_icc: bool = False  # an embedded ICC profile (Adobe RGB, CMYK, P3, ...) to convert from
    ultra_hdr: bool = False  # a JPEG with a gain map (media.gainmap)


@dataclass(frozen=True)
class Output:
    target: Target
    data: bytes
    width: int
    height: int


@dataclass
class RenderContext:
    data: bytes
    options: RenderOptions
    deadline: Deadline
    source: Source | None = None
    #: geometry of every profile asked for, filled in by ``prepare`` before any pixels move
    boxes: dict[str, Box] = field(default_factory=dict)
    #: the decoded original at the largest resize size, upright, sRGB, 8-bit, in memory
    base: pyvips.Image | None = None
    #: an Ultra HDR original's gain map, taken off ``base`` (sizes that keep it get it resized)
    gain_map: GainMap | None = None
    #: unsharpened resized images, kept so smaller sizes cascade from the nearest larger one
    intermediates: list[pyvips.Image] = field(default_factory=list)
    #: the profile being rendered and its image (resized, cropped, sharpened; shared by its formats)
    profile: SizeProfile | None = None
    image: pyvips.Image | None = None
    #: the format being encoded and the image as that format needs it (e.g. flattened for JPEG)
    target: Target | None = None
    encoded: pyvips.Image | None = None
    outputs: list[Output] = field(default_factory=list)

    @property
    def box(self) -> Box:
        assert self.profile is not None
        return self.boxes[self.profile.name]
