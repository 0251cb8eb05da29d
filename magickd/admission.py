"""Node-wide admission across the pre-forked workers: a bounded queue, render slots, per-photo locks.

Every limit is a set of lock files under the node's data folder, held with
``flock``: the kernel releases a lock when its holder dies, even by SIGKILL, so a
crashed worker can never leak a slot the way a shared counter would.

- tickets: ``workers + queue_size`` of them. A request that finds none free is
  answered 429 at once, instead of piling up (held for the whole request).
- slots: ``workers`` of them. Only a request holding a slot runs a render, so the
  node never renders more at once than it has workers (cores).
- photo locks: one of ``PHOTO_STRIPES`` per photo id, held while a photo's
  renditions are checked and rendered, so concurrent requests for the same photo
  render once: the second finds the first one's objects and returns them.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import xxhash

from cluster.locks import try_flock

from .errors import Busy, Unavailable

PHOTO_STRIPES = 1024
POLL_MIN, POLL_MAX = 0.002, 0.05


class Admission:
    def __init__(self, folder: Path, slots: int, queue_size: int, wait: float,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.folder = Path(folder)
        self.slots = max(1, slots)
        self.tickets = self.slots + max(0, queue_size)
        self.wait = wait
        self.clock, self.sleep = clock, sleep
        for sub in ("tickets", "slots", "photos"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    # -- the three kinds of lock ---------------------------------------------------
    @contextmanager
    def ticket(self) -> Iterator[None]:
        """Admission to the node; Busy (429) when the queue is full."""
        fd = self._try_any("tickets", self.tickets)
        if fd is None:
            raise Busy(f"render queue full ({self.tickets - self.slots} waiting, {self.slots} rendering)",
                       retry_after=1)
        try:
            yield
        finally:
            os.close(fd)

    def saturated(self) -> bool:
        """True when every ticket is taken: a request arriving now would get a 429 (for /readyz)."""
        fd = self._try_any("tickets", self.tickets)
        if fd is None:
            return True
        os.close(fd)
        return False

    @contextmanager
    def slot(self, wait: float | None = None) -> Iterator[None]:
        """One of the node's render slots, waited for up to ``wait`` seconds (default: the configured wait)."""
        fd = self._poll(lambda: self._try_any("slots", self.slots), "a render slot", wait)
        try:
            yield
        finally:
            os.close(fd)

    @contextmanager
    def photo(self, photo_id: str) -> Iterator[None]:
        """Exclusive use of one photo's renditions on this node."""
        stripe = xxhash.xxh64_intdigest(photo_id.encode()) % PHOTO_STRIPES
        path = self.folder / "photos" / f"{stripe:04d}.lock"
        fd = self._poll(lambda: self._try(path), "the photo's render lock")
        try:
            yield
        finally:
            os.close(fd)

    # -- plumbing ----------------------------------------------------------------------
    def _try(self, path: Path) -> int | None:
        return try_flock(path)

    def _try_any(self, kind: str, count: int) -> int | None:
        start = os.getpid() % count  # spread first tries so workers do not all contend on lock 0
        for i in range(count):
            fd = self._try(self.folder / kind / f"{(start + i) % count}.lock")
            if fd is not None:
                return fd
        return None

    def _poll(self, attempt: Callable[[], int | None], what: str, wait: float | None = None) -> int:
        wait = self.wait if wait is None else wait
        deadline = self.clock() + wait
        pause = POLL_MIN
        while True:
            fd = attempt()
            if fd is not None:
                return fd
            if self.clock() >= deadline:
                raise Unavailable(f"waited {wait:g}s for {what}")
            self.sleep(pause)
            pause = min(POLL_MAX, pause * 1.5)
