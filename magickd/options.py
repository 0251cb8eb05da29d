"""What to render, parsed once at the edge: sizes x formats of the config's profiles.

Steps only ever see these frozen objects, never request JSON or the config tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cluster.config import LimitsSection, MagickdSection
from cluster.profiles import SizeProfile, Sizes

from .errors import BadRequest


@dataclass(frozen=True)
class Target:
    """One rendition to make: a size profile in one output format."""

    profile: SizeProfile
    fmt: str
    version: str

    @property
    def name(self) -> str:
        return self.profile.name


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    timeout: float
    webp_effort: int
    avif_effort: int
    upload: LimitsSection  # the acceptance check's limits: refuse what ypfs refuses

    @classmethod
    def from_config(cls, limits: LimitsSection, magickd: MagickdSection) -> "Limits":
        return cls(limits.max_pixels, magickd.render_timeout, magickd.webp_effort, magickd.avif_effort, limits)


@dataclass(frozen=True)
class RenderOptions:
    targets: tuple[Target, ...]
    limits: Limits


def parse_targets(profiles: Sizes, sizes: Sequence[str] | None, formats: Sequence[str] | None) -> tuple[Target, ...]:
    """Targets for the named sizes (None: all ``profiles``) in the named formats (None: each profile's default).

    A format a profile does not offer is a BadRequest, so nobody can make the pool
    encode AVIF for a size whose profile does not list it.
    """
    if sizes is not None and (not isinstance(sizes, (list, tuple)) or not all(isinstance(s, str) for s in sizes)):
        raise BadRequest("sizes must be a list of size names or null")
    if formats is not None and (not isinstance(formats, (list, tuple)) or not all(isinstance(f, str) for f in formats)):
        raise BadRequest("formats must be a list of format names or null")
    names = list(dict.fromkeys(sizes)) if sizes is not None else list(profiles)
    if not names:
        raise BadRequest("no sizes asked for")
    targets: list[Target] = []
    for name in names:
        profile = profiles.get(name)
        if profile is None:
            raise BadRequest(f"unknown size {name[:40]!r}")
        for fmt in (list(dict.fromkeys(formats)) if formats else [profile.format]):
            if fmt not in profile.formats:
                raise BadRequest(f"size {name!r} is not offered as {fmt[:20]!r} (offered: {', '.join(profile.formats)})")
            targets.append(Target(profile, fmt, profile.version))
    return tuple(targets)
