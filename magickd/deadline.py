"""A render's time budget: checked between steps and enforced inside libvips.

libvips evaluates lazily, so one call (``copy_memory``, a save) can run most of a
render. ``watch`` connects the image's eval signal so libvips itself stops the
work (``set_kill``) once the budget is spent; the pipeline then reports a
timeout instead of a decode error.
"""

from __future__ import annotations

import time
from typing import Callable

import pyvips

from media.decode import stop_at

from .errors import RenderTimeout


class Deadline:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self.at = clock() + seconds

    @property
    def expired(self) -> bool:
        return self.clock() >= self.at

    def check(self) -> None:
        if self.expired:
            raise RenderTimeout(f"render took longer than {self.seconds:g}s")

    def watch(self, image: pyvips.Image) -> pyvips.Image:
        """Make libvips abandon evaluating ``image`` once the deadline passes."""
        return stop_at(image, self.at, self.clock)
