"""The one error media/ raises for an image that is not fit to keep or render."""

from __future__ import annotations


class ImageRejected(Exception):
    """The image is not acceptable; carries the HTTP status and an error code (ypfs answers with
    them, magickd maps them onto its RenderFailure kinds)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
