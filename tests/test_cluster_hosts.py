"""One config file for every host: which nodes run where, bind vs advertise, secrets across hosts.

The selection rule is tested on configs that name other machines' addresses (passed
in as this machine's), and once for real inside a network namespace the test makes,
whose only addresses it knows. Bind vs advertise is tested on real processes: a ypws
node and the proxy each bound to a loopback address of their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest
import requests

from cluster import config as config_mod
from cluster import hosts, run
from cluster.config import ConfigError, from_dict, load_dict

from .helpers import REPO, cluster_tree, write_config

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 10.9.0.0/24 2 0 2
        |-- 10.9.0.0
           /24 link UNICAST
        |-- 10.9.0.7
           /32 host LOCAL
        |-- 10.9.0.8
           /32 host LOCAL
        |-- 10.9.0.255
           /32 link BROADCAST
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
"""


def multi_host_tree(**cluster) -> dict:
    """Front on .1, upload on .2 (bound to every address), render on .3, two cache hosts .4 and .5."""
    tree = load_dict()
    tree["cluster"].update(cluster)
    tree["hashproxy"].update(host="10.9.0.1", listen="0.0.0.0")
    tree["ypfs"]["nodes"] = [{"name": "up1", "host": "10.9.0.2", "listen": "0.0.0.0", "port": 8101, "node_id": 1}]
    tree["magickd"]["nodes"] = [{"name": "render1", "host": "10.9.0.3", "port": 8201}]
    tree["ypws"]["nodes"] = [{"name": "cache1", "host": "10.9.0.4", "port": 8301},
                             {"name": "cache2", "host": "cache2.internal", "listen": "10.9.0.5", "port": 8301}]
    return tree


SECRETS = {"admin_token": "adm-" + "x" * 20, "url_key": "key-" + "y" * 30}


def names(targets) -> list[str]:
    return [t.name for t in targets]


# -- this machine's addresses -------------------------------------------------------------------


def test_local_addresses_are_read_from_proc_net(tmp_path):
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    found = hosts.local_addresses(tmp_path)
    assert {"10.9.0.7", "10.9.0.8", "127.0.0.1", "::1", "fd00::2", "0.0.0.0"} <= found
    assert not {"10.9.0.0", "10.9.0.255", "127.255.255.255"} & found  # network and broadcast entries are not ours
    # no /proc/net at all: loopback and the wildcards still count
    assert hosts.local_addresses(tmp_path / "missing") == {"127.0.0.1", "::1", "0.0.0.0", "::"}


def test_this_machines_addresses_include_every_address_it_can_bind():
    found = hosts.local_addresses()
    for addr in found - {"0.0.0.0", "::"}:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        if family == socket.AF_INET6 and addr.startswith("fe80"):
            continue  # link-local needs a scope id to bind
        with socket.socket(family) as s:
            s.bind((addr, 0))  # an address we call local really is one


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="network namespaces need root and iproute2")
def test_in_a_network_namespace_only_its_own_nodes_are_chosen(tmp_path):
    ns = f"yh{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        # the namespace's one address sits on its loopback device: no interface outside it is touched
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "addr", "add", "10.9.0.4/32", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, timeout=10)
        tree = multi_host_tree(**SECRETS)
        path = tmp_path / "multi.toml"
        path.write_text(config_mod.dump_toml(tree))
        code = ("import sys; from cluster import hosts; from cluster.config import load; "
                "cfg = load(sys.argv[1]); print(sorted(hosts.local_addresses())); "
                "print(','.join(t.name for t in hosts.select(cfg)))")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=30, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
        addresses, chosen = out.stdout.splitlines()
        assert "10.9.0.4" in addresses and "10.9.0.5" not in addresses
        assert chosen == "cache1"
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)


# -- the selection rule -------------------------------------------------------------------------


def test_one_box_defaults_run_everything_in_dependency_order():
    cfg = from_dict(load_dict())
    chosen = hosts.select(cfg, local={"192.0.2.99"})  # whatever this machine is, loopback is its own
    assert names(chosen) == ["magickd1", "ypfs1", "ypws1", "ypws2", "ypws3", "hashproxy"]
    assert chosen[-1].serve_args == ["serve"] and chosen[0].serve_args == ["serve", "--node", "magickd1"]


def test_nodes_are_chosen_by_their_host_or_listen_address():
    cfg = from_dict(multi_host_tree(**SECRETS))
    assert names(hosts.select(cfg, local={"10.9.0.4"})) == ["cache1"]
    assert names(hosts.select(cfg, local={"10.9.0.3", "10.9.0.4"})) == ["render1", "cache1"]
    # cache2 is advertised under a name this machine cannot resolve, but it listens on 10.9.0.5
    assert names(hosts.select(cfg, local={"10.9.0.5"})) == ["cache2"]
    # the front by hashproxy.host; up1 by its host: a wildcard listen (both have one) places nothing
    assert names(hosts.select(cfg, local={"10.9.0.1"})) == ["hashproxy"]
    assert names(hosts.select(cfg, local={"10.9.0.2"})) == ["up1"]


