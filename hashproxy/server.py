"""One worker process: a uvloop event loop serving the shared listening socket until SIGTERM.

Shutdown is graceful, as in uvicorn's Server.shutdown: stop accepting, let the
responses in progress finish (up to ``graceful_timeout``), then close what is left.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from typing import Callable

import uvloop

from cluster.config import HashproxySection

from .app import ProxyApp
from .checker import HealthChecker
from .loads import SharedCounters
from .protocol import ProxyProtocol

log = logging.getLogger("hashproxy")

#: builds a worker's ProxyApp from (shared=, worker=, loop=): ProxyApp with its config bound (__main__.py)
AppFactory = Callable[..., ProxyApp]


async def serve(settings: HashproxySection, make_app: AppFactory, sock: socket.socket, shared: SharedCounters,
                worker: int) -> None:
    loop = asyncio.get_running_loop()
    app = make_app(shared=shared, worker=worker, loop=loop)
    s = settings
    if s.reuse_port:
        from .supervisor import worker_socket

        sock = worker_socket(s.bind_host, s.port)
    server = await loop.create_server(lambda: ProxyProtocol(app), sock=sock, backlog=2048)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    checker = HealthChecker([(app.ypws, app.pools["ypws"]), (app.ypfs, app.pools["ypfs"])],
                            s.health_interval, s.health_timeout)
    checks = loop.create_task(checker.run())
    sweeper = loop.create_task(app.sweep(min(0.25, s.read_timeout / 4, s.client_timeout / 4)))
    publisher = loop.create_task(app.publish())
    log.info("worker %d serving on %s:%d", worker, s.bind_host, s.port)
    await stop.wait()
    log.info("worker %d stopping", worker)
    server.close()
    await app.shutdown(s.graceful_timeout)
    for task in (checks, sweeper, publisher):
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def run_worker(settings: HashproxySection, make_app: AppFactory, sock: socket.socket, shared: SharedCounters,
               worker: int) -> int:
    gc.freeze()  # start-up objects never die: keep them out of every later collection
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(settings, make_app, sock, shared, worker))
    finally:
        loop.close()
    return 0
