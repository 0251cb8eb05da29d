"""A request's deadline, seen by every storage call made on its behalf.

A request may make several storage calls in a row (auth, lookup, put, record).
Each S3 operation is bounded by ``storage.s3.deadline`` on its own; ``within``
bounds them together, so a request whose budget is spent fails its next storage
call at once (StorageUnavailable, a 503) instead of starting another wait the
worker timeout would cut short. The deadline lives in a ContextVar: set by the
web layer per request, carried into helper threads with ``contextvars.copy_context``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

_until: ContextVar[float | None] = ContextVar("storage_request_deadline", default=None)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Storage calls inside end by ``seconds`` from now (or by an enclosing, earlier deadline)."""
    until = time.monotonic() + seconds
    outer = _until.get()
    token = _until.set(until if outer is None else min(outer, until))
    try:
        yield
    finally:
        _until.reset(token)


def begin(seconds: float) -> None:
    """Start a request's deadline (for middleware, which has no ``with``); ``end`` clears it."""
    _until.set(time.monotonic() + seconds)


def end() -> None:
    _until.set(None)


def until() -> float | None:
    """The monotonic time by which the current request's storage calls must end, if any."""
    return _until.get()


def remaining() -> float | None:
    """Seconds left of the current request's deadline (may be <= 0), or None without one."""
    t = _until.get()
    return None if t is None else t - time.monotonic()