def test_a_host_name_counts_when_it_resolves_to_a_local_address():
    tree = multi_host_tree(**SECRETS)
    tree["magickd"]["nodes"][0]["host"] = "localhost"
    cfg = from_dict(tree)
    assert names(hosts.select(cfg, local={"10.9.0.4"})) == ["render1", "cache1"]


def test_node_and_role_flags_replace_the_address_rule():
    cfg = from_dict(multi_host_tree(**SECRETS))
    assert names(hosts.select(cfg, nodes=["cache2"], local=set())) == ["cache2"]
    assert names(hosts.select(cfg, roles=["ypws", "hashproxy"], nodes=["up1"])) == ["up1", "cache1", "cache2", "hashproxy"]
    with pytest.raises(ConfigError, match="no node named nope"):
        hosts.select(cfg, nodes=["nope"])
    with pytest.raises(ConfigError, match="unknown role web"):
        hosts.select(cfg, roles=["web"])


def test_nothing_here_is_a_clear_error_listing_both_sides():
    cfg = from_dict(multi_host_tree(**SECRETS))
    with pytest.raises(ConfigError) as err:
        hosts.select(cfg, local={"10.7.7.7", "127.0.0.1"})
    text = str(err.value)
    assert "10.7.7.7" in text and "127.0.0.1" in text  # this machine's addresses
    for shown in ("cache1 [ypws] 10.9.0.4:8301", "up1 [ypfs] 10.9.0.2 (listen 0.0.0.0):8101", "hashproxy [hashproxy] 10.9.0.1"):
        assert shown in text
    assert "--node" in text and "--role" in text


def test_cluster_run_refuses_when_no_node_belongs_here(tmp_path, capsys):
    tree = multi_host_tree(**SECRETS)
    for section in (tree["hashproxy"], *tree["ypfs"]["nodes"], *tree["magickd"]["nodes"], *tree["ypws"]["nodes"]):
        section.update(host="192.0.2.123", listen="")  # TEST-NET-1: never one of this machine's
    tree["cluster"]["data_dir"] = str(tmp_path / "var")
    path = tmp_path / "c.toml"
    path.write_text(config_mod.dump_toml(tree))
    assert run.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no node of this config belongs on this machine" in err and "192.0.2.123" in err
    assert not (tmp_path / "var").exists()  # nothing was started or written


