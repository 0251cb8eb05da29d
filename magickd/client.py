"""Calling the render pool: used by ypfs (after upload), ypws (missing size) and the admin commands.

Wire contract (the service in magickd/app.py implements it):

    POST /render   {"user": ..., "photo": ..., "secret": ...,
                    "sizes": ["small", ...] | null (all), "formats": ["webp"] | null (each default),
                    "force": false (optional: re-render renditions that already exist)}
      200  {"renditions": [{"size", "format", "version", "key", "width", "height", "bytes"}]}
      404  original or record missing        422  original undecodable / over limits
      429  queue full (Retry-After)          503  node unhealthy
      401  no or wrong service credential (``Authorization: Bearer <cluster.admin_token>``,
           which this client always sends)
      every error body: {"error": code, "message": text}

Node choice: the nodes are ordered per photo by rendezvous hashing (xxhash), so
every caller sends a given photo to the same node first, where concurrent
requests for it coalesce into one render; on a connect error, timeout, 429 or
5xx the next node in that order is tried. A caller that must answer in time
(ypws, for a missing size) gives ``budget``: the whole call, every node
together, ends within it, so a node that times out spends the budget and no
second full wait follows.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import urllib3

from cluster.config import MagickdSection, NodeConfig
from cluster.ring import Ring
from storage.keys import PhotoRef


class RenderError(Exception):
    """magickd answered with a definite failure (4xx other than 429)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class RenderUnavailable(Exception):
    """No magickd node could take the request (all down, busy or failing)."""


@dataclass(frozen=True)
class Rendition:
    """One rendition as the wire contract reports it (the service builds these too)."""

    size: str
    format: str
    version: str
    key: str
    width: int
    height: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RENDITION_FIELDS = tuple(f.name for f in fields(Rendition))


@functools.lru_cache(maxsize=8)
def _ring(names: tuple[str, ...]) -> Ring:
    return Ring(names)


def node_order(nodes: Sequence[NodeConfig], photo_id: str) -> list[NodeConfig]:
    """Rendezvous (highest random weight) order of the nodes for one photo: the cluster's one ring."""
    return [nodes[i] for i in _ring(tuple(n.name for n in nodes)).order(photo_id)]


class RenderClient:
    def __init__(self, magickd: MagickdSection, token: str, pool: urllib3.PoolManager | None = None,
                 timeout: float | None = None):
        """A client of the ``[magickd]`` nodes; ``token`` is the service credential (cluster.admin_token)."""
        self.nodes = magickd.nodes
        self.retries = magickd.client_retries
        self.timeout = timeout if timeout is not None else magickd.client_timeout
        self.pool = pool or urllib3.PoolManager(maxsize=8, retries=False)
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def render(
        self, ref: PhotoRef, sizes: Sequence[str] | None = None, formats: Sequence[str] | None = None,
        timeout: float | None = None, force: bool = False, budget: float | None = None,
    ) -> list[Rendition]:
        """Render (or find) the renditions; ``force`` re-renders ones that exist (verify --repair).

        ``budget``: seconds for the whole call; each node gets what is left of it, and
        no further node is tried once less than a second remains.
        """
        payload: dict[str, Any] = {
            "user": ref.user, "photo": ref.photo_id, "secret": ref.secret,
            "sizes": list(sizes) if sizes is not None else None,
            "formats": list(formats) if formats is not None else None,
        }
        if force:
            payload["force"] = True
        body = json.dumps(payload).encode()
        failures: list[str] = []
        read = timeout or self.timeout
        end = None if budget is None else time.monotonic() + budget
        for node in node_order(self.nodes, ref.photo_id)[: self.retries + 1]:
            if end is not None:
                left = end - time.monotonic()
                if left < 1.0:
                    failures.append("no time left for another node")
                    break
                read = min(read, left)
            try:
                resp = self.pool.request(
                    "POST", f"{node.url}/render", body=body, headers=self.headers,
                    timeout=urllib3.Timeout(connect=min(2.0, read), read=read),
                )
            except urllib3.exceptions.HTTPError as exc:
                failures.append(f"{node.name}: {exc.__class__.__name__}")
                continue
            answer = _json(resp.data)
            if resp.status == 200:
                return [Rendition(**{k: r[k] for k in _RENDITION_FIELDS}) for r in answer.get("renditions", [])]
            if resp.status == 429 or resp.status >= 500:
                failures.append(f"{node.name}: {resp.status} {answer.get('error', '')}")
                continue
            raise RenderError(resp.status, answer.get("error", "error"), answer.get("message", ""))
        raise RenderUnavailable("no magickd node could render: " + "; ".join(failures))


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}
