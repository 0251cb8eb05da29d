"""Private photos only through signed URLs (HMAC over path and expiry, capped ttl), also once cached;
``python -m ypws sign`` prints one.

The signing unit, then the app in-process (tests/ypws_support.py).
"""

from __future__ import annotations

import time

import pytest

from cluster.config import dump_toml
from ypws.__main__ import main as ypws_main
from ypws.signing import SignatureError, sign_url, verify

from .helpers import cluster_tree
from .ypws_support import AppWorld, decode, sign_for

PUBLIC = "http://photos.example"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return AppWorld(tmp_path_factory.mktemp("ypws-signed"), cluster={"public_url": PUBLIC},
                    ypws={"signed_url_max_ttl": 3600})


def test_signed_urls():
    path = "/photos/alice/123456789_0123456789/small.jpg"
    signed = sign_url("url-key", 3600, "http://example.test" + path + "?v=1", ttl=10**9, now=lambda: 1000)
    assert signed.startswith(path + "?exp=4600&sig=")  # ttl capped at signed_url_max_ttl
    sig = signed.rsplit("=", 1)[1]
    assert verify("url-key", 3600, path, "4600", sig, now=1000) == 4600
    for exp, s, now, code in [("4600", sig, 5000, "url_expired"), ("4601", sig, 1000, "bad_signature"),
                              ("4600", "0" * 64, 1000, "bad_signature"), (None, sig, 1000, "bad_signature")]:
        with pytest.raises(SignatureError) as exc:
            verify("url-key", 3600, path, exp, s, now=now)
        assert exc.value.code == code
    with pytest.raises(SignatureError):  # a valid HMAC over an expiry beyond the cap
        far = sign_url("url-key", 10**6, path, ttl=10**6, now=lambda: 1000)
        exp, sig = far.split("exp=")[1].split("&sig=")
        verify("url-key", 3600, path, exp, sig, now=1000)


def test_private_photos_only_through_signed_urls(world, tmp_path, capsys):
    rec = world.photos["private"]
    path = f"{rec.ref.url_path}/small.jpg"
    assert world.node.get(path).status_code == 404
    signed = sign_for(world.cfg, path, ttl=600)
    for _ in range(2):  # miss, then hit
        r = world.node.get(signed)
        assert r.status_code == 200 and decode(r.content).format == "JPEG"
        assert r.headers["Cache-Control"].startswith("private, max-age=")
    assert world.node.get(path).status_code == 404  # cached, still private
    tampered = signed[:-1] + ("0" if signed[-1] != "0" else "1")
    assert world.node.get(tampered).json["error"] == "bad_signature"
    expired = sign_for(world.cfg, path, ttl=60, now=lambda: time.time() - 3600)
    r = world.node.get(expired)
    assert r.status_code == 403 and r.json["error"] == "url_expired"
    other = sign_for(world.cfg, f"{rec.ref.url_path}/thumb.jpg", ttl=600).split("?")[1]
    assert world.node.get(f"{path}?{other}").status_code == 403  # signature of another path
    # the command line signs with the config's key
    tree = cluster_tree(world.tmp, overrides={"cluster": {"public_url": PUBLIC, "admin_token": "test-admin-token",
                                                          "url_key": "test-url-key"}})
    config = tmp_path / "yupoo.toml"
    config.write_text(dump_toml(tree))
    assert ypws_main(["--config", str(config), "sign", path, "--ttl", "120"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(PUBLIC + path + "?exp=")
    assert world.node.get(out[len(PUBLIC):]).status_code == 200
