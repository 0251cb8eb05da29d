"""WebP and AVIF variants: by extension (no Vary), or picked from Accept (Vary: Accept).

The negotiation unit, then the app in-process (tests/ypws_support.py), decoded with Pillow.
"""

from __future__ import annotations

import pytest

from cluster.profiles import box_for
from ypws.negotiation import pick_variant

from .ypws_support import AppWorld, app_config, decode


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return AppWorld(tmp_path_factory.mktemp("ypws-variants"))


def test_accept_negotiation(tmp_path):
    profile = app_config(tmp_path).size("small")
    assert pick_variant("image/avif,image/webp,*/*;q=0.8", profile) == "avif"
    assert pick_variant("image/webp,*/*", profile) == "webp"
    assert pick_variant("image/avif;q=0, image/webp", profile) == "webp"
    assert pick_variant("*/*", profile) is None and pick_variant(None, profile) is None


def test_variants_by_extension_and_by_accept(world):
    rec = world.photos["land"]
    want = box_for(world.cfg.size("small"), rec.width, rec.height)
    for ext, fmt in (("webp", "WEBP"), ("avif", "AVIF")):
        r = world.node.get(world.path("land", "small", ext))
        im = decode(r.content)
        assert r.status_code == 200 and im.format == fmt and im.size == (want.out_w, want.out_h)
        assert r.headers["Content-Type"] == f"image/{ext}" and "Vary" not in r.headers
    for accept, fmt in (("image/avif,image/webp,*/*;q=0.8", "AVIF"), ("image/webp,*/*", "WEBP"), ("*/*", "JPEG"),
                        (None, "JPEG")):
        r = world.node.get(world.path("land", "small"), {"Accept": accept} if accept else {})
        assert r.status_code == 200 and decode(r.content).format == fmt, accept
        assert r.headers["Vary"] == "Accept"
