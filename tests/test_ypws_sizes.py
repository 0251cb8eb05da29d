"""ypws serves every size at its exact dimensions, rendering a missing one on demand; cache
headers follow the URL's version; originals only where the owner allows, without GPS.

In-process: falcon's TestClient over ``ypws.app.create_app`` with a real LocalStore, a real
DiskCache and the real magickd render service (tests/ypws_support.py). Decoded with Pillow.
"""

from __future__ import annotations

import pytest
import xxhash

from cluster.profiles import box_for, profile_version

from .ypws_support import AppNode, AppWorld, assert_original_without_location, counted, decode, image_path

pytestmark = pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # PURGE, under wsgiref's validator
SMALL_CACHE = 400_000  # too small for the landscape original: it is streamed from storage


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = AppWorld(tmp_path_factory.mktemp("ypws-sizes"))
    world.small = AppNode(world.cfg, world.store, world.tmp, "ypws2", cache_bytes=SMALL_CACHE)
    return world


def test_every_size_is_served_with_the_right_dimensions(world):
    for key in ("land", "portrait"):
        rec = world.photos[key]
        for profile in world.cfg.sizes:
            r = world.node.get(image_path(world.cfg, rec, profile.name))
            assert r.status_code == 200, (profile.name, r.text)
            im = decode(r.content)
            box = box_for(profile, rec.width, rec.height)
            assert im.format == "JPEG" and im.size == (box.out_w, box.out_h), (key, profile.name)
            assert r.headers["X-Served-By"] == "ypws1" and r.headers["X-Cache"] == "MISS"
            assert r.headers["Content-Length"] == str(len(r.content))
            assert r.headers["ETag"] == f'"{xxhash.xxh3_64_hexdigest(r.content)}"'
            again = world.node.get(image_path(world.cfg, rec, profile.name))
            assert again.headers["X-Cache"] == "HIT" and again.content == r.content


def test_cache_control_follows_the_url_version(world):
    rec = world.photos["land"]
    versioned = world.node.get(image_path(world.cfg, rec, "thumb"))
    assert versioned.headers["Cache-Control"] == f"public, max-age={world.cfg.ypws.max_age}, immutable"
    unversioned = image_path(world.cfg, rec, "thumb", v=False)
    for path in (unversioned, unversioned + "?v=00000000"):
        r = world.node.get(path)
        assert r.headers["Cache-Control"] == f"public, max-age={world.cfg.ypws.unversioned_max_age}"
        assert r.content == versioned.content  # always the current version
    r = world.node.get(image_path(world.cfg, rec, "original"))
    assert r.headers["Cache-Control"] == f"public, max-age={world.cfg.ypws.original_max_age}"


@pytest.mark.parametrize("node", ["node", "small"])  # the small cache cannot hold this original: streamed
def test_originals_are_served_without_gps(world, node):
    rec = world.photos["land"]
    for _ in range(2):  # miss, then hit (node) or a remembered scrub (small)
        r = getattr(world, node).get(image_path(world.cfg, rec, "original"))
        assert r.status_code == 200
        assert_original_without_location(world.store, rec, r.content)


def test_originals_only_where_the_owner_allows(world):
    land, noorig = world.photos["land"], world.photos["noorig"]
    r = world.node.get(image_path(world.cfg, land, "original"))
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert world.node.get(image_path(world.cfg, land, "original", "png")).status_code == 404
    denied = world.node.get(image_path(world.cfg, noorig, "original"))
    assert denied.status_code == 404 and denied.json["error"] == "not_found"
    assert world.node.get(image_path(world.cfg, noorig, "small")).status_code == 200


def test_on_demand_render_of_a_deleted_rendition(world):
    rec = world.photos["portrait"]
    profile = world.cfg.size("medium")
    key = rec.ref.rendition_key("medium", profile_version(profile), "jpeg")
    path = image_path(world.cfg, rec, "medium")
    assert world.node.get(path).status_code == 200
    world.store.delete(key)
    purged = world.node.get(path.split("?")[0], {"Authorization": "Bearer test-admin-token"}, method="PURGE")
    assert purged.status_code == 200 and purged.json["purged"] == 1
    before = counted(world.node.cache, "renders")
    r = world.node.get(path)
    assert r.status_code == 200 and r.headers["X-Cache"] == "MISS"
    box = box_for(profile, rec.width, rec.height)
    assert decode(r.content).size == (box.out_w, box.out_h)
    assert world.store.exists(key)  # rendered, stored, then cached
    assert counted(world.node.cache, "renders") == before + 1


def test_a_missing_size_without_a_render_pool_is_503_with_retry_after(world, tmp_path):
    """No renderer configured (``create_app(..., renderer=None)``): a clear 503, never a 500."""
    bare = AppNode(world.cfg, world.store, tmp_path, "ypws3", render=False)
    r = bare.get(image_path(world.cfg, world.photos["small"], "xlarge", "webp"))
    assert r.status_code == 503 and r.json["error"] == "render_unavailable" and r.headers["Retry-After"]
