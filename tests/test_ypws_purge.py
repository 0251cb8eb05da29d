"""PURGE (service credential): one format, every format of a size, or the whole photo; a purged
entry is a miss again. In-process (tests/ypws_support.py); purges pushed and logged across nodes:
test_purge_log.py."""

from __future__ import annotations

import pytest

from .ypws_support import AppWorld

pytestmark = pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # PURGE, under wsgiref's validator
ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return AppWorld(tmp_path_factory.mktemp("ypws-purge"))


def test_purge(world):
    node = world.node
    jpg, webp = world.path("small", "large"), world.path("small", "large", "webp")
    for path in (jpg, webp):
        node.get(path)
        assert node.get(path).headers["X-Cache"] == "HIT"
    base = world.photos["small"].ref.url_path
    r = node.get(f"{base}/large.jpg", method="PURGE")
    assert r.status_code == 401 and r.json["error"] == "unauthorized"
    r = node.get(f"{base}/large.webp", ADMIN, method="PURGE")
    assert r.status_code == 200 and r.json["purged"] == 1
    assert node.get(webp).headers["X-Cache"] == "MISS"
    assert node.get(jpg).headers["X-Cache"] == "HIT"
    r = node.get(f"{base}/large", ADMIN, method="PURGE")
    assert r.json["purged"] == 2  # every format of the size
    assert node.get(jpg).headers["X-Cache"] == "MISS"
    node.get(world.path("small", "original"))
    r = node.get(f"{base}/", ADMIN, method="PURGE")
    assert r.status_code == 200 and r.json["purged"] >= 2  # the whole photo, original included
    assert node.get(world.path("small", "original")).headers["X-Cache"] == "MISS"
    bad = node.get("/photos/alice/x/large.jpg", ADMIN, method="PURGE")
    assert bad.status_code == 404
