"""The HTTP face of a magickd node: thin falcon resources over RenderService.

    POST /render   render (or find) a photo's renditions; see magickd/client.py for the contract
    GET  /healthz  liveness: 200 {"status": "ok", ...}, constant
    GET  /readyz   readiness: 200 while the store answers and a request would be admitted
                   (a ticket is free), else 503 with the reasons
    GET  /metrics  Prometheus text, merged over the node's worker processes

Every error is JSON ``{"error": code, "message": text}``; a 429 or 503 carries
Retry-After. A request ends within ``magickd.request_deadline``: its storage calls
share that deadline, and the slot wait and the render are cut to what is left.
``/render`` and ``/metrics`` need the cluster's service credential (``Authorization:
Bearer <cluster.admin_token>``): anyone who can reach the port could otherwise keep
the pool busy with ``force`` re-renders. Without it: 401, before the body is read.
A photo that does not exist, a wrong secret and a missing original get one and
the same 404, so the answer is no oracle for which ids exist.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import falcon

from cluster.web import RequestDeadline, json_errors, metrics_body, readiness, require_service_token
from storage.readiness import StorageProbe

from . import metrics
from .errors import BadRequest, RenderFailure
from .options import Target
from .service import Hooks, RenderService

log = logging.getLogger("magickd.app")
MAX_BODY = 64 * 1024


class MetricsHooks(Hooks):
    """Feeds the service's events into the Prometheus metrics."""

    def rendered(self, target: Target) -> None:
        metrics.RENDITIONS.labels(target.name, target.fmt).inc()

    def outcome(self, outcome: str) -> None:
        metrics.REQUESTS.labels(outcome).inc()

    def waiting(self, delta: int) -> None:
        metrics.QUEUE_DEPTH.inc(delta)

    def rendering(self, delta: int) -> None:
        metrics.IN_PROGRESS.inc(delta)

    def pipeline_time(self, seconds: float) -> None:
        metrics.RENDER_TIME.observe(seconds)


def _error(resp: falcon.Response, status: int, code: str, message: str) -> None:
    resp.status = status
    resp.media = {"error": code, "message": message}


class RenderResource:
    def __init__(self, service: RenderService, token: str):
        self.service = service
        self.token = token

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_service_token(req, self.token)
        started = time.monotonic()
        try:
            body = _read_json(req)
            renditions = self.service.render(
                body.get("user"), body.get("photo"), body.get("secret"),
                sizes=body.get("sizes"), formats=body.get("formats"), force=bool(body.get("force", False)),
            )
        except RenderFailure as exc:
            metrics.ERRORS.labels(exc.code).inc()
            _error(resp, exc.status, exc.code, exc.message)
            if exc.status in (429, 503):
                resp.set_header("Retry-After", str(getattr(exc, "retry_after", 1 if exc.status == 429 else 5)))
            return
        finally:
            metrics.LATENCY.observe(time.monotonic() - started)
        resp.media = {"renditions": [r.to_dict() for r in renditions]}


class HealthResource:
    def __init__(self, service: RenderService, node: str):
        self.service = service
        self.node = node

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        m = self.service.settings
        resp.media = {"status": "ok", "node": self.node, "workers": m.effective_workers,
                      "queue_size": m.queue_size}


class ReadyResource:
    """Ready to render: the store answers (cached probe) and the queue has room."""

    def __init__(self, service: RenderService, node: str):
        self.service, self.node = service, node
        self.probe = StorageProbe(service.store)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reasons = []
        ok, reason = self.probe.status()
        if not ok:
            reasons.append(reason)
        if self.service.admission.saturated():
            reasons.append("render queue full: every render slot and queue place is taken")
        readiness(resp, "magickd", self.node, not reasons, reasons)


class MetricsResource:
    def __init__(self, token: str):
        self.token = token

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        require_service_token(req, self.token)
        data, content_type = metrics_body()
        resp.data = data
        resp.content_type = content_type


def _read_json(req: falcon.Request) -> dict[str, Any]:
    length = req.content_length
    if length is None or length <= 0:
        raise BadRequest("a JSON body is required")
    if length > MAX_BODY:
        raise BadRequest(f"body over {MAX_BODY} bytes")
    try:
        body = json.loads(req.bounded_stream.read(length))
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for name in ("user", "photo", "secret"):
        if not isinstance(body.get(name), str):
            raise BadRequest(f"{name!r} must be a string")
    return body


def create_app(service: RenderService, node: str, token: str) -> falcon.App:
    """The node's WSGI app over ``service``; ``token`` (``cluster.admin_token``) is the service
    credential /render and /metrics require."""
    app = json_errors(falcon.App(middleware=[RequestDeadline(service.settings.request_deadline)]))
    app.add_route("/render", RenderResource(service, token))
    app.add_route("/healthz", HealthResource(service, node))
    app.add_route("/readyz", ReadyResource(service, node))
    app.add_route("/metrics", MetricsResource(token))
    return app