def test_storage_s3_stays_a_one_box_convenience(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(config_mod.dump_toml(multi_host_tree(**SECRETS, data_dir=str(tmp_path / "var"))))
    assert run.main(["--config", str(path), "--storage", "s3"]) == 2
    assert "--storage s3" in capsys.readouterr().err


# -- bind vs advertise --------------------------------------------------------------------------


def test_listen_and_host_are_validated_and_listen_is_what_binds():
    tree = multi_host_tree(**SECRETS)
    cfg = from_dict(tree)
    up1 = cfg.node("ypfs", "up1")
    assert (up1.bind, up1.url) == ("0.0.0.0:8101", "http://10.9.0.2:8101")
    assert cfg.node("ypws", "cache1").bind == "10.9.0.4:8301"  # empty listen: bind the host
    assert cfg.hashproxy.bind_host == "0.0.0.0" and cfg.public_url == "http://10.9.0.1:8080"
    v6 = from_dict({**tree, "ypws": {**tree["ypws"], "nodes": [{"name": "c", "host": "fd00::4", "listen": "::", "port": 1}]}})
    assert (v6.ypws.nodes[0].bind, v6.ypws.nodes[0].url) == ("[::]:1", "http://[fd00::4]:1")
    for where, bad, key in [("ypws", {"host": "cache 1"}, "ypws.nodes.cache1.host"),
                            ("ypws", {"listen": "10.9.0.300"}, "ypws.nodes.cache1.listen"),
                            ("ypws", {"host": ""}, "ypws.nodes.cache1.host"),
                            ("hashproxy", {"listen": "front_1"}, "hashproxy.listen"),
                            ("hashproxy", {"host": "http://front"}, "hashproxy.host")]:
        broken = multi_host_tree(**SECRETS)
        if where == "hashproxy":
            broken["hashproxy"] = {**broken["hashproxy"], **bad}
        else:
            broken["ypws"]["nodes"][0].update(bad)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            from_dict(broken)


def test_serve_binds_the_listen_address_and_clients_dial_the_host(tmp_path, services):
    """ypws1 binds 127.0.0.2 only, the proxy 127.0.0.3 only; the proxy reaches ypws1 at its host."""
    tree = cluster_tree(tmp_path, overrides={"hashproxy": {"workers": 1}, "ypws": {"workers": 1}})
    ypws = tree["ypws"]["nodes"][0]
    ypws.update(host="127.0.0.2", listen="127.0.0.2")
    tree["hashproxy"]["listen"] = "127.0.0.3"
    cfg, path = write_config(tmp_path, tree)
    services.start_module("ypws1", "ypws", "serve", "--node", "ypws1", config_path=path,
                          health_url=f"http://127.0.0.2:{ypws['port']}/healthz")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{ypws['port']}/healthz", timeout=2)
    port = cfg.hashproxy.port
    services.start_module("hashproxy", "hashproxy", "serve", config_path=path,
                          health_url=f"http://127.0.0.3:{port}/healthz")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # a page goes to a ypws node: through the proxy on 127.0.0.3 to ypws1 dialled at 127.0.0.2
    r = requests.get(f"http://127.0.0.3:{port}/u/nobody", timeout=10)
    assert r.status_code == 200, (r.status_code, r.headers, r.text[:300])
    assert r.headers["Server"] == "ypws" and "hashproxy" in r.headers["Via"] and "<html" in r.text.lower()


# -- secrets across hosts -----------------------------------------------------------------------


def test_one_host_still_generates_its_secrets_once(tmp_path):
    tree = load_dict()
    tree["cluster"]["data_dir"] = str(tmp_path)
    tree["hashproxy"]["host"] = "localhost"  # loopback addresses all count as one host
    tree["ypws"]["nodes"][0]["host"] = "127.0.0.2"
    cfg = config_mod.ensure_secrets(from_dict(tree))
    assert cfg.cluster.admin_token and cfg.cluster.url_key
    assert (tmp_path / "secrets.toml").read_text().count(cfg.cluster.admin_token) == 1
    assert config_mod.secrets_source(from_dict(tree)) == str(tmp_path / "secrets.toml")


def test_several_hosts_without_shared_secrets_refuse_to_start(tmp_path):
    cfg = from_dict(multi_host_tree(data_dir=str(tmp_path)))
    with pytest.raises(ConfigError) as err:
        config_mod.ensure_secrets(cfg)
    assert "cluster.admin_token and cluster.url_key must be set" in str(err.value)
    assert "cluster.secrets_file" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing generated
    half = from_dict(multi_host_tree(data_dir=str(tmp_path), admin_token="a" * 24))
    with pytest.raises(ConfigError, match=r"^cluster\.url_key must be set"):
        config_mod.ensure_secrets(half)


def test_several_hosts_with_secrets_in_the_config_or_a_secrets_file(tmp_path):
    cfg = config_mod.ensure_secrets(from_dict(multi_host_tree(**SECRETS)))
    assert (cfg.cluster.admin_token, cfg.cluster.url_key) == (SECRETS["admin_token"], SECRETS["url_key"])

    file = tmp_path / "secrets.toml"
    missing = from_dict(multi_host_tree(secrets_file=str(file)))
    with pytest.raises(ConfigError, match=r"cluster\.secrets_file: .* does not exist"):
        config_mod.ensure_secrets(missing)
    file.write_text('admin_token = "from-file-admin"\n')
    with pytest.raises(ConfigError, match=r"cluster\.secrets_file: .* does not hold url_key"):
        config_mod.ensure_secrets(missing)
    file.write_text('admin_token = "from-file-admin"\nurl_key = "from-file-key"\n')
    cfg = config_mod.ensure_secrets(missing)
    assert (cfg.cluster.admin_token, cfg.cluster.url_key) == ("from-file-admin", "from-file-key")
    # the config's own value wins over the file's
    cfg = config_mod.ensure_secrets(from_dict(multi_host_tree(secrets_file=str(file), url_key="in-config")))
    assert (cfg.cluster.admin_token, cfg.cluster.url_key) == ("from-file-admin", "in-config")
    assert config_mod.secrets_source(from_dict(multi_host_tree(secrets_file=str(file)))) == str(file)
    assert config_mod.secrets_source(from_dict(multi_host_tree(**SECRETS))).startswith("set in the config")


@pytest.mark.parametrize("argv", [["ypfs", "serve", "--node", "up1"], ["magickd", "serve", "--node", "render1"],
                                  ["ypws", "serve", "--node", "cache1"], ["hashproxy", "serve"],
                                  ["cluster", "run"], ["cluster", "units"]])
def test_every_serve_command_refuses_a_multi_host_config_without_secrets(tmp_path, argv):
    path = tmp_path / "multi.toml"
    path.write_text(config_mod.dump_toml(multi_host_tree(data_dir=str(tmp_path / "var"))))
    out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO), "YUPOO_CONFIG": str(path)})
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr[-2000:])
    assert "cluster.admin_token and cluster.url_key must be set" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "var" / "secrets.toml").exists()
