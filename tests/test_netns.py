"""The multi-host harness itself (tests/netns.py): simulated hosts reach each other and
nothing else, and teardown leaves no namespace, interface or process behind."""

from __future__ import annotations

import os
import sys
import time

import pytest
import requests

from .netns import NetLab, ip, missing_requirements

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))

PROBE = "import socket,sys; s=socket.socket(); s.settimeout(2); print(s.connect_ex((sys.argv[1], int(sys.argv[2]))))"


def _host_addresses() -> list[str]:
    """The machine's own IPv4 addresses outside loopback (what a namespace must not reach)."""
    out = ip("-o", "-4", "addr", "show").stdout.splitlines()
    return [ln.split()[3].split("/")[0] for ln in out if " lo " not in ln and "10.77." not in ln]


def test_two_hosts_reach_each_other_and_nothing_else_then_vanish(tmp_path):
    with NetLab(tmp_path) as lab:
        a, b = lab.add_host("a"), lab.add_host("b")
        assert a.address != b.address
        server = lab.start("b", "server", [sys.executable, "-m", "http.server", "8000", "--bind", b.address])
        pid = server.pid
        # a reaches b's server (retry while it starts; bounded)
        for _ in range(100):
            res = lab.run("a", [sys.executable, "-c", PROBE, b.address, "8000"], timeout=10)
            if res.stdout.strip() == "0":
                break
            time.sleep(0.1)
        assert res.stdout.strip() == "0", res
        # the test process reaches it too, through the bridge
        assert requests.get(f"http://{b.address}:8000/", timeout=5).status_code == 200
        # a's loopback is its own: b's server is not on it
        assert lab.run("a", [sys.executable, "-c", PROBE, "127.0.0.1", "8000"]).stdout.strip() != "0"
        # the machine's other addresses are unreachable from inside (no route: ENETUNREACH)
        for addr in _host_addresses():
            res = lab.run("a", [sys.executable, "-c", PROBE, addr, "22"])
            assert res.stdout.strip() not in ("0", "111"), (addr, res)  # neither connected nor refused by it
        assert lab.hosts["b"].ns_pids() == [pid]
        prefix = lab.prefix
        assert any(n.startswith(prefix) for n in lab.leftovers())
    assert lab.leftovers() == []
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    assert prefix not in ip("netns", "list").stdout


def test_teardown_also_on_failure(tmp_path):
    lab = NetLab(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with lab:
            lab.add_host("x")
            proc = lab.start("x", "sleeper", ["sleep", "600"])
            raise RuntimeError("boom")
    assert proc.poll() is not None
    assert lab.leftovers() == []
