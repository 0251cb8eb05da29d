"""Hotlink rules: the site, its friends and no Referer are served; another site gets a 403
(default) or the placeholder image (``hotlink_action = "placeholder"``), never cached.

The policy unit, then the app in-process (tests/ypws_support.py).
"""

from __future__ import annotations

import dataclasses

import pytest

from ypws.hotlink import HotlinkPolicy

from .ypws_support import AppNode, AppWorld, decode

PUBLIC = "http://photos.example"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = AppWorld(tmp_path_factory.mktemp("ypws-hotlink"), cluster={"public_url": PUBLIC},
                     ypws={"hotlink_allow": ["friend.example"]})
    placeholder = dataclasses.replace(world.cfg, ypws=dataclasses.replace(world.cfg.ypws, hotlink_action="placeholder"))
    world.placeholder = AppNode(placeholder, world.store, world.tmp, "ypws2")
    return world


def test_hotlink_rules():
    policy = HotlinkPolicy(True, "photos.example", (".friend.example", "blog.example"))
    assert policy.allows(None, None) and policy.allows("", None)
    assert policy.allows("https://photos.example:8443/u/alice", None)
    assert policy.allows("http://www.friend.example/post", None) and policy.allows("http://blog.example/", None)
    assert policy.allows("http://127.0.0.1:9000/u/a", "127.0.0.1:9000")  # the page's own origin
    assert not policy.allows("http://evil.example/", "127.0.0.1:9000")
    assert not policy.allows("not a url", None)
    assert HotlinkPolicy(False, None).allows("http://evil.example/", None)


def test_hotlink_protection(world):
    path = world.path("land", "thumb")
    own = "http://127.0.0.1:9000"  # the page's own origin: the request's Host
    for referer in (None, f"{PUBLIC}/u/alice", "https://friend.example/post/1", f"{own}/u/alice"):
        headers = {"Host": "127.0.0.1:9000", **({"Referer": referer} if referer else {})}
        r = world.node.get(path, headers)
        assert r.status_code == 200 and decode(r.content).format == "JPEG", referer
    for _ in range(2):  # on a miss and on a hit
        r = world.node.get(path, {"Referer": "http://evil.example/gallery"})
        assert r.status_code == 403 and r.json["error"] == "hotlink_denied"
        assert r.headers["Cache-Control"] == "no-store"
    placeholder = world.placeholder.get(path, {"Referer": "http://evil.example/"})
    assert placeholder.status_code == 200 and placeholder.headers["X-Hotlink"] == "placeholder"
    assert decode(placeholder.content).size == (160, 48) and placeholder.headers["Cache-Control"] == "no-store"
