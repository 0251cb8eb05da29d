"""Per-node health: up/down from consecutive failures, and the ramp-up of a rejoining node.

Active checks and passive signals (connect errors, timeouts, 5xx) feed the same
counter: ``fail_threshold`` failures in a row take a node out, one success (an
active check, since a down node gets no traffic) brings it back. A node that
comes back starts cold, so its share ramps from 0 to 1 over ``rampup_seconds``
(see Ring.admits). Nodes are up and fully ramped at start-up, so every worker
begins with the same mapping.

Readiness is a second, separate bit per node, set by the active check of
``/readyz``: a node that answers 503 there is live (it keeps its failure count at
zero) but *not ready*, and gets no new traffic while some other up node of its
role is ready. If no up node is ready, every up node is routed to as before: when
storage is down everywhere, a ypws node can still serve its cache hits and ypfs
still answers 503 + Retry-After itself, which beats the proxy refusing everything.
``up_nodes`` (and ``routable``) is that choice. Pure: the clock is a constructor argument.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence


class HealthBoard:
    """Up/down state of one role's nodes, as seen by one worker."""

    def __init__(self, names: Sequence[str], fail_threshold: int = 2, rampup_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.names = tuple(names)
        self.fail_threshold = max(1, fail_threshold)
        self.rampup_seconds = rampup_seconds
        self.clock = clock
        self._up = [True] * len(self.names)
        self._fails = [0] * len(self.names)
        self._up_since = [float("-inf")] * len(self.names)
        self._ready = [True] * len(self.names)
        self._routable = [True] * len(self.names)
        self.up_nodes: tuple[int, ...] = tuple(range(len(self.names)))
        self._ramp_until = float("-inf")

    def steady(self) -> bool:
        """Every node up and fully ramped: the mapping is the plain rendezvous order."""
        return len(self.up_nodes) == len(self.names) and (self.rampup_seconds <= 0 or self.clock() >= self._ramp_until)

    def is_up(self, node: int) -> bool:
        return self._up[node]

    def is_ready(self, node: int) -> bool:
        """Up and ready (its last /readyz said 200)."""
        return self._up[node] and self._ready[node]

    def routable(self, node: int) -> bool:
        """Gets new traffic: up and ready, or up while no node of the role is ready."""
        return self._routable[node]

    def set_ready(self, node: int, ready: bool) -> bool:
        """Record the node's readiness; True when it changed."""
        if self._ready[node] == ready:
            return False
        self._ready[node] = ready
        self._refresh()
        return True

    def ramp(self, node: int) -> float:
        """The fraction of its share the node takes now: 0 just after rejoining, 1 once ramped."""
        if not self._up[node]:
            return 0.0
        if self.rampup_seconds <= 0:
            return 1.0
        return min(1.0, (self.clock() - self._up_since[node]) / self.rampup_seconds)

    def failure(self, node: int) -> bool:
        """Count a failure; True when this one takes the node out."""
        self._fails[node] += 1
        if self._up[node] and self._fails[node] >= self.fail_threshold:
            self._up[node] = False
            self._refresh()
            return True
        return False

    def success(self, node: int, revive: bool = True) -> bool:
        """Count a success; True when it brings the node back (its ramp-up starts now).

        Only an active check revives (``revive``): a passive success is a response to a
        request sent before the node went out, and says nothing of whether it is back.
        """
        self._fails[node] = 0
        if revive and not self._up[node]:
            self._up[node] = True
            self._up_since[node] = now = self.clock()
            self._ramp_until = max(self._ramp_until, now + self.rampup_seconds)
            self._refresh()
            return True
        return False

    def _refresh(self) -> None:
        up = tuple(i for i, up in enumerate(self._up) if up)
        ready = tuple(i for i in up if self._ready[i])
        self.up_nodes = ready or up  # no ready node: the live ones (see the module docstring)
        chosen = set(self.up_nodes)
        self._routable = [i in chosen for i in range(len(self.names))]

    def snapshot(self) -> dict[str, dict]:
        return {n: {"up": self._up[i], "ready": self._ready[i], "ramp": round(self.ramp(i), 3),
                    "fails": self._fails[i]}
                for i, n in enumerate(self.names)}
