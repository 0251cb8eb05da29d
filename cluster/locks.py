"""File locks shared by every component: an flock is held by an open file descriptor, so it
frees itself when its process dies (even by SIGKILL), which is why workers coordinate with them."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def try_flock(path: str | Path, mode: int = 0o644) -> int | None:
    """An fd holding an exclusive lock on ``path`` (created if missing), or None if another
    process holds it. Closing the fd releases the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
