"""Forked workers die with their master: a parent-death signal, set in the worker after fork.

A master killed by SIGKILL cannot stop its workers. Left alone they keep their
inherited listening socket and go on serving with stale state (the hashproxy workers
share the port through SO_REUSEPORT next to a restarted proxy's workers), and a
gunicorn worker holding the port makes a restarted master fail to bind it for as long
as the worker takes to notice (up to its timeout). ``PR_SET_PDEATHSIG`` has the
kernel send the worker a signal the moment its parent goes.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

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
