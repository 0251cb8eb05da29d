"""Pieces every falcon service of the cluster shares: JSON errors and the gunicorn runner.

Every error any service returns is JSON, ``{"error": code, "message": text}``,
including falcon's own (404 route, 405, malformed multipart) and unexpected
exceptions (500, logged with a traceback, never the traceback in the body).
A storage failure that no resource turned into an answer of its own is a 503
with Retry-After, never a 500: whatever a request was doing when the store
failed, the client may retry it shortly. ``RequestDeadline`` gives every
request's storage calls one shared deadline (cluster.deadline).

Every response also carries ``X-Content-Type-Options: nosniff`` (a browser never
guesses a type from bytes, e.g. HTML inside an "image"), and HTML pages a CSP with
``frame-ancestors 'none'`` (no framing, no clickjacking). Internal endpoints
(magickd ``/render``, every ``/metrics``) take the cluster's service credential,
``cluster.admin_token``, as ``Authorization: Bearer``; ``/healthz`` and ``/readyz`` stay public.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import sys
from typing import Any, Callable

import falcon

from . import deadline
from .budget import GRACEFUL_SECONDS
from .errors import BackendError, BackendMissing
from .lifeline import die_with_parent, hold_stops_across_forks

log = logging.getLogger("cluster.web")


def fail(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> falcon.HTTPError:
    """An HTTPError that serialises as {"error": code, "message": message}."""
    return falcon.HTTPError(falcon.code_to_http_status(status), title=code, description=message, headers=headers)


def _code_of(title: str | None) -> str:
    if not title:
        return "error"
    # falcon's own titles look like "404 Not Found": turn them into "not_found"
    return re.sub(r"^\d{3}\s+", "", title).strip().lower().replace(" ", "_") or "error"


def _serialize(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"error": _code_of(exc.title), "message": exc.description or exc.title or ""}


def _unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict) -> None:
    if isinstance(exc, falcon.HTTPError):
        raise exc
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise fail(500, "internal_error", "the server failed; the error is logged")


#: seconds a client is asked to wait after a storage failure
STORAGE_RETRY_AFTER = "5"


def storage_failed(exc: BackendError) -> falcon.HTTPError:
    """The answer to a storage failure: 503 + Retry-After (the store's message names no secret)."""
    return fail(503, "storage_unavailable", f"storage failed: {exc}", {"Retry-After": STORAGE_RETRY_AFTER})


def _storage_error(req: falcon.Request, resp: falcon.Response, exc: BackendError, params: dict) -> None:
    if isinstance(exc, BackendMissing):  # a read that found nothing, not caught where it was made
        raise fail(404, "not_found", "no such object")
    log.warning("storage failed on %s %s: %s", req.method, req.path, exc)
    raise storage_failed(exc)


NOSNIFF = ("X-Content-Type-Options", "nosniff")
HTML_CSP = ("Content-Security-Policy", "frame-ancestors 'none'")


class SecurityHeaders:
    """nosniff on every response; no framing of HTML pages."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        resp.set_header(*NOSNIFF)
        if (resp.content_type or "").startswith("text/html"):
            resp.set_header(*HTML_CSP)


def json_errors(app: falcon.App) -> falcon.App:
    app.set_error_serializer(_serialize)
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(BackendError, _storage_error)
    app.add_middleware(SecurityHeaders())
    return app


class RequestDeadline:
    """Falcon middleware: the request's storage calls end within ``seconds`` of its start (together)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        deadline.begin(self.seconds)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool) -> None:
        deadline.end()


def readiness(resp: falcon.Response, service: str, node: str, ready: bool, reasons: list[str]) -> None:
    """A /readyz answer: 200 when ready, else 503 with the reasons (public: no secrets in them)."""
    resp.set_header("Cache-Control", "no-store")
    if ready:
        resp.media = {"status": "ready", "service": service, "node": node}
        return
    resp.status = falcon.HTTP_503
    resp.set_header("Retry-After", "1")
    resp.media = {"error": "not_ready", "message": "; ".join(reasons) or "not ready", "service": service,
                  "node": node, "reasons": reasons}


def bearer_ok(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` matches (constant time); never with an empty token."""
    scheme, _, given = (header or "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def require_service_token(req: falcon.Request, token: str) -> None:
    """401 unless the request carries the cluster's service credential; the same answer for a wrong one or none."""
    if not bearer_ok(req.get_header("Authorization"), token):
        raise fail(401, "unauthorized", "this endpoint needs 'Authorization: Bearer <service token>'",
                   headers={"WWW-Authenticate": "Bearer"})


def serve(load_app: Callable[[], Any], bind: str, workers: int, *, timeout: int = 60, name: str = "app",
          options: dict[str, Any] | None = None) -> None:
    """Run ``load_app()`` under gunicorn (pre-fork; the app is built in each worker, after fork)."""
    from gunicorn.app.base import BaseApplication

    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

    extra = dict(options or {})
    own_post_fork = extra.pop("post_fork", None)

    def post_fork(server, worker) -> None:
        # a master killed by SIGKILL takes its workers along: an orphan would hold the port
        # (a restarted master could not bind it) and go on serving until it notices
        die_with_parent(worker.ppid)
        if own_post_fork:
            own_post_fork(server, worker)

    def child_exit(server, worker) -> None:
        if metrics_dir:
            mark_worker_dead(worker.pid)

    settings = {
        "bind": bind, "workers": workers, "timeout": timeout, "graceful_timeout": GRACEFUL_SECONDS, "proc_name": name,
        "worker_class": "sync", "accesslog": "-", "errorlog": "-", "loglevel": "info",
        "control_socket_disable": True,  # gunicorn 27 would share one socket in $HOME between servers
        "access_log_format": '{"t":"%(t)s","remote":"%(h)s","method":"%(m)s","path":"%(U)s","status":%(s)s,"bytes":"%(B)s","ms":%(M)s,"ua":"%(a)s"}',
        "child_exit": child_exit,
        "post_fork": post_fork,
        **extra,
    }

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            return load_app()

    hold_stops_across_forks()  # a stop sent while a worker boots ends it at once (cluster.lifeline)
    _App().run()


def prepare_metrics_dir(path: str) -> None:
    """Empty the prometheus multiprocess folder and point the client at it (before it is imported:
    it picks its mode once, as it loads, and would otherwise count in memory no scrape merges)."""
    if "prometheus_client.values" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
    os.makedirs(path, exist_ok=True)
    for entry in os.listdir(path):
        if entry.endswith(".db"):
            os.unlink(os.path.join(path, entry))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def mark_worker_dead(pid: int) -> None:
    """prometheus multiprocess bookkeeping for a dead worker: its live gauges go, its counters stay."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def metrics_body(*collectors: Any, registry: Any = None) -> tuple[bytes, str]:
    """Prometheus exposition of this service: every worker's figures when multiprocess (else
    ``registry``'s, by default the process-wide one), plus ``collectors`` read at scrape time
    (node-wide state such as a cache's size, which no worker owns)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess

    if not collectors and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(registry or REGISTRY), CONTENT_TYPE_LATEST
    scrape = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(scrape)
    else:
        scrape.register(registry or REGISTRY)  # a registry is a collector of everything registered in it
    for collector in collectors:
        scrape.register(collector)
    return generate_latest(scrape), CONTENT_TYPE_LATEST
