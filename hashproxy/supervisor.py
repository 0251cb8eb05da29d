"""The parent process: bind once, fork the workers, restart any that die, stop them all by PID.

The listening socket is bound here and inherited across fork, so every worker
accepts from one queue; the shared counters are mapped here too,
before the fork, so every worker sees the same memory, and the prometheus
multiprocess folder is emptied and named here (tallies.py). A worker that dies is
replaced (its counter row zeroed first, its metrics files marked dead, what it
counted kept); one that keeps dying at start-up stops
the proxy, so `make run` notices instead of spinning. Workers get a parent-death
signal, so a master killed by SIGKILL takes them along (no orphan keeps serving).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Callable, Sequence

from cluster.config import HashproxySection
from cluster.lifeline import die_with_parent, hold_stops_across_forks
from cluster.web import mark_worker_dead, prepare_metrics_dir

from .loads import SharedCounters

#: a worker's main: (listening socket, shared counters, worker index) -> exit status
WorkerMain = Callable[[socket.socket, SharedCounters, int], int]

log = logging.getLogger("hashproxy")

MAX_QUICK_DEATHS = 5   # deaths within QUICK_DEATH seconds of start, in a row, before giving up
QUICK_DEATH = 2.0


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket the workers inherit; with ``reuse_port``, a bound but not listening
    placeholder that holds the port while each worker listens on its own SO_REUSEPORT socket."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if not reuse_port:
        sock.listen(2048)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def worker_socket(host: str, port: int) -> socket.socket:
    """A worker's own listening socket in the SO_REUSEPORT group: the kernel spreads connections evenly."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Supervisor:
    def __init__(self, settings: HashproxySection, rows: Sequence[str], worker_main: WorkerMain, metrics_dir: str):
        """``settings``: [hashproxy]; ``rows``: the shared counters' row names (app.counter_names);
        ``worker_main`` runs one worker in the forked child (server.run_worker bound to the config);
        ``metrics_dir``: the workers' prometheus multiprocess folder (emptied at start)."""
        self.settings, self.rows, self.worker_main = settings, list(rows), worker_main
        self.metrics_dir = metrics_dir
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (worker index, start time)
        self.stopping = False
        self.quick_deaths = 0

    def run(self) -> int:
        s = self.settings
        sock = bind(s.bind_host, s.port, s.reuse_port)
        self.shared = SharedCounters(s.workers, self.rows)
        prepare_metrics_dir(self.metrics_dir)  # before any worker imports prometheus_client
        self.sock = sock

        def on_signal(signum, frame):
            self.stopping = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        hold_stops_across_forks()  # a stop sent while a worker starts ends it at once (cluster.lifeline)
        log.info("hashproxy on http://%s:%d (bound to %s): %d workers, nodes %s, image balance %s",
                 s.host, s.port, s.bind_host, s.workers, ", ".join(self.rows), s.image_balance)
        for index in range(s.workers):
            self._spawn(index)
        code = 0
        while not self.stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            if pid and pid in self.workers:
                index, started = self.workers.pop(pid)
                mark_worker_dead(pid)
                log.warning("worker %d (pid %d) exited with %s; restarting", index, pid, os.waitstatus_to_exitcode(status))
                self.quick_deaths = self.quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH else 0
                if self.quick_deaths >= MAX_QUICK_DEATHS:
                    log.error("workers keep dying at start-up; stopping")
                    code = 1
                    break
                self._spawn(index)
                continue
            time.sleep(0.1)
        self._stop_all(s.graceful_timeout + 2.0)
        sock.close()
        return code

    def _spawn(self, index: int) -> None:
        self.shared.reset_worker(index)
        master = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                die_with_parent(master)  # a master killed by SIGKILL must not leave workers serving
                code = self.worker_main(self.sock, self.shared, index)
            except BaseException:
                log.exception("worker %d crashed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = (index, time.monotonic())

    def _stop_all(self, timeout: float) -> None:
        for pid in self.workers:
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.workers and time.monotonic() < deadline:
            for pid in list(self.workers):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.workers.pop(pid, None)
            time.sleep(0.05)
        for pid in list(self.workers):
            _kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.workers.clear()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
