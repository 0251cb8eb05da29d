"""Requests, errors, retries and spills per node: plain ints in each worker, pushed to prometheus in batches.

These are metrics only (no routing decision reads them), so unlike in-flight counts
(loads.py) they need not be shared between workers while they happen. A worker adds
to its own ints on the request path and hands the deltas to prometheus-client
counters (multiprocess mode: one file per worker under ``<data_dir>/metrics/hashproxy``,
merged by whichever worker answers /metrics) every ``PUSH_INTERVAL`` and before it
answers /metrics: a multiprocess ``Counter.inc`` costs a few microseconds, too much
for every proxied request. What a worker pushed stays after it dies; the counters
start again from zero when the proxy restarts (Prometheus counter semantics).
"""

from __future__ import annotations

from typing import Sequence

TALLIES = {
    "requests": "Requests sent to the node",
    "errors": "Failed requests to the node (connect, timeout, reset, 5xx)",
    "retries": "Requests retried on this node after a failure elsewhere",
    "spills": "Image requests this node got while not the URL's first choice (spill, failover)",
}
REQUESTS, ERRORS, RETRIES, SPILLS = range(len(TALLIES))
#: seconds between a worker's pushes of its counts to prometheus
PUSH_INTERVAL = 1.0


class RoleTallies:
    """One worker's counts for one role's nodes (node 0 is the role's first node)."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    @classmethod
    def local(cls, count: int) -> "RoleTallies":
        """Counts published nowhere (the `route` command, tests of the balancers)."""
        return cls([[0] * len(TALLIES) for _ in range(count)])

    def add(self, node: int, field: int, delta: int = 1) -> None:
        self.rows[node][field] += delta


class Tallies:
    """One worker's counts for every (role, node), and the prometheus counters they are pushed to."""

    def __init__(self, rows: Sequence[tuple[str, str]]):
        # imported here, in the worker: the supervisor must set the multiprocess folder first
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()  # what an in-process scrape reads (multiprocess: the files)
        counters = [Counter(f"hashproxy_upstream_{name}", doc, ["role", "node"], registry=self.registry)
                    for name, doc in TALLIES.items()]
        self.rows = [[0] * len(TALLIES) for _ in rows]
        self._children = [[c.labels(role, node) for c in counters] for role, node in rows]

    def role(self, first: int, count: int) -> RoleTallies:
        return RoleTallies(self.rows[first:first + count])  # the same row lists: counts land here

    def push(self) -> None:
        """Add the counts since the last push to the prometheus counters."""
        for row, children in zip(self.rows, self._children):
            for field, value in enumerate(row):
                if value:
                    row[field] = 0
                    children[field].inc(value)
