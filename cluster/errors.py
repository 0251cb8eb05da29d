"""The failures of a backend a request depends on, as the web layer sees them.

cluster/ sits below every other package, so it cannot name storage's exceptions;
storage's errors subclass these instead, and ``cluster.web`` maps them to answers:
a ``BackendError`` is a 503 with Retry-After (the client may retry shortly), a
``BackendMissing`` a 404 (a read that found nothing, not caught where it was made).
"""

from __future__ import annotations


class BackendError(Exception):
    """A backend (the store) failed; a request that meets it uncaught is answered 503 + Retry-After."""


class BackendMissing(BackendError):
    """A backend read found nothing; a request that meets it uncaught is answered 404."""
