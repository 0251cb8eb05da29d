"""Image URL paths: parsed strictly; a wrong user, id, secret or size is one and the same 404; bad
input is a clear 4xx with a JSON body, never a 500.

The parser unit, then the app in-process (tests/ypws_support.py). The same bad paths through a
real node's own HTTP handling (its worker decodes the request target): test_ypws_serving.py.
"""

from __future__ import annotations

import pytest

from storage.keys import PhotoRef
from ypws.urls import BadPath, NoSuchImage, parse_image_path

from .ypws_support import AppWorld

REF = PhotoRef("alice", "123456789", "0123456789")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return AppWorld(tmp_path_factory.mktemp("ypws-urls"))


def test_image_paths():
    t = parse_image_path("/photos/alice/123456789_0123456789/small.webp")
    assert (t.ref, t.size, t.ext, t.fmt) == (REF, "small", "webp", "webp")
    assert parse_image_path("/photos/alice/123456789_0123456789/original.png").is_original
    for bad in ["/photos/Alice/123456789_0123456789/small.jpg", "/photos/alice/123_xyz/small.jpg",
                "/photos/alice/123456789_0123456789/small.jpeg", "/photos/alice/123456789_0123456789/small",
                "/photos/alice/123456789_0123456789/small.exe", "/photos/alice/small.jpg",
                "/photos/" + "a" * 40 + "/1_0123456789/s.jpg"]:
        with pytest.raises(NoSuchImage) as exc:
            parse_image_path(bad)
        assert str(exc.value) == "no such image"
    for bad in ["/photos/alice/../etc/passwd", "/photos/" + "a" * 2000, "/photos/a\x00/1_0123456789/s.jpg"]:
        with pytest.raises(BadPath):
            parse_image_path(bad)


def test_wrong_user_id_secret_or_size_is_the_same_404(world):
    rec = world.photos["land"]
    good = f"/photos/alice/{rec.id}_{rec.secret}/small.jpg"
    assert world.node.get(good).status_code == 200
    wrong = [good.replace("/alice/", "/bob/"), good.replace(rec.id, str(int(rec.id) + 1)),
             good.replace(rec.secret, "0" * 10), good.replace("/small.", "/huge."), good.replace("/small.", "/Small.")]
    bodies = set()
    for path in wrong:
        r = world.node.get(path)
        assert r.status_code == 404, path
        bodies.add(r.content)
    assert len(bodies) == 1


BAD_PATHS = [
    ("/photos/alice/..%2f..%2fetc/passwd", 400), ("/photos/%2e%2e/x/y.jpg", 400),
    ("/photos/" + "a" * 300 + "/1_0123456789/small.jpg", 404), ("/photos/" + "a" * 3000, 400),
    ("/photos/alice/1_0123456789/small.jpg/extra", 404), ("/photos/alice", 404), ("/photos//x//y.jpg", 404),
    ("/photos/alice/1_0123456789/small.%00jpg", 400), ("/u/" + "x" * 100, 404), ("/p/alice/notanumber", 404),
    ("/photos/alice/1_0123456789/small.jpg?v=%ff&exp=x&sig=y", 403),
]


#: percent-escapes that are not UTF-8 (``%ff``) are decoded by the server, not the app: falcon's
#: TestClient decodes them otherwise than a real worker, so that case is checked on a real node
#: (test_ypws_serving.py::test_bad_percent_escapes_through_the_worker)


@pytest.mark.parametrize("path,status", BAD_PATHS)
def test_bad_input_gets_a_clear_4xx_json(world, path, status):
    r = world.node.get(path)
    assert r.status_code == status, r.text
    assert set(r.json) == {"error", "message"}
