"""Keep child processes running, as an init system would: restart with back-off, give up on crash loops.

Each child runs in its own process group (session). When one dies, whatever is left
of its group (workers that outlived their master) is killed, and it is started again
after a delay that starts at ``restart_delay`` and doubles with every death up to
``restart_delay_max``; a child that stayed up ``stable_after`` seconds starts the
doubling afresh. A child that would be restarted more than ``burst`` times within
``interval`` seconds is given up on, loudly, and the others keep running: one node's
crash loop never takes the rest of a host down. Everything is polled from one thread
(``step``), so the caller decides how long anything may take. Children get SIGTERM when
the supervisor itself dies, even by SIGKILL, so none is left running unsupervised.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import procs
from .config import SuperviseSection

RUNNING, WAITING, GIVEN_UP, STOPPED = "running", "waiting", "given up", "stopped"


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    cwd: str | None = None
    proc: subprocess.Popen | None = None
    state: str = WAITING
    started_at: float = 0.0
    next_start: float = 0.0
    delay: float = 0.0                       # the back-off the next death adds
    restarts: collections.deque = field(default_factory=collections.deque)  # times of recent restarts
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class Supervisor:
    def __init__(self, policy: SuperviseSection, *, clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] | None = None):
        self.policy = policy
        self.clock = clock
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.children: list[Child] = []

    def add(self, child: Child) -> Child:
        """Start ``child`` now and keep it running from here on."""
        child.delay = self.policy.restart_delay
        self.children.append(child)
        self._spawn(child)
        return child

    def _spawn(self, child: Child) -> None:
        # a supervisor killed by SIGKILL stops its nodes (SIGTERM: gracefully) rather than leave
        # them unsupervised, holding their ports against the next start
        child.proc = procs.start(child.argv, log=child.log, env=child.env, cwd=child.cwd,
                                 parent_death_signal=signal.SIGTERM)
        child.state = RUNNING
        child.started_at = self.clock()
        child.starts += 1

    def step(self) -> None:
        """Notice deaths, schedule restarts, start what is due. Call it often (every 0.1 s)."""
        now = self.clock()
        p = self.policy
        for child in self.children:
            if child.state == RUNNING and child.proc.poll() is not None:
                code = child.proc.returncode
                procs.stop(child.proc, timeout=1.0)  # leader gone: SIGKILL whatever is left of its group
                if now - child.started_at >= p.stable_after:
                    child.delay = p.restart_delay
                while child.restarts and now - child.restarts[0] > p.interval:
                    child.restarts.popleft()
                if len(child.restarts) >= p.burst:
                    child.state = GIVEN_UP
                    self.say(f"!!! {child.name}: GIVING UP after {len(child.restarts)} restarts within "
                             f"{p.interval:g} s (last exit {code}); the other nodes keep running"
                             + (f"; see {child.log}" if child.log else ""))
                    continue
                child.state = WAITING
                child.next_start = now + child.delay
                self.say(f"{child.name} exited with {code} after {now - child.started_at:.1f} s; "
                         f"restarting in {child.delay:g} s")
                child.delay = min(child.delay * 2, p.restart_delay_max)
            elif child.state == WAITING and now >= child.next_start:
                child.restarts.append(now)
                self._spawn(child)

    @property
    def all_given_up(self) -> bool:
        return bool(self.children) and all(c.state == GIVEN_UP for c in self.children)

    def run(self, *, poll: float = 0.1, until: Callable[[], bool] = lambda: False) -> int:
        """Supervise until ``until()`` is true (0) or every child has been given up on (1)."""
        while not until():
            self.step()
            if self.all_given_up:
                self.say("every node has been given up on; exiting")
                return 1
            time.sleep(poll)
        return 0

    def stop_all(self) -> None:
        """Stop every child, last started first, each by PID (SIGTERM, then SIGKILL after stop_timeout)."""
        for child in reversed(self.children):
            if child.proc is not None:
                procs.stop(child.proc, timeout=self.policy.stop_timeout)
            child.state = STOPPED
