"""The gallery (/u/{user}): newest first, a page of 100 at a time, private photos never shown,
from newest-first listings that read about a page of keys, not every photo.

The listing unit, then the app in-process (tests/ypws_support.py). The home page: test_home_page.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import time

import pytest

from storage.ids import IdGenerator
from storage.keys import record_key
from storage.local import LocalStore
from ypws.listing import newest_record_keys

from .helpers import CORPUS, seed_photo
from .ypws_support import AppNode, app_config


@pytest.fixture
def no_fsync(monkeypatch):
    """The store's writes without their fsyncs: these tests write hundreds of records and are
    about listing and paging, not durability (tests/test_storage_contract.py covers that)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_newest_first_listing_reads_about_a_page_not_every_photo(tmp_path, no_fsync):
    """1000 photos over three years, the newest 30 from the last day: the first 30 keys come
    from one short listing; walking on reaches every key once, in newest-first order."""

    class CountingStore(LocalStore):
        listed = 0

        def list(self, prefix="", start_after=""):
            for key in super().list(prefix, start_after):
                CountingStore.listed += 1
                yield key

    store, epoch, now = CountingStore(tmp_path), 1704067200000, 1_800_000_000.0
    times = [now - 3 * 365 * 86400 + i * 86400 for i in range(970)] + [now - 3600 + i for i in range(30)]
    ids = [IdGenerator(1, 0, epoch, clock=lambda t=t: t).next_id() for t in times]
    for pid in ids:
        store.put(record_key("u", pid), b"{}")
    newest = list(itertools.islice(newest_record_keys(store, "u", epoch, lambda: int(now * 1000)), 30))
    assert newest == [record_key("u", pid) for pid in reversed(ids[-30:])]
    assert CountingStore.listed <= 31  # not 1000
    every = list(newest_record_keys(store, "u", epoch, lambda: int(now * 1000)))
    assert every == [record_key("u", pid) for pid in reversed(ids)]
    below = list(newest_record_keys(store, "u", epoch, lambda: int(now * 1000), before=ids[500]))
    assert below == [record_key("u", pid) for pid in reversed(ids[:500])]


def test_the_gallery_pages_newest_first_and_skips_private_photos(tmp_path, no_fsync):
    """231 photos uploaded over two years: pages of 100, newest first, each 'Older photos'
    link starting below the last photo shown; private ones never appear, and nothing is
    shown twice or skipped (the listing walks back in growing time windows)."""
    cfg = app_config(tmp_path)
    store = LocalStore(cfg.local_root)
    node = AppNode(cfg, store, tmp_path, render=False)
    now = time.time()
    ids = [IdGenerator(1, 0, cfg.ids.epoch_ms, clock=lambda i=i: now - (230 - i) * 3 * 86400).next_id()
           for i in range(231)]
    template = seed_photo(store, "pager", CORPUS / "formats" / "hopper.jpg", photo_id=ids[0])
    private = set(ids[5::40])
    for pid in ids[1:]:
        dataclasses.replace(template, id=pid, title=f"p{pid}", private=pid in private).save(store)
    expected = [pid for pid in reversed(ids) if pid not in private]
    shown, path, pages_seen = [], "/u/pager", 0
    while path and pages_seen < 5:
        r = node.get(path)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        page = re.findall(r'data-photo="(\d+)"', r.text)
        assert len(page) <= 100 and (len(page) == 100 or 'id="older"' not in r.text)
        shown += page
        pages_seen += 1
        older = re.search(r'id="older" href="([^"]+)"', r.text)
        path = older.group(1).replace("&amp;", "&") if older else None
    assert pages_seen == 3 and shown == expected
    assert node.get("/u/pager?before=notanid").status_code == 400
    last = node.get(f"/u/pager?before={ids[0]}")
    assert last.status_code == 200 and "No older photos." in last.text
