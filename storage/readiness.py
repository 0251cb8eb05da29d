"""Is the store reachable? A cheap, bounded, cached probe for the components' /readyz.

Readiness probes arrive every second from every proxy worker; answering each one
with a storage round trip would hammer the store exactly when it is struggling.
So one stat of a fixed key (absent is fine: an answer is what counts) runs at most
once per ``ttl``, bounded by ``timeout`` through the request deadline
(cluster.deadline), and every caller in between gets the last answer. Callers that
must not block (an event loop) ask with ``wait=False``: a stale answer then starts
a probe on a thread and the last known answer is returned (before the first probe
has answered: reachable).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from cluster import deadline
from .base import BlobStore, NotFound

PROBE_KEY = "health/readiness-probe"


class StorageProbe:
    def __init__(self, store: BlobStore, ttl: float = 1.0, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.store, self.ttl, self.timeout, self.clock = store, ttl, timeout, clock
        self._lock = threading.Lock()
        self._at = float("-inf")
        # until the first probe has answered, a caller that cannot wait hears "reachable":
        # a node is not taken out of routing for a probe that has not run yet
        self._answer: tuple[bool, str] = (True, "")

    def status(self, wait: bool = True) -> tuple[bool, str]:
        """(reachable, reason): the cached answer while fresh, else a new probe's."""
        if self.clock() - self._at < self.ttl:
            return self._answer
        if not wait:
            if self._lock.acquire(blocking=False):
                threading.Thread(target=self._probe_and_release, name="storage-probe", daemon=True).start()
            return self._answer
        with self._lock:
            if self.clock() - self._at >= self.ttl:  # another thread may have just probed
                self._probe()
            return self._answer

    def _probe_and_release(self) -> None:
        try:
            self._probe()
        finally:
            self._lock.release()

    def _probe(self) -> None:
        try:
            with deadline.within(self.timeout):
                self.store.stat(PROBE_KEY)
            answer = (True, "")
        except NotFound:
            answer = (True, "")
        except Exception as exc:  # any failure to get an answer means not reachable
            answer = (False, f"storage unreachable: {str(exc)[:200]}")
        self._answer, self._at = answer, self.clock()
