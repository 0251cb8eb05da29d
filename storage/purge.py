"""Purging the cache tier: commit to the purge log, then push to every ypws node directly.

Here, beside the log it commits to, and not in cluster/: ypfs and magickd both purge,
and cluster/ imports no package above it.

    entry = purger.log(["/photos/{user}/{id}_{secret}/"])   every size and format of a photo
    ... change the store (delete, make private) ...
    report = purger.push(entry)
    purger.purge(["/photos/{user}/{id}_{secret}/small"])    log + push: every format of one size
    purger.purge(["/photos/"])                              every cached image (a flush)

The log append (storage/purgelog.py) is the commit point: once it returned, every
cache node applies the purge, including nodes that are down now (before they
report ready again) and nodes no front knows of. If the append fails, the purge
is not committed and the caller is told (StorageError). The push that follows is
the fast path only: a PURGE to each node's own address (not through a front's
routing), all at once, each bounded by ``push_timeout``; a node that does not
answer 2xx/404 (a 401 or 403 included) is reported, and applies the purge from
the log within about a second anyway.

Outer caches: versioned rendition URLs are served ``immutable`` for a year, so a
CDN in front of the cluster keeps them until told. With ``purge.cdn_purge_url``
set, each purged path is also sent there (``{path}`` and ``{url}`` replaced),
best effort, and reported.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence
from urllib.parse import quote

import urllib3

from cluster.config import NodeConfig, PurgeSection
from .purgelog import PurgeEntry, PurgeLog, check_paths

MAX_PUSH_THREADS = 16


class Purger:
    def __init__(self, log: PurgeLog, nodes: Sequence[tuple[str, str]], token: str, *, origin: str = "",
                 timeout: float = 2.0, cdn_purge_url: str = "", public_url: str = "",
                 pool: urllib3.PoolManager | None = None):
        self.purge_log = log
        self.nodes = tuple(nodes)      # (name, base URL) of every ypws node
        self.origin = origin
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = urllib3.Timeout(connect=min(1.0, timeout), read=timeout)
        self.cdn_purge_url = cdn_purge_url
        self.public_url = public_url.rstrip("/")
        self.pool = pool or urllib3.PoolManager(maxsize=4, retries=False)

    @classmethod
    def from_sections(cls, purge: PurgeSection, nodes: Sequence[NodeConfig], token: str, public_url: str,
                    store, origin: str) -> "Purger":
        """The one way every caller (ypfs, the magickd admin commands) builds its Purger: the purge
        log in ``store``, a push to each of ``nodes`` (``ypws.nodes``) with ``token``
        (``cluster.admin_token``), and ``public_url`` for the CDN purge URL's ``{url}``.
        ``origin`` names the caller in the log entries."""
        return cls(PurgeLog(store, purge.settle), [(n.name, n.url) for n in nodes], token, origin=origin,
                   timeout=purge.push_timeout, cdn_purge_url=purge.cdn_purge_url, public_url=public_url)

    def log(self, paths: Sequence[str], reason: str = "") -> PurgeEntry:
        """Commit the purge (StorageError: not committed; change nothing then).

        Log before changing the store: a miss that refills the cache between the change
        and the node's first application is removed by its second (purgeapply.py)."""
        return self.purge_log.append(check_paths(paths), reason, self.origin)

    def push(self, entry: PurgeEntry) -> dict:
        """The fast path, after the change: every node at once; a report of what is true."""
        jobs = [(name, url, path) for name, url in self.nodes for path in entry.paths]
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PUSH_THREADS, len(jobs)))) as ex:
            outcomes = list(ex.map(lambda job: self._push(job[1], job[2]), jobs))
        nodes: dict[str, str] = {}
        for (name, _, _), outcome in zip(jobs, outcomes):
            if nodes.get(name, "applied") == "applied":
                nodes[name] = outcome
        applied = sum(1 for v in nodes.values() if v == "applied")
        report = {"logged": True, "log_entry": entry.key, "applied": f"{applied} of {len(nodes)} nodes",
                  "status": "applied" if applied == len(nodes) else "logged", "nodes": nodes}
        if self.cdn_purge_url:
            report["cdn"] = {path: self._cdn(path) for path in entry.paths}
        return report

    def purge(self, paths: Sequence[str], reason: str = "") -> dict:
        """Log, then push: for purges with no store change of their own (re-renders, admin PURGE)."""
        return self.push(self.log(paths, reason))

    def _push(self, base: str, path: str) -> str:
        try:
            resp = self.pool.request("PURGE", base + path, headers=self.headers, timeout=self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            return f"unreachable ({exc.__class__.__name__}); applies from the log"
        if resp.status < 300 or resp.status == 404:
            return "applied"
        return f"answered {resp.status}; applies from the log"

    def _cdn(self, path: str) -> str:
        url = self.cdn_purge_url.replace("{path}", quote(path)).replace("{url}", quote(self.public_url + path, safe=""))
        try:
            resp = self.pool.request("PURGE", url, timeout=self.timeout)
        except urllib3.exceptions.HTTPError as exc:
            return f"failed ({exc.__class__.__name__})"
        return "purged" if resp.status < 300 or resp.status == 404 else f"answered {resp.status}"
