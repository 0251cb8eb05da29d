"""The render pipeline: the whole render order, written out in one place.

    source steps   once per original:  probe -> prepare -> scale_on_load -> to_srgb -> materialize
    profile steps  once per size:      resize (cascaded) -> crop -> sharpen
    format steps   once per format:    flatten -> encode

Sizes run largest first, so each one is resized from the nearest larger image
already in memory. The deadline is checked between steps and enforced inside
libvips while a step runs. After a render that leaves the worker over
``vips_setup.KEEP_RSS``, the heap's free pages go back to the OS, so one large
original does not keep a worker big. Every failure leaves as a RenderFailure: a
libvips or Pillow error on a bad original is ``undecodable`` (422), never a crash.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

import pyvips

from . import vips_setup
from .context import Output, RenderContext
from .deadline import Deadline
from .errors import RenderFailure, RenderTimeout, Undecodable
from .options import RenderOptions
from .steps.crop import crop
from .steps.encode import encode
from .steps.flatten import flatten
from .steps.materialize import materialize
from .steps.prepare import prepare
from .steps.probe import probe
from .steps.resize import resize
from .steps.scale_on_load import scale_on_load
from .steps.sharpen import sharpen
from .steps.to_srgb import to_srgb

Step = Callable[[RenderContext], None]

SOURCE_STEPS: tuple[Step, ...] = (probe, prepare, scale_on_load, to_srgb, materialize)
PROFILE_STEPS: tuple[Step, ...] = (resize, crop, sharpen)
FORMAT_STEPS: tuple[Step, ...] = (flatten, encode)

log = logging.getLogger("magickd.pipeline")


def run_steps(ctx: RenderContext, steps: Iterable[Step]) -> None:
    for step in steps:
        ctx.deadline.check()
        step(ctx)


def render(data: bytes, options: RenderOptions, clock: Callable[[], float] = time.monotonic) -> list[Output]:
    """Every target of ``options`` from one original's bytes; RenderFailure if it cannot be done."""
    ctx = RenderContext(data=data, options=options, deadline=Deadline(options.limits.timeout, clock))
    try:
        run_steps(ctx, SOURCE_STEPS)
        profiles = {t.name: t.profile for t in options.targets}
        order = sorted(profiles, key=lambda n: ctx.boxes[n].resize_w * ctx.boxes[n].resize_h, reverse=True)
        for name in order:
            ctx.profile, ctx.image = profiles[name], None
            run_steps(ctx, PROFILE_STEPS)
            for target in (t for t in options.targets if t.name == name):
                ctx.target = target
                run_steps(ctx, FORMAT_STEPS)
        ctx.deadline.check()
    except RenderFailure:
        raise
    except pyvips.Error as exc:
        if ctx.deadline.expired:
            raise RenderTimeout(f"render took longer than {options.limits.timeout:g}s") from None
        raise Undecodable(f"cannot decode the original: {_first_lines(exc)}") from None
    except MemoryError:
        raise Undecodable("the original needs more memory than a render may use") from None
    except Exception as exc:  # never let one original take the worker down
        log.exception("unexpected render error")
        raise Undecodable(f"render failed: {exc.__class__.__name__}: {exc}") from None
    finally:
        ctx.base = ctx.image = ctx.encoded = None
        ctx.intermediates.clear()
        vips_setup.release_memory()
    order_index = {t: i for i, t in enumerate(options.targets)}
    return sorted(ctx.outputs, key=lambda o: order_index[o.target])


def _first_lines(exc: pyvips.Error) -> str:
    text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:300]
