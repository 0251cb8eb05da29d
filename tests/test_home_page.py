"""The home page: every user's newest public photos from one timeline listing, paged; in-process.

Uploads go through ypfs's real app (falcon TestClient), the page through ypws's; both on
one local store, as on one box.
"""

from __future__ import annotations

import io
import re

from PIL import Image

from storage.keys import timeline_key, timeline_prefix
from ypfs.gc import sweep

from .ypws_support import site_fixture

site = site_fixture("ann", "ben")


def upload(up, token: str, n: int, **fields) -> dict:
    im = Image.new("RGB", (64, 48), (n * 7 % 256, n * 13 % 256, n * 29 % 256))
    buf = io.BytesIO()
    im.save(buf, "JPEG")
    body, ctype = multipart(buf.getvalue(), fields)
    r = up.simulate_post("/upload", body=body, headers={"Authorization": f"Bearer {token}", "Content-Type": ctype})
    assert r.status_code == 201, r.text
    return r.json


def multipart(data: bytes, fields: dict) -> tuple[bytes, str]:
    boundary = "testboundary42"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="p.jpg"\r\n'
                 f'Content-Type: image/jpeg\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def shown(html: str) -> list[str]:
    return re.findall(r'data-photo="(\d+)"', html)


def test_home_lists_every_users_newest_public_photos_and_links_them(site):
    store, tokens, up, web = site.store, site.tokens, site.up, site.web
    ann = [upload(up, tokens["ann"], i, title=f"ann {i}") for i in range(3)]
    hidden = upload(up, tokens["ben"], 10, private="1")
    ben = upload(up, tokens["ben"], 11, title="ben <b>")
    r = web.simulate_get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert shown(r.text) == [ben["id"], *[p["id"] for p in reversed(ann)]]  # newest first, private left out
    assert hidden["id"] not in r.text
    assert 'href="/u/ben"' in r.text and 'href="/u/ann"' in r.text and 'href="/upload"' in r.text
    assert f'href="/p/ben/{ben["id"]}"' in r.text and "ben &lt;b&gt;" in r.text  # escaped
    assert not store.exists(timeline_key(hidden["id"], "ben"))


def test_home_pages_through_older_photos_one_listing_a_page(site):
    tokens, up, web = site.tokens, site.up, site.web
    ids = [upload(up, tokens["ann"], i)["id"] for i in range(105)]
    first = web.simulate_get("/")
    assert shown(first.text) == list(reversed(ids))[:100]
    older = re.search(r'id="older" href="/\?before=(\d+)"', first.text).group(1)
    second = web.simulate_get("/", params={"before": older})
    assert shown(second.text) == list(reversed(ids))[100:] and 'id="older"' not in second.text
    assert web.simulate_get("/", params={"before": "x"}).status_code == 400


def test_privacy_changes_and_deletes_keep_the_timeline_true(site):
    store, tokens, up, web = site.store, site.tokens, site.up, site.web
    a, b = upload(up, tokens["ann"], 1), upload(up, tokens["ann"], 2)
    auth = {"Authorization": f"Bearer {tokens['ann']}"}
    assert up.simulate_patch(f"/api/photos/ann/{a['id']}", json={"private": True}, headers=auth).status_code == 200
    assert shown(web.simulate_get("/").text) == [b["id"]]
    assert up.simulate_patch(f"/api/photos/ann/{a['id']}", json={"private": False}, headers=auth).status_code == 200
    assert shown(web.simulate_get("/").text) == [b["id"], a["id"]]
    assert up.simulate_delete(f"/api/photos/ann/{b['id']}", headers=auth).status_code == 200
    assert shown(web.simulate_get("/").text) == [a["id"]]
    assert list(store.list(timeline_prefix())) == [timeline_key(a["id"], "ann")]


def test_gc_removes_timeline_entries_of_photos_gone_or_private(site):
    store, tokens, up = site.store, site.tokens, site.up
    keep = upload(up, tokens["ann"], 1)
    store.put(timeline_key("1000000000000999999", "ann"), b"")  # a crash left it: no record
    report = sweep(store, grace=0, now=10**10)
    assert timeline_key("1000000000000999999", "ann") in report.orphans
    assert list(store.list(timeline_prefix())) == [timeline_key(keep["id"], "ann")]
