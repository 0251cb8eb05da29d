"""The size profile's one home (cluster/profiles.py): fields, validation at load, version, geometry."""

from __future__ import annotations

import dataclasses
import re

import pytest

from cluster.config import ConfigError, from_dict, load, load_dict
from cluster.profiles import SizeProfile, box_for, eager_sizes, profile_version

from .helpers import REPO

PACKAGES = ("cluster", "storage", "magickd", "ypws", "ypfs", "hashproxy", "media", "bench", "tests")


def _with_size(**changes) -> dict:
    tree = load_dict()
    tree["sizes"][2].update(changes)  # "small"
    return tree


def test_eager_does_not_change_the_version_progressive_does():
    small = load().size("small")
    flipped_eager = dataclasses.replace(small, eager=not small.eager)
    flipped_progressive = dataclasses.replace(small, progressive=not small.progressive)
    assert flipped_eager.version == small.version  # same bytes: every rendition URL stays
    assert flipped_progressive.version != small.version  # other bytes: a new key and URL
    assert small.version == profile_version(small) and len(small.version) == 8


def test_a_progressive_profile_keeps_the_version_it_had_before_the_setting_existed():
    # the version of the default "medium" profile (progressive, the only JPEG mode then) as
    # storage/records.py computed it at PIPELINE_REVISION 2, keep_gain_map already in: its
    # renditions keep their keys
    medium = SizeProfile("medium", 500, 500, sharpen_sigma=0.6, sharpen_amount=0.8, quality=85,
                         variants=("webp", "avif"), progressive=True)
    assert medium.version == "2b24e1a2"


@pytest.mark.parametrize("key, value, named", [
    ("progressive", "yes", "sizes[2].progressive"),
    ("eager", 1, "sizes[2].eager"),
    ("quality", 0, "sizes.small.quality"),
    ("width", 9000, "sizes.small.width"),
    ("crop", "middle", "sizes.small.crop"),
    ("format", "gif", "sizes.small: unknown format"),
    ("name", "original", "reserved"),
    ("bogus", True, "sizes[2]: unknown key(s) bogus"),
])
def test_config_rejects_bad_size_values_naming_the_key(key, value, named):
    with pytest.raises(ConfigError) as err:
        from_dict(_with_size(**{key: value}))
    assert named in str(err.value)


def test_duplicate_size_names_are_refused():
    tree = load_dict()
    tree["sizes"][3]["name"] = tree["sizes"][2]["name"]
    with pytest.raises(ConfigError, match="duplicate size name 'small'"):
        from_dict(tree)


def test_eager_sizes_follow_the_profiles():
    cfg = from_dict(_with_size(eager=False))
    assert "small" not in eager_sizes(cfg.sizes)
    assert set(eager_sizes(cfg.sizes)) == {p.name for p in cfg.sizes if p.name != "small" and p.eager}


def test_geometry_fits_and_covers_without_upscaling():
    cfg = load()
    square, small = cfg.size("square"), cfg.size("small")
    assert box_for(small, 1600, 1200) == box_for(small, 1600, 1200)
    box = box_for(small, 1600, 1200)
    assert (box.out_w, box.out_h, box.crops) == (240, 180, False)
    box = box_for(square, 1600, 1200)
    assert (box.resize_w, box.resize_h, box.out_w, box.out_h, box.crops) == (100, 75, 75, 75, True)
    box = box_for(small, 100, 50)  # never upscaled
    assert (box.out_w, box.out_h) == (100, 50)


def test_the_profile_concepts_live_in_one_module():
    """profile_version, PIPELINE_REVISION, the profile class and the geometry helpers are
    defined in cluster/profiles.py and nowhere else."""
    definition = re.compile(r"^(def (profile_version|box_for|fit|cover)\b|PIPELINE_REVISION =|class (Box|SizeProfile)\b)",
                            re.MULTILINE)
    homes = {str(path.relative_to(REPO)) for folder in PACKAGES for path in (REPO / folder).rglob("*.py")
             if definition.search(path.read_text())}
    assert homes == {"cluster/profiles.py"}
