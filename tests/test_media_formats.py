"""media.formats and media.decode: one format table and one decode policy for ypfs, magickd and ypws.

For a real file of every accepted format: the table's magic bytes name it, its loader
(libvips or Pillow, as the table says) opens it, the upload probe accepts it, the render
pool renders it, and its key extension and MIME type come back out of the table. The
pixel and frame budgets are the same in the upload check and in the render pool.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
import pyvips
from PIL import Image

from cluster.config import from_dict, load_dict
from cluster.profiles import OUTPUT_FORMATS, by_name
from magickd import pipeline
from magickd.errors import TooLarge
from magickd.options import Limits, RenderOptions, parse_targets
from media.decode import PILLOW_DECODED, check_budget, register_heif
from media.errors import ImageRejected
from media.formats import BY_VIPS_LOADER, CONTENT_TYPES, FORMATS, OUTPUT, SUPPORTED, pillow_ids
from media.probe import probe
from media.sniff import HEAD_BYTES, sniff
from storage.keys import EXTENSIONS, FORMAT_BY_EXT, PhotoRef

from .helpers import CORPUS, CORPUS2

CFG = from_dict(load_dict())
SAMPLES = {
    "jpeg": CORPUS / "formats" / "hopper.jpg", "png": CORPUS / "formats" / "transparent.png",
    "gif": CORPUS / "formats" / "transparent.gif", "webp": CORPUS / "formats" / "simple-rgb.webp",
    "tiff": CORPUS / "formats" / "hopper.tif", "avif": CORPUS / "formats" / "hopper.avif",
    "heif": CORPUS / "formats" / "image.heic", "bmp": CORPUS / "formats" / "hopper.bmp",
}
#: Pillow's own MIME type for each of its plugins (HEIC: pillow-heif says image/heif; we serve image/heic)
PILLOW_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
               "TIFF": "image/tiff", "AVIF": "image/avif", "BMP": "image/bmp"}


def render(data: bytes, max_pixels: int | None = None, sizes=("thumb",)):
    limits = Limits.from_config(CFG.limits, CFG.magickd)
    if max_pixels is not None:
        limits = dataclasses.replace(limits, max_pixels=max_pixels)
    return pipeline.render(data, RenderOptions(parse_targets(by_name(CFG.sizes), list(sizes), None), limits))


def test_every_accepted_format_has_a_sample():
    assert set(SAMPLES) == set(SUPPORTED)


@pytest.mark.parametrize("fmt", SUPPORTED)
def test_the_table_names_opens_accepts_and_renders_each_format(fmt):
    data = SAMPLES[fmt].read_bytes()
    assert sniff(data[:HEAD_BYTES]) == fmt
    entry = FORMATS[fmt]
    register_heif()
    with Image.open(io.BytesIO(data), formats=pillow_ids(fmt)) as im:  # the table's Pillow ids open it
        assert PILLOW_MIME.get(im.format, entry.mime) == entry.mime
    if entry.library == "vips":
        loader = pyvips.Image.new_from_buffer(data, "").get("vips-loader")
        assert BY_VIPS_LOADER[loader] == fmt and loader == f"{entry.vips_loaders[0]}_buffer"
    else:
        assert entry.pillow[0] in PILLOW_DECODED
    assert probe(data, fmt, CFG.limits).format == fmt
    (out,) = render(data)
    assert Image.open(io.BytesIO(out.data)).size == (out.width, out.height)


@pytest.mark.parametrize("fmt", SUPPORTED)
def test_keys_and_mime_types_come_from_the_table(fmt):
    ref = PhotoRef("alice", "1234567890123456789", "0123456789")
    key = ref.rendition_key("large", "0123abcd", fmt)
    assert key.endswith("." + FORMATS[fmt].ext) and FORMAT_BY_EXT[key.rsplit(".", 1)[1]] == fmt
    assert EXTENSIONS[fmt] == FORMATS[fmt].ext and CONTENT_TYPES[fmt] == FORMATS[fmt].mime


def test_config_output_formats_are_the_tables():
    assert set(OUTPUT_FORMATS) == set(OUTPUT)


def test_an_ultra_hdr_jpeg_is_a_jpeg():
    data = (CORPUS2 / "formats" / "gain-map.jpg").read_bytes()
    assert sniff(data[:HEAD_BYTES]) == "jpeg"
    assert BY_VIPS_LOADER[pyvips.Image.new_from_buffer(data, "").get("vips-loader")] == "jpeg"


def _gif(frames: int, size: int = 100) -> bytes:
    images = [Image.new("RGB", (size, size), (40 * i, 255 - 40 * i, 90)) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=50)
    return buf.getvalue()


def test_one_pixel_budget_for_frames_in_the_upload_check_and_the_render_pool():
    """Width x height x frames: an animation whose frames together exceed the budget is refused by
    both (it was accepted by the upload check and then refused by every render)."""
    limits = dataclasses.replace(CFG.limits, max_pixels=30_000)
    over, under = _gif(5), _gif(2)  # 50 000 and 20 000 pixels declared
    with pytest.raises(ImageRejected) as info:
        probe(over, "gif", limits)
    assert (info.value.status, info.value.code) == (422, "too_many_pixels")
    with pytest.raises(TooLarge):
        render(over, max_pixels=30_000)
    assert probe(under, "gif", limits).pages == 2
    assert render(under, max_pixels=30_000)


def test_the_budget_refuses_empty_and_endless_images():
    for args, code in (((0, 10, 1), "undecodable"), ((10, 10, 1001), "too_many_pages"),
                       ((20_000, 20_000, 1), "too_many_pixels")):
        with pytest.raises(ImageRejected) as info:
            check_budget(*args, max_pixels=100_000_000)
        assert info.value.code == code
    check_budget(10_000, 10_000, 1, max_pixels=100_000_000)
