"""Simulated hosts for the multi-host tests: Linux network namespaces on a bridge we create.

Each simulated host is a network namespace with loopback up and one address on a
/24 of its own (10.77.N.0/24, N from the pid so two test runs on one box never
share a subnet, a name, or an interface). The hosts are joined by a bridge; the
test process itself gets the bridge's .1 address so it can act as the browser,
upload client and operator. Namespaces have no default route, so a process inside
one reaches the other simulated hosts and nothing else (not the machine's other
addresses, not the internet).

Every process started in a host is recorded by PID and stopped by PID (SIGTERM to
its process group, SIGKILL after a timeout); at teardown whatever is still inside
a namespace we made (``ip netns pids``) is SIGKILLed too, then every namespace,
veth and the bridge is deleted. ``NetLab`` is a context manager and teardown runs
in ``finally``, also on failure and on KeyboardInterrupt; the ``netlab`` fixture in
tests/test_*.py wraps it. Needs root and iproute2's ``ip``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cluster import procs


def missing_requirements() -> str | None:
    """Why the netns tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    if not shutil.which("ip"):
        return "iproute2's `ip` is not installed"
    return None


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ...` (bounded in time), raising with its stderr on failure when ``check``."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")
    return res


def _free_subnet(start: int) -> int:
    """The first 10.77.N.0/24 from ``start`` on that no interface of this machine uses yet."""
    used = ip("-4", "-o", "addr", "show").stdout
    for i in range(250):
        n = 1 + (start - 1 + i) % 250
        if f" 10.77.{n}." not in used:
            return n
    raise RuntimeError("every 10.77.N.0/24 is in use")


@dataclass
class Host:
    """One simulated machine: a namespace with one address, and the processes we run in it."""

    name: str
    netns: str
    address: str
    veth: str  # host-side end of its veth pair (the namespace side is eth0)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def ns_pids(self) -> list[int]:
        """Every process now inside this host's namespace (ours, since we made it)."""
        res = ip("netns", "pids", self.netns, check=False)
        return [int(p) for p in res.stdout.split() if p.isdigit()]


class NetLab:
    """A bridge and N namespaces, torn down completely by ``close()`` (idempotent)."""

    def __init__(self, workdir: Path, prefix: str | None = None):
        self.workdir = workdir
        tag = os.getpid() % 100000
        self.prefix = prefix or f"yp{tag:05d}"            # <= 7 chars, so interface names fit in 15
        self.subnet = _free_subnet(1 + tag % 250)      # 10.77.{subnet}.0/24
        self.bridge = f"{self.prefix}br"
        self.gateway = f"10.77.{self.subnet}.1"        # the test process's own address on the bridge
        self.hosts: dict[str, Host] = {}
        self._bridge_made = False
        self._old_sigterm = None

    # -- building --------------------------------------------------------------------
    def __enter__(self) -> "NetLab":
        # a SIGTERM (CI cancelling the job, `timeout`) must unwind through close() too
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self._make_bridge()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _make_bridge(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        """A new namespace with loopback up and the next address of the subnet, on the bridge."""
        index = len(self.hosts)
        host = Host(name=name, netns=f"{self.prefix}-{name}", address=f"10.77.{self.subnet}.{10 + index}",
                    veth=f"{self.prefix}v{index}")
        self.hosts[name] = host  # recorded first, so close() removes whatever part of it exists
        ip("netns", "add", host.netns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", f"{host.veth}p")
        ip("link", "set", f"{host.veth}p", "netns", host.netns)
        ip("link", "set", host.veth, "master", self.bridge)
        ip("link", "set", host.veth, "up")
        inside = ("netns", "exec", host.netns, "ip")
        ip(*inside, "link", "set", "lo", "up")
        ip(*inside, "link", "set", f"{host.veth}p", "name", "eth0")
        ip(*inside, "addr", "add", f"{host.address}/24", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        (self.workdir / name).mkdir(parents=True, exist_ok=True)
        return host

    # -- processes -------------------------------------------------------------------
    def start(self, host: str, name: str, argv: Sequence[str], *, env: dict | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Run ``argv`` inside ``host``'s namespace (its own session), log in {workdir}/{host}/{name}.log.

        `ip netns exec` execs the command, so the recorded PID is the command's own.
        """
        h = self.hosts[host]
        if name in h.procs and h.procs[name].poll() is None:
            raise RuntimeError(f"{name} already runs on {host}")
        proc = procs.start(["ip", "netns", "exec", h.netns, *argv], log=self.log_path(host, name), env=env,
                           cwd=str(cwd or self.workdir / host))
        h.procs[name] = proc
        return proc

    def run(self, host: str, argv: Sequence[str], *, timeout: float = 60.0, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run a short command inside ``host`` and wait for it (bounded by ``timeout``)."""
        h = self.hosts[host]
        return subprocess.run(["ip", "netns", "exec", h.netns, *argv], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})},
                              cwd=str(cwd or self.workdir / host), stdin=subprocess.DEVNULL)

    def log_path(self, host: str, name: str) -> Path:
        return self.workdir / host / f"{name}.log"

    def log(self, host: str, name: str) -> str:
        path = self.log_path(host, name)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, host: str, name: str, timeout: float = 10.0) -> int | None:
        proc = self.hosts[host].procs.pop(name, None)
        return procs.stop(proc, timeout) if proc else None

    def set_link(self, host: str, up: bool) -> None:
        """Cut ``host`` off the network (or reconnect it), its processes still running: what the
        others see of a host that lost power or its switch port (no refusal, only silence)."""
        ip("netns", "exec", self.hosts[host].netns, "ip", "link", "set", "eth0", "up" if up else "down")

    # -- teardown --------------------------------------------------------------------
    def close(self) -> None:
        """Stop every recorded process by PID (SIGTERM to all, SIGKILL to what is left after 5 s),
        kill stragglers in our namespaces, delete every namespace, veth and the bridge.
        Safe to call twice and after a partial set-up."""
        running = [p for h in self.hosts.values() for p in h.procs.values()]
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):  # all at once, then each waited
            for proc in running:
                if proc.poll() is None:
                    procs.signal_group(proc.pid, sig)
            deadline = time.monotonic() + wait
            for proc in running:
                try:
                    proc.wait(max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for h in self.hosts.values():
            h.procs.clear()
        for h in self.hosts.values():
            deadline = time.monotonic() + 10
            while (left := h.ns_pids()) and time.monotonic() < deadline:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.05)
            ip("netns", "del", h.netns, check=False)
            ip("link", "del", h.veth, check=False)  # normally gone with its peer's namespace
        self.hosts.clear()
        if self._bridge_made:
            ip("link", "del", self.bridge, check=False)
            self._bridge_made = False
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def leftovers(self) -> list[str]:
        """Namespaces and interfaces of ours still present (empty after close())."""
        names = [ln.split()[0] for ln in ip("netns", "list").stdout.splitlines() if ln.strip()]
        links = [ln.split(":")[1].strip().split("@")[0] for ln in ip("-o", "link").stdout.splitlines()]
        return [n for n in names + links if n.startswith(self.prefix)]
