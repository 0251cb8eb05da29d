"""Render failures: each carries the HTTP status and error code the service answers with.

The render core raises only these (the pipeline turns every libvips or Pillow
exception into one), so a bad original never escapes as a crash of the worker.
"""

from __future__ import annotations


class RenderFailure(Exception):
    """A render that cannot succeed; ``status``/``code`` go on the wire as they are."""

    status = 422
    code = "render_failed"
    #: remembered by the failure memory: retrying the same original will fail again
    permanent = True

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message[:500]


class Undecodable(RenderFailure):
    code = "undecodable"


class UnsupportedFormat(RenderFailure):
    code = "unsupported_format"


class TooLarge(RenderFailure):
    code = "too_many_pixels"


class TooManyScans(RenderFailure):
    """A progressive JPEG with more scans than any encoder writes: a CPU bomb (media.jpeg)."""

    code = "too_many_scans"


class RenderTimeout(RenderFailure):
    code = "render_timeout"


class BadRequest(RenderFailure):
    """The request itself is wrong (unknown size or format); nothing to remember."""

    status = 400
    code = "bad_request"
    permanent = False


class PhotoNotFound(RenderFailure):
    status = 404
    code = "not_found"
    permanent = False


class Busy(RenderFailure):
    """The node's queue is full: the caller should try another node or later."""

    status = 429
    code = "busy"
    permanent = False

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(RenderFailure):
    """The node cannot serve now (storage down, waited too long for a slot)."""

    status = 503
    code = "unavailable"
    permanent = False
