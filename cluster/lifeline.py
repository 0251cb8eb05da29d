"""Forked workers die with their master: a parent-death signal, set in the worker after fork.

A master killed by SIGKILL cannot stop its workers. Left alone they keep their
inherited listening socket and go on serving with stale state (the hashproxy workers
share the port through SO_REUSEPORT next to a restarted proxy's workers), and a
gunicorn worker holding the port makes a restarted master fail to bind it for as long
as the worker takes to notice (up to its timeout). ``PR_SET_PDEATHSIG`` has the
kernel send the worker a signal the moment its parent goes.

The other way round, a master's stop must reach a worker however young. A child starts
with its master's signal handlers, which only note a stop for the master's loop: a
SIGTERM landing between the fork and the worker's own handlers was swallowed, and the
worker lived on, serving, until the master's SIGKILL (10 s later for a gunicorn node).
``hold_stops_across_forks`` holds the stop signals across every fork of the master and
releases them in the child only once their default action (exit) is back, so a stop
sent that early ends the worker at once.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
_holding = False

try:  # loaded once, in the master: the worker's call right after fork stays short
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies; False where prctl is missing.

    Call it in the child right after fork, with the parent's pid from before the fork:
    a parent that died before the call is caught by comparing it with getppid().
    """
    try:
        ok = _libc is not None and _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except AttributeError:  # a libc without prctl
        ok = False
    if ok and os.getppid() != parent_pid:  # the parent is already gone: the signal would never come
        os.kill(os.getpid(), sig)
    return ok


def hold_stops_across_forks() -> None:
    """In a master, from now on: the stop signals are blocked across each ``os.fork``; the
    parent then takes what came meanwhile as usual, and the child gets them with their
    default action (its own handlers replace that later). Idempotent."""
    global _holding
    if _holding:
        return
    _holding = True

    def block() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def release() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def release_in_child() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        release()

    os.register_at_fork(before=block, after_in_parent=release, after_in_child=release_in_child)
