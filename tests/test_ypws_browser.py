"""The pages in a real browser: upload a photo through the upload page, see its thumbnail in the gallery.

The whole cluster runs (magickd, ypfs, ypws, hashproxy in front, so the pages
and ypfs's POST /upload share one origin), and Debian's Chromium, headless, is
driven by Playwright. Skipped only when Chromium or Playwright is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import requests

from magickd.geometry import box_for

from .helpers import CORPUS, REPO, cluster_tree, write_config
from .ypws_support import decode

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's chromium is not installed (tests/sysdeps.sh installs it when run as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


def test_upload_through_the_page_then_see_the_thumbnail_in_the_gallery(tmp_path, services, browser):
    cfg, path = write_config(tmp_path, cluster_tree(tmp_path))
    for role in ("magickd", "ypfs", "ypws"):
        node = getattr(cfg, role).nodes[0]
        services.start_module(node.name, role, "serve", "--node", node.name, config_path=path,
                              health_url=f"{node.url}/{'readyz' if role == 'ypws' else 'healthz'}", timeout=90)
    services.start_module("hashproxy", "hashproxy", "serve", config_path=path, health_url=f"{cfg.public_url}/healthz")
    token = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "user", "add", "alice"],
                           capture_output=True, text=True, timeout=60, cwd=REPO, check=True).stdout.strip()

    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{cfg.public_url}/upload")
    page.fill("#token", token)
    page.set_input_files("#photo", str(CORPUS / "formats" / "DSCN0010.jpg"))
    page.fill("#title", "From the browser")
    page.click("#submit")
    page.wait_for_selector("#uploaded")
    photo_id = page.get_attribute("#uploaded", "data-photo")
    assert photo_id and photo_id.isdigit()

    page.click("#gallery-link")
    page.wait_for_url(f"{cfg.public_url}/u/alice")
    selector = f'img.thumb[data-photo="{photo_id}"]'
    page.wait_for_function(
        "sel => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }", arg=selector)
    shown = page.evaluate(
        "sel => { const i = document.querySelector(sel); return [i.naturalWidth, i.naturalHeight, i.currentSrc, i.alt]; }",
        selector)
    width, height, src, alt = shown
    assert alt == "From the browser"
    assert src.startswith(f"{cfg.public_url}/photos/alice/{photo_id}_")

    # the browser chose one rendition of the srcset: fetch the same URL and check it decodes to what it showed
    r = requests.get(src, headers={"Referer": f"{cfg.public_url}/u/alice"}, timeout=30)
    assert r.status_code == 200
    im = decode(r.content)
    assert im.size == (width, height)
    size_name = src.rsplit("/", 1)[1].split(".")[0]
    box = box_for(cfg.size(size_name), 640, 480)
    assert (width, height) == (box.out_w, box.out_h)

    # the photo page links back to every size
    page.click(f'a[href="/p/alice/{photo_id}"]')
    page.wait_for_selector("figure img")
    assert page.inner_text("h1") == "From the browser"
    page.close()
