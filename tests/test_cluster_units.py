"""`python -m cluster units`: one systemd unit per node of this host, and each one runs its node.

The files are parsed back (configparser reads the unit-file syntax we write), their
ExecStart is run with their Environment to check it really serves the named node,
and `systemd-analyze verify` checks them where it exists.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from cluster import procs
from cluster.config import dump_toml, load_dict

from .helpers import REPO, cluster_tree, write_config


def units_cmd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", "units", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), "YUPOO_CONFIG": ""})


def parse(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # unit-file keys are case-sensitive
    unit.read_string(path.read_text())
    return unit


def multi_host_config(tmp_path: Path) -> Path:
    tree = load_dict()
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('admin_token = "ADMIN-SECRET-1234"\nurl_key = "URLKEY-SECRET-5678"\n')
    tree["cluster"].update(data_dir=str(tmp_path / "var"), secrets_file=str(secrets))
    tree["hashproxy"].update(host="10.9.0.1", listen="0.0.0.0")
    tree["ypfs"]["nodes"] = [{"name": "up1", "host": "10.9.0.2", "port": 8101, "node_id": 1}]
    tree["magickd"]["nodes"] = [{"name": "render1", "host": "10.9.0.3", "port": 8201},
                                {"name": "render2", "host": "10.9.0.3", "port": 8202}]
    tree["ypws"]["nodes"] = [{"name": "cache1", "host": "10.9.0.4", "port": 8301}]
    tree["supervise"].update(restart_delay=0.25, burst=7, interval=90.0, stop_timeout=40.0)
    path = tmp_path / "cluster.toml"
    path.write_text(dump_toml(tree))
    return path


def test_one_unit_per_node_of_this_host_with_the_supervision_settings(tmp_path):
    config = multi_host_config(tmp_path)
    out = tmp_path / "units"
    r = units_cmd("--config", str(config), "--out", str(out), "--host", "10.9.0.3", "--user", "photos",
                  "--systemd", "254")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["yupoo-render1.service", "yupoo-render2.service"]
    assert r.stdout.split() == [str(out / "yupoo-render1.service"), str(out / "yupoo-render2.service")]
    assert "systemctl enable --now yupoo-render1.service yupoo-render2.service" in r.stderr
    unit = parse(out / "yupoo-render2.service")
    assert unit["Unit"]["After"] == "network-online.target" and unit["Unit"]["Wants"] == "network-online.target"
    assert (unit["Unit"]["StartLimitIntervalSec"], unit["Unit"]["StartLimitBurst"]) == ("90", "7")
    svc = unit["Service"]
    assert shlex.split(svc["ExecStart"]) == [sys.executable, "-m", "magickd", "serve", "--node", "render2"]
    assert svc["Environment"] == f"YUPOO_CONFIG={config}"
    assert (svc["Restart"], svc["RestartSec"], svc["KillMode"], svc["TimeoutStopSec"]) == ("always", "0.25", "mixed", "40")
    # the delay doubles from 0.25 s to restart_delay_max (30 s), as under `cluster run`: 7 steps (0.25 x 2^7 >= 30)
    assert (svc["RestartSteps"], svc["RestartMaxDelaySec"]) == ("7", "30")
    older = tmp_path / "older"
    r = units_cmd("--config", str(config), "--out", str(older), "--host", "10.9.0.3", "--systemd", "252")
    assert r.returncode == 0 and "no doubling" in r.stderr, r.stderr
    assert "RestartSteps" not in parse(older / "yupoo-render2.service")["Service"]  # 252 would call it unknown
    assert svc["User"] == "photos" and svc["WorkingDirectory"] == str(REPO)
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    # secrets are never written into a unit
    assert "SECRET" not in (out / "yupoo-render2.service").read_text() and "SECRET" not in r.stdout + r.stderr


def test_filters_pick_the_front_and_other_hosts(tmp_path):
    config = multi_host_config(tmp_path)
    r = units_cmd("--config", str(config), "--out", str(tmp_path / "front"), "--host", "10.9.0.1")
    assert r.returncode == 0, r.stderr
    (front,) = (tmp_path / "front").iterdir()
    assert front.name == "yupoo-hashproxy.service"
    assert shlex.split(parse(front)["Service"]["ExecStart"]) == [sys.executable, "-m", "hashproxy", "serve"]
    assert parse(front)["Service"]["User"] == "yupoo"  # the documented default
    r = units_cmd("--config", str(config), "--out", str(tmp_path / "picked"), "--role", "ypws", "--node", "up1")
    assert sorted(p.name for p in (tmp_path / "picked").iterdir()) == ["yupoo-cache1.service", "yupoo-up1.service"]
    # a host with no node: the clear error, nothing written
    r = units_cmd("--config", str(config), "--out", str(tmp_path / "none"), "--host", "10.9.0.99")
    assert r.returncode == 2 and "no node of this config belongs on this machine" in r.stderr
    assert not (tmp_path / "none").exists()


def test_units_need_a_config_file_a_sane_user_and_shared_secrets(tmp_path):
    r = units_cmd("--out", str(tmp_path / "u"))
    assert r.returncode == 2 and "--config" in r.stderr
    config = multi_host_config(tmp_path)
    r = units_cmd("--config", str(config), "--out", str(tmp_path / "u"), "--user", "root; rm -rf /")
    assert r.returncode == 2 and "--user" in r.stderr
    (tmp_path / "secrets.toml").unlink()
    r = units_cmd("--config", str(config), "--out", str(tmp_path / "u"), "--host", "10.9.0.3")
    assert r.returncode == 2 and "cluster.secrets_file" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "u").exists()


def test_the_units_execstart_serves_the_named_node(tmp_path):
    tree = cluster_tree(tmp_path, ypws_nodes=2, overrides={"ypws": {"workers": 1}})
    cfg, config = write_config(tmp_path, tree)
    out = tmp_path / "units"
    r = units_cmd("--config", str(config), "--out", str(out), "--node", "ypws2")  # written where it runs
    assert r.returncode == 0, r.stderr
    svc = parse(out / "yupoo-ypws2.service")["Service"]
    name, value = svc["Environment"].split("=", 1)
    proc = procs.start(shlex.split(svc["ExecStart"]), env={name: value, "PYTHONPATH": str(REPO)},
                       cwd=svc["WorkingDirectory"], log=tmp_path / "unit.log")
    try:
        procs.wait_http(f"{cfg.ypws.nodes[1].url}/healthz", timeout=30, proc=proc)
        assert requests.get(f"{cfg.ypws.nodes[1].url}/healthz", timeout=5).json()["node"] == "ypws2"
    finally:
        procs.stop(proc)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_every_unit(tmp_path):
    config = multi_host_config(tmp_path)
    out = tmp_path / "units"
    assert units_cmd("--config", str(config), "--out", str(out), "--role", "ypfs", "--role", "magickd",
                     "--role", "ypws", "--role", "hashproxy").returncode == 0
    files = sorted(out.iterdir())
    assert len(files) == 5
    r = subprocess.run(["systemd-analyze", "verify", *map(str, files)], capture_output=True, text=True, timeout=60)
    # it checks syntax, known keys and that ExecStart's program exists; it must say nothing about our units
    assert r.returncode == 0 and "yupoo-" not in r.stdout + r.stderr, r.stdout + r.stderr
    # ...and it does fail a broken one, so the check above means something
    broken = tmp_path / "broken" / "yupoo-x.service"
    broken.parent.mkdir()
    broken.write_text(files[0].read_text().replace(f"ExecStart={sys.executable}", "ExecStart=/nonexistent/python"))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "/nonexistent/python" in r.stdout + r.stderr
