"""Choosing nodes: URL-hash pinning with bounded loads for images, least-connections for the rest.

Every ``choose`` returns the nodes to try in order: the first is the choice,
the next one is where an idempotent request is retried if the first fails.
Pure: health, loads and the clock come in through NodeSet.

Bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018, HAProxy's
``hash-balance-factor``): with m requests in flight over n up nodes, counting the
new one, no node may carry more than ceil(c * m / n). A URL whose first choice is
at that cap goes to the next node of its own order, so a very hot image spreads
over its first few nodes (and only there) while cold URLs stay pinned. The
counts are cluster-wide (see loads.py), so two workers cannot each fill the
same node to the cap.

One addition to the paper: the cap is never below ``min_load`` in-flight
requests. With few requests in flight, ceil(c * m / n) is 1 or 2, so two
simultaneous requests to one node would spill, and every spill is a likely
cache miss plus a duplicate copy on another node. A node carrying a handful of
requests is not melting, so below that floor the URL stays pinned; under real
load (m / n well above the floor) the factor alone decides, as in the paper.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol, Sequence

from .health import HealthBoard
from .loads import RoleCounters
from .tallies import SPILLS, RoleTallies
from cluster.ring import Ring


@dataclass
class NodeSet:
    """One role's nodes (ypws or ypfs) as one worker sees them."""

    role: str
    names: tuple[str, ...]
    addrs: tuple[tuple[str, int], ...]
    health: HealthBoard
    counters: RoleCounters             # shared by the workers: in-flight, up
    tallies: RoleTallies | None = None  # this worker's requests, errors, retries, spills (None: kept locally)

    def __post_init__(self) -> None:
        if self.tallies is None:
            self.tallies = RoleTallies.local(len(self.names))

    def __len__(self) -> int:
        return len(self.names)


class ImageBalancer(Protocol):
    nodes: NodeSet

    def choose(self, key: str) -> list[int]: ...
    def served(self, key: str, node: int) -> None: ...


class HashBalancer:
    """Images: the key's rendezvous order, minus down nodes, with ramp-up and bounded loads."""

    def __init__(self, nodes: NodeSet, factor: float = 1.25, min_load: int = 0):
        self.nodes = nodes
        self.ring = Ring(nodes.names)
        self.factor = factor
        self.min_load = min_load

    def eligible(self, key: str) -> list[int]:
        """The key's order without down nodes; a ramping node is passed over for keys it has not yet admitted."""
        order = self.ring.order(key)
        health = self.nodes.health
        if health.steady():
            return list(order)
        ring = self.ring
        chosen, later = [], []
        for i in order:
            if health.routable(i):
                (chosen if ring.admits(i, key, health.ramp(i)) else later).append(i)
        return chosen + later

    def choose(self, key: str) -> list[int]:
        nodes = self.eligible(key)
        if self.factor <= 0 or len(nodes) < 2:
            return nodes
        loads = self.nodes.counters.all_inflight()
        up = self.nodes.health.up_nodes
        total = sum(loads) if len(up) == len(loads) else sum(loads[i] for i in up)
        cap = max(math.ceil(self.factor * (total + 1) / len(up)), self.min_load)
        if loads[nodes[0]] < cap:
            return nodes
        for pos, i in enumerate(nodes):
            if loads[i] < cap:
                return nodes[pos:] + nodes[:pos]
        return nodes

    def served(self, key: str, node: int) -> None:
        """Count a key served away from its first choice (bounded-load spill or failover)."""
        if self.ring.order(key)[0] != node:
            self.nodes.tallies.add(node, SPILLS)

    def share(self, samples: int = 2048) -> list[float]:
        """The fraction of URL space each node owns right now (health and ramp-up included, load not)."""
        counts = [0] * len(self.nodes)
        for k in range(samples):
            nodes = self.eligible(f"/photos/share/{k}_sample/medium")
            if nodes:
                counts[nodes[0]] += 1
        return [c / samples for c in counts]


class RoundRobinBalancer:
    """Images without pinning: the benchmark's baseline."""

    def __init__(self, nodes: NodeSet, **_: object):
        self.nodes = nodes
        self._turn = itertools.count()

    def choose(self, key: str) -> list[int]:
        up = self.nodes.health.up_nodes
        if not up:
            return []
        k = next(self._turn) % len(up)
        return list(up[k:] + up[:k])

    def served(self, key: str, node: int) -> None:
        pass

    def share(self, samples: int = 0) -> list[float]:
        up = self.nodes.health.up_nodes
        return [1 / len(up) if i in up else 0.0 for i in range(len(self.nodes))]


#: [hashproxy] image_balance -> strategy
IMAGE_BALANCERS = {"hash": HashBalancer, "round-robin": RoundRobinBalancer}


class LeastConnections:
    """Uploads, API calls and pages: the up node with the fewest requests in flight (ties rotate)."""

    def __init__(self, nodes: NodeSet):
        self.nodes = nodes
        self._turn = itertools.count()

    def choose(self) -> list[int]:
        up: Sequence[int] = self.nodes.health.up_nodes
        if not up:
            return []
        if len(up) == 1:
            return [up[0]]
        k = next(self._turn) % len(up)
        rotated = list(up[k:]) + list(up[:k])
        inflight = self.nodes.counters.inflight
        best = min(rotated, key=inflight)
        rotated.remove(best)
        return [best, *rotated]
