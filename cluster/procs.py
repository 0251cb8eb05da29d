"""Starting and stopping child processes: shared by `make run`, the tests and the benchmarks.

Every process we start is stopped by its PID: SIGTERM to its process group, then
SIGKILL after a timeout. Every wait is bounded in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free ports (held open together while picking, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start(argv: Sequence[str], *, log: Path | None = None, env: dict | None = None, cwd: str | None = None,
          parent_death_signal: int | None = None) -> subprocess.Popen:
    """Start a child in its own process group, output to ``log`` (or inherited).

    With ``parent_death_signal`` the kernel sends the child that signal when this process
    dies, even by SIGKILL (set between fork and exec; call from the main thread only).
    """
    out = open(log, "ab") if log else None
    preexec = None
    if parent_death_signal is not None:
        from .lifeline import die_with_parent

        parent = os.getpid()

        def preexec() -> None:
            die_with_parent(parent, parent_death_signal)

    try:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT if out else None, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True, preexec_fn=preexec,
        )
    finally:
        if out:
            out.close()


def start_ready(argv: Sequence[str], url: str, *, timeout: float = 60.0, ok=(200,), **kwargs) -> subprocess.Popen:
    """start() then wait_http(url); a child that never gets ready is stopped here, not leaked."""
    proc = start(argv, **kwargs)
    try:
        wait_http(url, timeout=timeout, proc=proc, ok=ok)
    except BaseException:
        stop(proc)
        raise
    return proc


def _proc_stats() -> dict[int, list[str]]:
    """Fields after the command of every /proc/PID/stat (index 1 is the ppid, 11/12 utime/stime)."""
    stats: dict[int, list[str]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    stats[int(name)] = fh.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
    return stats


def _tree(pid: int, stats: dict[int, list[str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(child)
    out, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return sorted(out)


def descendants(pid: int) -> list[int]:
    """PIDs of every live process below ``pid`` (children, grandchildren...), sorted."""
    return _tree(pid, _proc_stats())


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its live descendants: a server's whole CPU use."""
    stats = _proc_stats()
    ticks = sum(int(stats[p][11]) + int(stats[p][12]) for p in [pid, *_tree(pid, stats)] if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    """SIGTERM the child's process group, SIGKILL it after ``timeout``; return the exit code."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(5)
    else:  # the leader is gone; make sure no child of it lingers
        signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group a child leads (start() gives each its own session), else the child."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_port(host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None, ok=(200,)) -> None:
    """Poll ``url`` until it answers with a status in ``ok``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status in ok:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer {ok} within {timeout}s (last: {last})")
