"""Render cost by stage, and the encode-aware floor it is measured against (issue 17).

The floor of a render is what no renderer can skip: decoding the original with
shrink-on-load to the scale of the largest output, and encoding exactly the outputs
produced (same sizes, same encoder settings, via magickd's own encode step) from
pixels already resized. magickd's overhead over it is the resize, crop and sharpen
work between the two, and that is what the stage split shows.

The split runs the real pipeline with every step wrapped: each step's CPU time is
taken (process CPU: libvips runs one thread per render here), and a step that leaves
its image lazy (crop, sharpen) is materialised inside its own timing, so its cost is
not billed to the encode that would otherwise pull the pixels through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from typing import Callable, Iterator

import pyvips

from cluster.profiles import SizeProfile, box_for
from magickd import pipeline
from magickd.context import RenderContext
from magickd.deadline import Deadline
from magickd.options import RenderOptions
from magickd.steps.encode import encode
from magickd.steps.scale_on_load import jpeg_shrink

#: which stage of the issue's split each pipeline step belongs to
STAGE_OF = {
    "probe": "probe", "prepare": "probe",
    "scale_on_load": "render decode", "to_srgb": "render decode", "materialize": "render decode",
    "resize": "resize", "crop": "crop", "sharpen": "sharpen", "flatten": "encode",
}
_MATERIALISE_AFTER = {"crop", "sharpen"}


def _timed(step: Callable[[RenderContext], None], into: dict[str, float], captured: list | None):
    name = step.__name__

    def run(ctx: RenderContext) -> None:
        t0 = time.process_time()
        if name == "encode" and captured is not None:
            captured.append((ctx.target, _detached(ctx.encoded)))
        step(ctx)
        if name in _MATERIALISE_AFTER and ctx.image is not None:
            ctx.image = ctx.image.copy_memory()
        stage = f"encode {ctx.target.name}" if name == "encode" else STAGE_OF[name]
        into[stage] += time.process_time() - t0

    run.__name__ = name
    return run


def _detached(image: pyvips.Image) -> pyvips.Image:
    """The pixels in a fresh image of their own: no signal handler of the render that made them
    (a handler whose Python object is gone would crash the next evaluation)."""
    return pyvips.Image.new_from_memory(image.write_to_memory(), image.width, image.height, image.bands,
                                        image.format).copy(interpretation=image.interpretation)


@contextlib.contextmanager
def stage_clock(captured: list | None = None) -> Iterator[dict[str, float]]:
    """While active, pipeline.render adds each step's CPU seconds to the yielded dict by stage;
    ``captured`` (if given) receives (target, pixels as encoded) for every output."""
    into: dict[str, float] = defaultdict(float)
    saved = pipeline.SOURCE_STEPS, pipeline.PROFILE_STEPS, pipeline.FORMAT_STEPS
    pipeline.SOURCE_STEPS, pipeline.PROFILE_STEPS, pipeline.FORMAT_STEPS = (
        tuple(_timed(s, into, captured) for s in steps) for steps in saved)
    try:
        yield into
    finally:
        pipeline.SOURCE_STEPS, pipeline.PROFILE_STEPS, pipeline.FORMAT_STEPS = saved


@dataclasses.dataclass
class Floor:
    """The floor's two parts for one original and one set of targets, ready to be timed."""

    data: bytes
    shrink: int
    encodes: list  # (target, pixels)
    options: RenderOptions

    @classmethod
    def prepare(cls, data: bytes, options: RenderOptions) -> "Floor":
        captured: list = []
        with stage_clock(captured):
            pipeline.render(data, options)
        header = pyvips.Image.new_from_buffer(data, "")
        boxes = [box_for(t.profile, header.width, header.height) for t in options.targets]
        # the same DCT scale magickd picks for the largest box (orientation does not change it
        # for these landscape sources)
        shrink = jpeg_shrink(header.width, header.height, max(b.resize_w for b in boxes),
                             max(b.resize_h for b in boxes))
        return cls(data, shrink, captured, options)

    def decode(self) -> None:
        pyvips.Image.jpegload_buffer(self.data, shrink=self.shrink, access="sequential").copy_memory()

    def encode_all(self) -> dict[str, float]:
        """Encode every output once; CPU seconds per size."""
        spent: dict[str, float] = defaultdict(float)
        for target, pixels in self.encodes:
            ctx = RenderContext(data=b"", options=self.options, deadline=Deadline(60.0))
            ctx.target, ctx.encoded = target, pixels.copy()  # a fresh handle: encode watches it
            t0 = time.process_time()
            encode(ctx)
            spent[target.name] += time.process_time() - t0
        return spent

    def run(self) -> tuple[float, dict[str, float]]:
        """(decode CPU seconds, encode CPU seconds per size) of one pass."""
        t0 = time.process_time()
        self.decode()
        return time.process_time() - t0, self.encode_all()


def with_settings(profiles: tuple[SizeProfile, ...], **changes) -> tuple[SizeProfile, ...]:
    return tuple(dataclasses.replace(p, **changes) for p in profiles)
