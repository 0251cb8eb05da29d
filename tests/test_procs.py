"""Process helpers (cluster/procs.py): a child that never gets ready is stopped, not leaked."""

from __future__ import annotations

import os
import sys

import pytest

from cluster import procs


def test_start_ready_stops_a_child_that_never_gets_ready():
    port = procs.free_port()
    seen: list = []
    real_start = procs.start

    def spy(*args, **kwargs):
        seen.append(real_start(*args, **kwargs))
        return seen[-1]

    procs.start = spy
    try:
        with pytest.raises(TimeoutError):
            procs.start_ready([sys.executable, "-c", "import time; time.sleep(60)"], f"http://127.0.0.1:{port}/",
                              timeout=1.0)
    finally:
        procs.start = real_start
    assert seen and seen[0].poll() is not None  # stopped, not leaked
    with pytest.raises(ProcessLookupError):
        os.kill(seen[0].pid, 0)
