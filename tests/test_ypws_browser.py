"""The pages in a real browser: upload a photo through the upload page, see its thumbnail in the gallery.

The whole cluster runs (magickd, ypfs, ypws, hashproxy in front, so the pages
and ypfs's POST /upload share one origin), and Debian's Chromium, headless, is
driven by Playwright. Skipped only when Chromium or Playwright is not installed.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from cluster.profiles import box_for

from .helpers import CORPUS, REPO, cluster_tree, write_config
from .ypws_support import decode

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: every image the window shows (lazy ones below it are not fetched yet) has arrived: what the
#: screenshots wait for, instead of "networkidle" (a fixed 500 ms of quiet after each load)
SHOWN_IMAGES_LOADED = ("() => [...document.images].every(i => (i.complete && i.naturalWidth > 0) "
                       "|| (i.loading === 'lazy' && i.getBoundingClientRect().top >= innerHeight))")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; each test opens its own page (a fresh context: no shared storage)."""
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

    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.set_default_timeout(60_000)
    page.goto(f"{cfg.public_url}/upload")
    page.fill("#token", token)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo at all\n")
    # several files at once; one is refused, which costs the others nothing
    page.set_input_files("#photo", [str(CORPUS / "formats" / "DSCN0010.jpg"),
                                    str(CORPUS / "formats" / "canon_hdr_NO.jpg"), str(notes)])
    page.fill("#title", "From the browser")
    page.click("#submit")
    page.wait_for_function("() => document.querySelectorAll('#files li.done, #files li.failed').length === 3")
    rows = page.eval_on_selector_all("#files li", "ls => ls.map(l => [l.className, l.dataset.photo || '', "
                                                  "l.querySelector('.name').textContent, "
                                                  "l.querySelector('.msg').textContent, l.querySelector('progress').value "
                                                  "=== l.querySelector('progress').max])")
    by_name = {name: (cls, photo, msg, full) for cls, photo, name, msg, full in rows}
    assert by_name["notes.txt"][0] == "file failed" and "not an image" in by_name["notes.txt"][2]
    photo_id, canon_id = by_name["DSCN0010.jpg"][1], by_name["canon_hdr_NO.jpg"][1]
    assert by_name["DSCN0010.jpg"][0] == "file done" and photo_id.isdigit() and canon_id.isdigit()
    assert all(full for *_, full in by_name.values())  # every progress bar ran to its end
    page.wait_for_function("() => [...document.querySelectorAll('#files li.done img')].every("
                           "i => i.complete && i.naturalWidth > 0)")  # each thumbnail appears

    # the token is remembered (no cookie): the next visit does not ask, and a re-upload says so
    page.goto(f"{cfg.public_url}/upload")
    assert page.is_hidden("#token-row") and page.inner_text("#who-name") == "alice"
    assert page.context.cookies() == []
    page.set_input_files("#photo", str(CORPUS / "formats" / "DSCN0010.jpg"))
    page.click("#submit")
    page.wait_for_selector("#files li.duplicate")
    assert "you already uploaded this" in page.inner_text("#files li.duplicate .msg")
    assert page.get_attribute("#files li.duplicate a", "href") == f"/p/alice/{photo_id}"

    # three files dropped on the page: three progress bars, three thumbnails
    dropped = []
    for i in range(3):
        buf = io.BytesIO()
        Image.new("RGB", (320, 200), (60 * i, 120, 200 - 50 * i)).save(buf, "JPEG")
        dropped.append(base64.b64encode(buf.getvalue()).decode())
    page.evaluate("""files => {
        const dt = new DataTransfer();
        files.forEach((b64, i) => dt.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))],
                                                         `dropped${i}.jpg`, {type: 'image/jpeg'})));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", dropped)
    page.click("#submit")
    page.wait_for_function("() => [...document.querySelectorAll('#files li')].filter("
                           "l => l.querySelector('.name').textContent.startsWith('dropped')).length === 3 && "
                           "[...document.querySelectorAll('#files li')].filter(l => l.classList.contains('done') "
                           "&& l.querySelector('img') && l.querySelector('img').complete "
                           "&& l.querySelector('img').naturalWidth > 0).length === 4")
    assert page.eval_on_selector_all("#files li progress", "ps => ps.length") == 4
    assert page.is_visible("#gallery-link") and page.get_attribute("#gallery-link", "href") == "/u/alice"

    # the home page lists the new uploads, newest first, with their owner
    page.goto(f"{cfg.public_url}/")
    home = page.eval_on_selector_all("img.thumb", "is => is.map(i => i.dataset.photo)")
    assert photo_id in home and canon_id in home  # (those two were uploaded side by side: either may be newer)
    assert home == sorted(home, key=int, reverse=True)  # newest first
    assert page.is_visible('a[href="/u/alice"]')

    page.goto(f"{cfg.public_url}/u/alice")
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

    # a tall photo fits the window (1536x2048 in a 1280x720 one), its facts show, never its location,
    # and its owner (this browser's token) gets the edit and delete actions
    page.goto(f"{cfg.public_url}/p/alice/{canon_id}")
    page.wait_for_function("() => { const i = document.querySelector('img.photo'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    box = page.eval_on_selector("img.photo", "i => { const r = i.getBoundingClientRect(); "
                                             "return [r.width, r.height, i.currentSrc]; }")
    assert box[0] <= 1280 and box[1] <= 0.85 * 720 + 1, box
    assert "/xlarge." not in box[2]  # no more pixels fetched than shown
    facts = page.inner_text("dl.facts")
    assert "Canon PowerShot SX60 HS" in facts and "1/60 s" in facts and "ISO 800" in facts
    assert "gps" not in page.content().lower()
    assert page.is_visible("#owner-actions")
    page.fill("#edit-title", "Renamed in the browser")
    page.click("#save-title")
    page.wait_for_function("() => document.querySelector('h1').textContent === 'Renamed in the browser'")
    assert requests.get(f"{cfg.public_url}/api/photos/alice/{canon_id}", timeout=30).json()["title"] == \
        "Renamed in the browser"

    # what a visitor sees, for a person to look at: every page at a laptop's and a phone's size
    shots = REPO / "var" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        for name, url in (("home", "/"), ("upload", "/upload"), ("gallery", "/u/alice"),
                          ("photo", f"/p/alice/{canon_id}")):
            page.goto(cfg.public_url + url)  # waits for the load event
            page.wait_for_function(SHOWN_IMAGES_LOADED)
            page.screenshot(path=str(shots / f"{name}-{width}x{height}.png"), full_page=True)
            assert page.evaluate("() => document.documentElement.scrollWidth") <= width  # nothing wider
    page.close()


def _photo(size: tuple[int, int], top: tuple[int, int, int], bottom: tuple[int, int, int]) -> bytes:
    """A JPEG of two bands with some grain (what a placeholder has to show: colours and layout)."""
    w, h = size
    im = Image.new("RGB", size, bottom)
    im.paste(top, (0, 0, w, h * 2 // 3))
    grain = Image.effect_noise(size, 12).convert("RGB")
    buf = io.BytesIO()
    Image.blend(im, grain, 0.08).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def _mean(png: bytes, inset: int = 4) -> list[float]:
    from PIL import ImageStat

    im = Image.open(io.BytesIO(png)).convert("RGB")
    return ImageStat.Stat(im.crop((inset, inset, im.width - inset, im.height - inset))).mean


def _near(a, b, tol: float) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


BOXES = """sel => [...document.querySelectorAll(sel)].map(i => { const r = i.getBoundingClientRect(), cs = getComputedStyle(i);
    return {id: i.dataset.photo || '', x: r.x, y: r.y, w: r.width, h: r.height, color: cs.backgroundColor,
            image: cs.backgroundImage, loaded: i.complete && i.naturalWidth > 0}; })"""


def test_placeholders_show_until_the_images_arrive(tmp_path, services, browser):
    """Each image's box has its photo's shape, its dominant colour and its ThumbHash before a byte of
    the image arrives (image responses held back with page.route), and shows the image after."""
    import fast_thumbhash

    cfg, path = write_config(tmp_path, cluster_tree(tmp_path))
    for role in ("magickd", "ypfs", "ypws"):
        node = getattr(cfg, role).nodes[0]
        services.start_module(node.name, role, "serve", "--node", node.name, config_path=path,
                              health_url=f"{node.url}/{'readyz' if role == 'ypws' else 'healthz'}", timeout=90)
    token = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "user", "add", "alice"],
                           capture_output=True, text=True, timeout=60, cwd=REPO, check=True).stdout.strip()
    photos = {}
    for name, data in (("sea", _photo((960, 640), (40, 90, 200), (230, 210, 150))),
                       ("poppy", _photo((600, 900), (210, 30, 40), (40, 120, 50)))):
        r = requests.post(f"{cfg.ypfs.nodes[0].url}/upload", headers={"Authorization": f"Bearer {token}"},
                          files={"photo": (f"{name}.jpg", data, "image/jpeg")}, data={"title": name}, timeout=60)
        assert r.status_code == 201, r.text
        photos[r.json()["id"]] = r.json()
    site = cfg.ypws.nodes[0].url

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    # the reference decoder shipped in the page draws exactly what the official implementation draws
    page.goto(f"{site}/u/alice", wait_until="load")
    for p in photos.values():
        w, h, rgba = page.evaluate("h => { const r = thumbHashToRGBA(Uint8Array.from(atob(h), c => c.charCodeAt(0)));"
                                   " return [r.w, r.h, Array.from(r.rgba)]; }", p["thumbhash"])
        assert (w, h, rgba) == tuple(fast_thumbhash.thumb_hash_to_rgba(base64.b64decode(p["thumbhash"])))

    for url, selector in ((f"{site}/u/alice", "img.thumb"), (f"{site}/p/alice/{next(iter(photos))}", "img.photo")):
        held, release = [], []

        def hold(route) -> None:  # every image request waits here until released
            (route.continue_() if release else held.append(route))

        page.route("**/photos/**", hold)
        page.goto(url, wait_until="domcontentloaded")
        deadline = time.monotonic() + 30
        while len(held) < page.eval_on_selector_all(selector, "is => is.length") and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        page.wait_for_function("sel => [...document.querySelectorAll(sel)].every("
                               "i => getComputedStyle(i).backgroundImage.startsWith('url(\"data:image/png'))", arg=selector)
        before = page.evaluate(BOXES, selector)
        assert before and held
        shots = REPO / "var" / "screenshots"  # for a person to look at: the page before its images arrive
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / f"placeholders-{selector.split('.')[1]}.png"))
        for i, box in enumerate(before):
            p = photos[box["id"]] if box["id"] else next(iter(photos.values()))
            assert not box["loaded"]  # nothing of the image has arrived
            assert abs(box["w"] / box["h"] - p["width"] / p["height"]) < 0.03, (box, p["width"], p["height"])
            assert _rgb(box["color"]) == tuple(int(p["color"][k:k + 2], 16) for k in (1, 3, 5))
            # what shows is the ThumbHash's picture: its colours, not the page's grey
            shown = _mean(page.locator(selector).nth(i).screenshot())
            w, h, rgba = fast_thumbhash.thumb_hash_to_rgba(base64.b64decode(p["thumbhash"]))
            assert _near(shown, _mean(_png(Image.frombytes("RGBA", (w, h), bytes(rgba))), 0), 14), shown
        release.append(True)
        for route in held:
            route.continue_()
        page.wait_for_function("sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
                               arg=selector)
        page.unroute("**/photos/**")
        after = page.evaluate(BOXES, selector)
        for box, was in zip(after, before):
            assert box["image"] == "none" and box["loaded"]  # the placeholder is gone
            # no layout shift (under a pixel: a rendition's whole-pixel size rounds its aspect ratio)
            assert _near((box["x"], box["y"], box["w"], box["h"]), (was["x"], was["y"], was["w"], was["h"]), 1), (box, was)
        for i, box in enumerate(after):
            src = page.locator(selector).nth(i).evaluate("i => i.currentSrc")
            served = decode(requests.get(src, timeout=30).content).convert("RGB")
            assert _near(_mean(page.locator(selector).nth(i).screenshot()), _mean(_png(served)), 14)
    page.close()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "PNG")
    return buf.getvalue()
