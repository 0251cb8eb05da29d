"""The config: defaults.toml as the one source of defaults, each section validating itself as
the config loads, and `cluster check` / `cluster run` refusing a bad value before anything starts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
import typing

import pytest

from cluster import config as config_mod
from cluster.config import (DEFAULTS_PATH, IMAGE_BALANCE_MODES, Config, ConfigError, NodeConfig, defaults, dump_toml,
                            from_dict, load, load_dict)
from hashproxy.balancer import IMAGE_BALANCERS

from .helpers import REPO, deep_update


def test_defaults_load_without_any_file(tmp_path, monkeypatch):
    monkeypatch.delenv("YUPOO_CONFIG", raising=False)
    tree = load_dict()
    tree["cluster"]["data_dir"] = str(tmp_path)
    cfg = config_mod.ensure_secrets(from_dict(tree))
    assert [p.name for p in cfg.sizes] == ["square", "thumb", "small", "medium", "large", "xlarge"]
    assert cfg.size("square").crop == "attention" and cfg.size("square").width == 75
    assert cfg.limits.max_upload_bytes == 50 * 1024 * 1024 and cfg.limits.max_pixels == 100_000_000
    assert cfg.public_url == "http://127.0.0.1:8080"
    assert len(cfg.ypws.nodes) == 3
    # generated secrets are persisted and reused by every later load
    again = config_mod.ensure_secrets(from_dict(tree))
    assert cfg.cluster.admin_token and again.cluster.admin_token == cfg.cluster.admin_token
    assert again.cluster.url_key == cfg.cluster.url_key


def test_user_file_overrides_and_is_strict(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[limits]\nmax_pixels = 5\n[cluster]\ndata_dir = "%s"\n' % tmp_path)
    assert load(good).limits.max_pixels == 5
    typo = tmp_path / "typo.toml"
    typo.write_text("[limits]\nmax_pixel = 5\n")
    with pytest.raises(ConfigError, match="unknown key.*max_pixel"):
        load(typo)
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text('[limits]\nmax_pixels = "many"\n')
    with pytest.raises(ConfigError, match="limits.max_pixels: expected int"):
        load(wrong_type)
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml")


def test_config_validation_rejects_unsafe_values():
    tree = load_dict()
    tree["ypfs"]["nodes"] = [{"name": "a", "port": 1, "node_id": 3}, {"name": "b", "port": 2, "node_id": 3}]
    with pytest.raises(ConfigError, match="node_id must be unique"):
        from_dict(tree)
    tree = load_dict()
    tree["sizes"][0]["crop"] = "sideways"
    with pytest.raises(ConfigError, match="crop"):
        from_dict(tree)


def test_dump_toml_round_trips():
    tree = load_dict()
    assert from_dict(tomllib.loads(dump_toml(tree))) == from_dict(tree)


# -- defaults live once: defaults.toml ---------------------------------------------------


def _dataclass_keys(cls: type, prefix: str = "") -> set[str]:
    """Every config key a dataclass accepts, dotted; lists of tables as ``key[]``."""
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out |= _dataclass_keys(typing.get_args(tp)[0], f"{key}[].")
        elif dataclasses.is_dataclass(tp):
            out |= _dataclass_keys(tp, f"{key}.")
        else:
            out.add(key)
    return out


def _toml_keys(tree: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _toml_keys(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out |= _toml_keys(item, f"{prefix}{key}[].")
        else:
            out.add(f"{prefix}{key}")
    return out


def test_every_default_is_a_field_and_every_field_has_its_default_in_defaults_toml():
    with open(DEFAULTS_PATH, "rb") as fh:
        documented = _toml_keys(tomllib.load(fh))
    fields = _dataclass_keys(Config) - {"source"}  # source: where the file came from, not a setting
    # per-node keys a node may leave out (host, listen, node_id) have their one default in NodeConfig
    optional_node = {f.name for f in dataclasses.fields(NodeConfig) if f.default is not dataclasses.MISSING}
    node_lists = {k.split("[]")[0] for k in fields if "[]." in k}
    assert node_lists == {"ypfs.nodes", "magickd.nodes", "ypws.nodes", "sizes"}
    missing = {k for k in fields - documented
               if not ("nodes[]." in k and k.rsplit(".", 1)[1] in optional_node)}
    assert not missing, f"fields without a key in defaults.toml: {sorted(missing)}"
    assert not documented - fields, f"defaults.toml keys without a field: {sorted(documented - fields)}"
    text = DEFAULTS_PATH.read_text()
    for name in optional_node:
        assert name in text  # documented in the comment above [[ypfs.nodes]]


def test_sections_carry_no_default_values_of_their_own():
    def sections(cls: type):
        for tp in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(tp):
                yield tp
                yield from sections(tp)

    found = list(sections(Config))
    assert {c.__name__ for c in found} >= {"StorageSection", "S3StoreConfig", "YpwsSection", "SuperviseSection"}
    for cls in found:
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, \
                f"{cls.__name__}.{f.name} has a default of its own; defaults.toml holds it"
    with pytest.raises(TypeError):
        config_mod.YpwsSection()  # built only from the merged tree, or from defaults()


def test_defaults_helper_gives_each_section_for_tests_and_code_without_a_file():
    base = defaults()
    assert base is defaults()  # read once
    assert base.ypws.cache_policy == "s3fifo+nthmiss" and base.supervise.burst == 5
    tuned = dataclasses.replace(base.ypws, workers=1)
    assert tuned.workers == 1 and tuned.cache_bytes == base.ypws.cache_bytes


# -- each section validates itself --------------------------------------------------------

#: (overrides, the key the error must start with): one or more per section, numeric ranges included
BAD = [
    ({"cluster": {"public_url": "ftp://x"}}, "cluster.public_url"),
    ({"cluster": {"data_dir": ""}}, "cluster.data_dir"),
    ({"storage": {"backend": "nfs"}}, "storage.backend"),
    ({"storage": {"s3": {"endpoint": "http://127.0.0.1:8333"}}}, "storage.s3.endpoint"),
    ({"storage": {"s3": {"bucket": "Not_A_Bucket"}}}, "storage.s3.bucket"),
    ({"storage": {"s3": {"part_size": 1024}}}, "storage.s3.part_size"),
    ({"storage": {"s3": {"retries": 0}}}, "storage.s3.retries"),
    ({"purge": {"poll_interval": 0.0}}, "purge.poll_interval"),
    ({"limits": {"max_upload_bytes": 0}}, "limits.max_upload_bytes"),
    ({"limits": {"spool_threshold": -1}}, "limits.spool_threshold"),
    ({"limits": {"max_title_chars": 0}}, "limits.max_title_chars"),
    ({"limits": {"decode_timeout": 0.0}}, "limits.decode_timeout"),
    ({"ids": {"node_id": 256}}, "ids.node_id"),
    ({"ids": {"epoch_ms": -1}}, "ids.epoch_ms"),
    ({"ypfs": {"workers": 0}}, "ypfs.workers"),
    ({"ypfs": {"render_retries": -1}}, "ypfs.render_retries"),
    ({"magickd": {"workers": -1}}, "magickd.workers"),
    ({"magickd": {"queue_size": -1}}, "magickd.queue_size"),
    ({"magickd": {"vips_concurrency": 0}}, "magickd.vips_concurrency"),
    ({"magickd": {"webp_effort": 7}}, "magickd.webp_effort"),
    ({"magickd": {"avif_effort": 10}}, "magickd.avif_effort"),
    ({"magickd": {"client_retries": -1}}, "magickd.client_retries"),
    ({"ypws": {"workers": 0}}, "ypws.workers"),
    ({"ypws": {"threads": 0}}, "ypws.threads"),
    ({"ypws": {"cache_bytes": 0}}, "ypws.cache_bytes"),
    ({"ypws": {"max_age": -1}}, "ypws.max_age"),
    ({"ypws": {"max_connections": 0}}, "ypws.max_connections"),
    ({"ypws": {"client_timeout": 0.0}}, "ypws.client_timeout"),
    ({"ypws": {"hotlink_action": "redirect"}}, "ypws.hotlink_action"),
    ({"ypws": {"cache_policy": "fifo"}}, "ypws.cache_policy"),
    ({"ypws": {"access_log": ""}}, "ypws.access_log"),
    ({"hashproxy": {"fail_threshold": 0}}, "hashproxy.fail_threshold"),
    ({"hashproxy": {"health_interval": 0.0}}, "hashproxy.health_interval"),
    ({"hashproxy": {"connect_timeout": -1.0}}, "hashproxy.connect_timeout"),
    ({"hashproxy": {"max_connections": 0}}, "hashproxy.max_connections"),
    ({"hashproxy": {"max_request_line": 10}}, "hashproxy.max_request_line"),
    ({"hashproxy": {"pool_max_idle": -1}}, "hashproxy.pool_max_idle"),
    ({"supervise": {"burst": 0}}, "supervise.burst"),
    ({"hashproxy": {"port": 70000}}, "hashproxy.port"),
]


@pytest.mark.parametrize("overrides, key", BAD, ids=[key for _, key in BAD])
def test_each_section_refuses_a_bad_value_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        from_dict(deep_update(load_dict(), overrides))
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_image_balance_values_are_the_balancers_hashproxy_has():
    assert set(IMAGE_BALANCE_MODES) == set(IMAGE_BALANCERS)


#: checks hashproxy/app.py made only when the proxy started (a child died; `cluster run` said nothing)
FORMERLY_LATE = [
    ("hashproxy", "image_balance", '"random"'),
    ("hashproxy", "workers", "0"),
    ("hashproxy", "balance_factor", "0.5"),
    ("hashproxy", "balance_min_load", "-1"),
    ("hashproxy", "upload_deadline", "0.0"),
    ("hashproxy", "spool_bytes", "1024"),
]


@pytest.mark.parametrize("section, key, value", FORMERLY_LATE, ids=[f"{s}.{k}" for s, k, _ in FORMERLY_LATE])
def test_cluster_run_refuses_a_formerly_late_value_before_starting_anything(tmp_path, section, key, value):
    data = tmp_path / "var"
    path = tmp_path / "bad.toml"
    path.write_text(f'[cluster]\ndata_dir = "{data}"\n[{section}]\n{key} = {value}\n')
    for command in (["run"], ["check"]):
        done = subprocess.run([sys.executable, "-m", "cluster", *command, "--config", str(path)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stderr.startswith(f"config error: {section}.{key}:"), done.stderr
        assert "Starting" not in done.stdout
    assert not data.exists()  # no log folder, store or secrets file: nothing was started


def test_cluster_check_passes_a_good_config_and_writes_nothing(tmp_path):
    data = tmp_path / "var"
    path = tmp_path / "good.toml"
    path.write_text(f'[cluster]\ndata_dir = "{data}"\n[ypws]\nworkers = 3\n')
    done = subprocess.run([sys.executable, "-m", "cluster", "check", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config OK") and not data.exists()


def test_a_ypfs_node_without_node_id_takes_ids_node_id(tmp_path):
    conf = tmp_path / "one.toml"
    conf.write_text('[ids]\nnode_id = 7\n\n[[ypfs.nodes]]\nname = "up"\nport = 8101\n')
    assert load(conf, with_secrets=False).ypfs.nodes[0].node_id == 7
    conf.write_text('[ids]\nnode_id = 7\n\n[[ypfs.nodes]]\nname = "up"\nport = 8101\nnode_id = 9\n')
    assert load(conf, with_secrets=False).ypfs.nodes[0].node_id == 9
    conf.write_text('[[ypfs.nodes]]\nname = "a"\nport = 8101\n\n[[ypfs.nodes]]\nname = "b"\nport = 8102\n')
    with pytest.raises(ConfigError, match="node_id must be unique"):
        load(conf, with_secrets=False)
