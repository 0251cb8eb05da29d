"""Placeholders: a ThumbHash and a dominant colour per photo, made at upload, served by the APIs
and the pages, and backfilled for photos stored before them.

The encoder is held to the official ThumbHash implementation (the Rust crate, through the
``fast-thumbhash`` binding, a test-only dependency), which also decodes our hashes here.
Uploads go through ypfs's real app (falcon TestClient), pages through ypws's, on one local
store; the backfill runs in-process and as the real command.
"""

from __future__ import annotations

import base64
import io
import math
import random
import re
import subprocess
import sys
import time

import fast_thumbhash
import pytest
from PIL import Image, ImageStat

from cluster.config import from_dict, load_dict
from media.placeholders import placeholder_for, placeholder_from, rgba_to_thumbhash
from storage import open_store
from storage.keys import timeline_key
from storage.records import PhotoRecord, UserRecord
from ypfs.backfill import backfill
from ypfs.manage import PhotoChanges, apply_changes, delete_photo

from .helpers import REPO, cluster_tree, seed_photo, write_config
from .ypws_support import site_fixture

THUMBHASH_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
COLOR_RE = re.compile(r"^#[0-9a-f]{6}$")


def decoded(thumbhash: str) -> Image.Image:
    """The ThumbHash as the reference decoder renders it (RGBA, at most 32 px a side)."""
    w, h, rgba = fast_thumbhash.thumb_hash_to_rgba(base64.b64decode(thumbhash))
    return Image.frombytes("RGBA", (w, h), bytes(rgba))


def mean_rgb(im: Image.Image) -> list[float]:
    return ImageStat.Stat(im.convert("RGB")).mean


