"""Config loading (cluster/config.py): defaults, strict user files, validation, round trips.

The other tests that lived here moved to one file per feature: test_key_scheme.py,
test_photo_records.py, test_photo_ids.py, test_sniff.py, test_procs.py.
"""

from __future__ import annotations

import pytest

from cluster import config as config_mod
from cluster.config import ConfigError, dump_toml, from_dict, load, load_dict


# -- config ------------------------------------------------------------------------------


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
    import tomllib

    assert from_dict(tomllib.loads(dump_toml(tree))) == from_dict(tree)