def scene(size=(640, 480)) -> Image.Image:
    """An ordinary photo's worth of structure: sky over a field, a sun, some noise."""
    w, h = size
    im = Image.new("RGB", size)
    px = im.load()
    rnd = random.Random(7)
    for y in range(h):
        for x in range(w):
            if y < h * 0.55:
                base = (90 + 80 * y // h, 140 + 60 * y // h, 230)
                if (x - w * 0.7) ** 2 + (y - h * 0.2) ** 2 < (h * 0.08) ** 2:
                    base = (250, 220, 90)
            else:
                base = (60 + 40 * x // w, 130, 40)
            n = rnd.randint(-12, 12)
            px[x, y] = tuple(max(0, min(255, c + n)) for c in base)
    return im


def save(im: Image.Image, path, fmt: str, **kw) -> bytes:
    im.save(path, fmt, **kw)
    return path.read_bytes()


# -- the computation ------------------------------------------------------------------------------------

def nibbles(data: bytes) -> list[int]:
    return [n for byte in data for n in (byte & 15, byte >> 4)]


def test_encoder_gives_the_reference_implementations_bytes():
    """The official crate's hash, over random smooth images with and without alpha: byte for byte,
    but for a coefficient sitting on a rounding edge (the crate sums in 32-bit floats, we in 64)."""
    rnd = random.Random(1)
    exact = 0
    for _ in range(60):
        w, h = rnd.randint(8, 100), rnd.randint(8, 100)
        k = [rnd.uniform(1, 9) for _ in range(6)]
        alpha = rnd.random() < 0.4
        rgba = bytearray()
        for y in range(h):
            for x in range(w):
                rgba += bytes([int(127 + 120 * math.sin(x / w * k[0] + y / h * k[1])),
                               int(127 + 120 * math.cos(x / w * k[2] - y / h * k[3])),
                               int(127 + 120 * math.sin(x / w * k[4] * y / h)),
                               int(127 + 120 * math.cos(y / h * k[5] + x / w)) if alpha else 255])
        ours, ref = rgba_to_thumbhash(w, h, bytes(rgba)), bytes(fast_thumbhash.rgba_to_thumb_hash(w, h, bytes(rgba)))
        assert ours[:5] == ref[:5] and len(ours) == len(ref), (w, h, ours.hex(), ref.hex())
        assert max(abs(a - b) for a, b in zip(nibbles(ours), nibbles(ref))) <= 1, (w, h, ours.hex(), ref.hex())
        exact += ours == ref
    assert exact >= 55
    with pytest.raises(ValueError):
        rgba_to_thumbhash(101, 10, bytes(4 * 1010))


def test_a_photo_s_thumbhash_decodes_to_its_colours_and_shape(tmp_path):
    src = scene()
    ph = placeholder_for(save(src, tmp_path / "p.jpg", "JPEG", quality=90), "jpeg", 10)
    assert THUMBHASH_RE.match(ph.thumbhash) and COLOR_RE.match(ph.color)
    assert len(base64.b64decode(ph.thumbhash)) <= 25
    back = decoded(ph.thumbhash)
    assert abs(back.width / back.height - 4 / 3) < 0.2  # the aspect ratio travels in the hash
    assert all(abs(a - b) < 10 for a, b in zip(mean_rgb(back), mean_rgb(src))), (mean_rgb(back), mean_rgb(src))
    # and it is a picture of it: sky above, field below
    top, bottom = mean_rgb(back.crop((0, 0, back.width, back.height // 3))), \
        mean_rgb(back.crop((0, 2 * back.height // 3, back.width, back.height)))
    assert top[2] > top[1] > top[0] and bottom[1] > bottom[2]
    # the same photo from a file path or from bytes (small uploads stay in memory) gives the same
    assert placeholder_for(tmp_path / "p.jpg", "jpeg", 10) == ph


def quarters(mode: str = "RGB") -> Image.Image:
    """Half red (left), a quarter blue, a quarter green: the average is a muddy brown."""
    im = Image.new(mode, (200, 100), (230, 20, 30, 255)[:len(mode)])
    im.paste((20, 40, 220, 255)[:len(mode)], (100, 0, 200, 50))
    im.paste((30, 200, 60, 255)[:len(mode)], (100, 50, 200, 100))
    return im


@pytest.mark.parametrize("fmt,pil", [("png", "PNG"), ("jpeg", "JPEG"), ("bmp", "BMP"), ("webp", "WEBP")])
def test_dominant_colour_is_the_most_common_not_the_average(tmp_path, fmt, pil):
    data = save(quarters(), tmp_path / f"q.{fmt}", pil)
    ph = placeholder_for(data, fmt, 10)  # BMP through Pillow: the pyvips wheel has no BMP loader
    r, g, b = (int(ph.color[i:i + 2], 16) for i in (1, 3, 5))
    assert r > 200 and g < 50 and b < 60, ph.color
    avg = mean_rgb(quarters())
    assert not (avg[0] > 200 and avg[1] < 50)  # the average would not have said red


def test_alpha_is_kept(tmp_path):
    im = Image.new("RGBA", (120, 60), (0, 0, 0, 0))  # left half transparent (a red nobody sees)
    im.paste((255, 0, 0, 0), (0, 0, 60, 60))
    im.paste((20, 60, 230, 255), (60, 0, 120, 60))  # right half opaque blue
    ph = placeholder_for(save(im, tmp_path / "a.png", "PNG"), "png", 10)
    raw = base64.b64decode(ph.thumbhash)
    assert raw[2] & 0x80  # the hash's alpha flag
    back = decoded(ph.thumbhash)
    alpha = back.getchannel("A")
    left = ImageStat.Stat(alpha.crop((0, 0, back.width // 4, back.height))).mean[0]
    right = ImageStat.Stat(alpha.crop((3 * back.width // 4, 0, back.width, back.height))).mean[0]
    assert left < 80 and right > 180, (left, right)
    r, g, b = (int(ph.color[i:i + 2], 16) for i in (1, 3, 5))
    assert b > 200 and r < 60, ph.color  # the colour of what is seen


def test_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    data = save(scene((320, 160)), tmp_path / "o.jpg", "JPEG", exif=exif)
    back = decoded(placeholder_for(data, "jpeg", 10).thumbhash)
    assert back.height > back.width


def test_every_accepted_file_of_both_corpora_gets_a_placeholder_the_right_way_up():
    """Whatever ypfs accepts (sniff + probe, as POST /upload runs them) gets a placeholder, in
    every format (HEIC and BMP through Pillow, AVIF sequences, CMYK, 16-bit, animations), with
    EXIF orientation applied: the hash's shape has the photo's displayed orientation."""
    from media.probe import ImageRejected, probe
    from media.sniff import sniff

    from .helpers import CORPUS, CORPUS2

    limits = from_dict(load_dict()).limits
    seen, missing, wrong_way, from_check, differs = 0, [], [], 0, []
    for corpus in (CORPUS, CORPUS2):
        for line in (corpus / "MANIFEST.tsv").read_text().splitlines()[1:]:
            path = corpus / line.split("\t", 1)[0]
            data = path.read_bytes()
            fmt = sniff(data[:64])
            try:
                info = probe(data, fmt, limits) if fmt else None
            except ImageRejected:
                info = None
            if info is None:
                continue
            seen += 1
            ph = placeholder_for(data, fmt, 10)
            if ph is None:
                missing.append(path.name)
                continue
            back = decoded(ph.thumbhash)
            if abs(info.width / info.height - 1) > 0.25 and (info.width > info.height) != (back.width > back.height):
                wrong_way.append(path.name)
            if info.preview is not None:  # what an upload stores: made from the check's own decode
                from_check += 1
                if placeholder_from(info.preview, fmt) != ph:
                    differs.append(path.name)
    assert seen > 100 and not missing and not wrong_way, (seen, missing, wrong_way)
    # the upload check's decode made the preview for most accepted files, and the placeholder
    # from it is the very one a separate decode (the backfill's) makes
    assert from_check > seen // 2 and not differs, (from_check, seen, differs)


def test_a_placeholder_past_its_time_budget_is_none_not_a_wait(tmp_path):
    """The backfill's decode is bounded too: a 2 ms budget on a 24 MP JPEG gives no placeholder
    (logged), well before the decode would have ended."""
    import pyvips

    path = tmp_path / "big.jpg"
    pyvips.Image.gaussnoise(6000, 4000, sigma=40, mean=120).cast("uchar").write_to_file(str(path), Q=92)
    assert placeholder_for(path, "jpeg", 10) is not None
    assert placeholder_for(path, "jpeg", 0.002) is None


def test_an_image_that_cannot_be_read_has_no_placeholder():
    assert placeholder_for(b"\xff\xd8\xff\xe0 not really a jpeg", "jpeg", 10) is None
    assert placeholder_for(b"BM nonsense", "bmp", 10) is None


# -- upload answer, photo API, listing, backfill -------------------------------------------------------

site = site_fixture("alice")


def upload(up, token: str, data: bytes) -> dict:
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="photo"; filename="p"\r\n'
            f'Content-Type: application/octet-stream\r\n\r\n').encode() + data + f"\r\n--{boundary}--\r\n".encode()
    r = up.simulate_post("/upload", body=body, headers={"Authorization": f"Bearer {token}",
                                                        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code in (200, 201), r.text
    return r.json


def jpeg_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_upload_answer_photo_api_and_listing_carry_the_placeholder(site):
    store, token, up = site.store, site.tokens["alice"], site.up
    data = jpeg_bytes(scene())
    answer = upload(up, token, data)
    assert THUMBHASH_RE.match(answer["thumbhash"]) and COLOR_RE.match(answer["color"])
    assert (answer["thumbhash"], answer["color"]) == (lambda p: (p.thumbhash, p.color))(placeholder_for(data, "jpeg", 10))
    rec = PhotoRecord.load(store, "alice", answer["id"])
    assert (rec.thumbhash, rec.color) == (answer["thumbhash"], answer["color"])  # stored once, in the record
    got = up.simulate_get(f"/api/photos/alice/{answer['id']}").json
    assert (got["thumbhash"], got["color"]) == (answer["thumbhash"], answer["color"])
    listed = up.simulate_get("/api/users/alice/photos").json["photos"]
    assert [(p["id"], p["thumbhash"], p["color"]) for p in listed] == [(answer["id"], answer["thumbhash"], answer["color"])]
    again = upload(up, token, data)  # the duplicate answer is the same photo, placeholder and all
    assert (again["id"], again["thumbhash"]) == (answer["id"], answer["thumbhash"])


def test_pages_dress_images_with_the_placeholder_and_older_photos_without(site, tmp_path):
    store, token, up, web = site.store, site.tokens["alice"], site.up, site.web
    new = upload(up, token, jpeg_bytes(scene()))
    (tmp_path / "old.jpg").write_bytes(jpeg_bytes(quarters()))
    old = seed_photo(store, "alice", tmp_path / "old.jpg", photo_id=site.next_id())
    store.put(timeline_key(old.id, "alice"), b"")  # on the home page too, as ypfs would have put it
    for path in ("/", "/u/alice"):
        r = web.simulate_get(path)
        assert r.status_code == 200
        img_new = re.search(rf'<img [^>]*data-photo="{new["id"]}"[^>]*>', r.text).group(0)
        img_old = re.search(rf'<img [^>]*data-photo="{old.id}"[^>]*>', r.text).group(0)
        assert f'style="background-color:{new["color"]}"' in img_new
        assert f'data-thumbhash="{new["thumbhash"]}"' in img_new and 'width="' in img_new and 'height="' in img_new
        assert "style=" not in img_old and "data-thumbhash" not in img_old
        assert "thumbHashToDataURL" in r.text
        assert "unsafe-inline" not in r.headers.get("content-security-policy", "")
    page = web.simulate_get(f"/p/alice/{new['id']}").text
    img = re.search(r'<img class="photo"[^>]*>', page).group(0)
    assert "aspect-ratio:" in img and f"background-color:{new['color']}" in img and "data-thumbhash=" in img
    assert "thumbHashToDataURL" not in web.simulate_get("/upload").text  # no images, no script


def test_older_records_read_null_until_the_backfill_fills_them(site, tmp_path):
    cfg, store, token, up = site.cfg, site.store, site.tokens["alice"], site.up
    (tmp_path / "old.jpg").write_bytes(jpeg_bytes(scene()))
    old = seed_photo(store, "alice", tmp_path / "old.jpg", photo_id=site.next_id(), title="before")
    (tmp_path / "gone.png").write_bytes(save(quarters(), tmp_path / "gone.png", "PNG"))
    broken = seed_photo(store, "alice", tmp_path / "gone.png", photo_id=site.next_id())
    store.delete(broken.ref.original_key)
    fresh = upload(up, token, jpeg_bytes(quarters()))
    got = up.simulate_get(f"/api/photos/alice/{old.id}").json
    assert got["thumbhash"] is None and got["color"] is None
    assert {p["id"]: p["thumbhash"] for p in up.simulate_get("/api/users/alice/photos").json["photos"]}[old.id] is None

    report = backfill(cfg.limits, store)
    assert (report.examined, report.filled, report.had_one, len(report.failed)) == (3, 1, 1, 1)
    assert broken.id in report.failed[0] and "missing" in report.failed[0]
    got = up.simulate_get(f"/api/photos/alice/{old.id}").json
    expected = placeholder_for(tmp_path / "old.jpg", "jpeg", 10)
    assert (got["thumbhash"], got["color"]) == (expected.thumbhash, expected.color)  # as an upload would make it
    assert got["title"] == "before" and got["secret"] == old.secret  # nothing else touched
    assert up.simulate_get(f"/api/photos/alice/{fresh['id']}").json["thumbhash"] == fresh["thumbhash"]
    again = backfill(cfg.limits, store)  # a second run has nothing left to do
    assert (again.filled, again.had_one) == (0, 2)


def test_backfill_keeps_an_edit_made_while_it_ran_and_skips_a_photo_moved_meanwhile(site, tmp_path):
    cfg, store = site.cfg, site.store
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(scene()))
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes(quarters()))
    renamed = seed_photo(store, "alice", tmp_path / "a.jpg", photo_id=site.next_id(), title="old title")
    hidden = seed_photo(store, "alice", tmp_path / "b.jpg", photo_id=site.next_id())

    def owner_edits(key: str) -> None:  # the owner's PATCHes land while the backfill is on that photo
        if renamed.id in key:
            apply_changes(store, PhotoRecord.load(store, "alice", renamed.id), PhotoChanges(title="new title"))
        if hidden.id in key:
            apply_changes(store, PhotoRecord.load(store, "alice", hidden.id), PhotoChanges(private=True))

    report = backfill(cfg.limits, store, "alice", on_photo=owner_edits)
    assert (report.filled, report.changed_meanwhile) == (1, 1)
    a = PhotoRecord.load(store, "alice", renamed.id)
    assert a.title == "new title" and a.thumbhash is not None  # the edit is kept, the placeholder added
    b = PhotoRecord.load(store, "alice", hidden.id)
    assert b.private and b.secret != hidden.secret and b.thumbhash is None  # never put back to the old secret
    assert store.exists(b.ref.original_key)
    assert backfill(cfg.limits, store, "alice").filled == 1  # the next run fills it


class EditBeforeReplace:
    """The store, with one owner's edit landing between the backfill's re-read and its write
    (the window the compare-and-swap closes)."""

    def __init__(self, store, edit):
        self.store, self.edit, self.done = store, edit, False

    def replace(self, *args, **kwargs):
        if not self.done:
            self.done = True
            self.edit()
        return self.store.replace(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_backfill_never_overwrites_an_edit_or_a_delete_that_lands_just_before_its_write(site, tmp_path):
    cfg, store = site.cfg, site.store
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(scene()))
    photo = seed_photo(store, "alice", tmp_path / "a.jpg", photo_id=site.next_id(), title="old title")

    def owner_edits() -> None:
        apply_changes(store, PhotoRecord.load(store, "alice", photo.id), PhotoChanges(title="new title"))

    report = backfill(cfg.limits, EditBeforeReplace(store, owner_edits), "alice")
    assert (report.filled, report.changed_meanwhile) == (0, 1)
    assert PhotoRecord.load(store, "alice", photo.id).title == "new title"  # the edit stands
    assert backfill(cfg.limits, store, "alice").filled == 1  # and the next run fills it
    assert PhotoRecord.load(store, "alice", photo.id).title == "new title"

    (tmp_path / "b.jpg").write_bytes(jpeg_bytes(quarters()))
    gone = seed_photo(store, "alice", tmp_path / "b.jpg", photo_id=site.next_id())
    report = backfill(cfg.limits, EditBeforeReplace(store, lambda: delete_photo(store, gone)), "alice")
    assert report.changed_meanwhile == 1 and not store.exists(gone.ref.record_key)  # not brought back


def test_backfill_command(tmp_path):
    cfg, path = write_config(tmp_path, cluster_tree(tmp_path))
    store = open_store(cfg.storage, cfg.local_root)
    UserRecord("bob").save(store)
    (tmp_path / "p.jpg").write_bytes(jpeg_bytes(scene((160, 120))))
    rec = seed_photo(store, "bob", tmp_path / "p.jpg")
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "placeholders", "--user", "bob", "--quiet"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "1 photos examined: 1 given a placeholder" in run.stdout
    assert COLOR_RE.match(PhotoRecord.load(store, "bob", rec.id).color)
    assert time.monotonic() - started < 120
    bad = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "placeholders", "--user", "No Such"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and "not a user name" in bad.stderr
