"""Ultra HDR: an HDR original's large renditions keep a resized gain map; small ones stay plain.

The gain map is found in the rendition's bytes by a walk of its own (the primary image's
APP2 ``MPF`` index, its second entry, that image's ``hdrgm`` XMP), decoded with Pillow,
and its size checked against the rendition's. Pillow, an SDR viewer, decodes every
rendition as an ordinary RGB JPEG of the expected size, and the HDR rendition's base
matches the plain SDR rendition of the same size. The last test runs the real processes:
ypws renders through magickd and serves the gain map, and serves the original with its
GPS scrubbed and its gain map intact.
"""

from __future__ import annotations

import io
import re

import pyvips
import pytest
import requests
from PIL import Image

from cluster.config import ConfigError, from_dict, load_dict
from cluster.profiles import by_name
from magickd import pipeline
from magickd.options import Limits, RenderOptions, parse_targets
from magickd.verify import check_rendition
from media.geoscrub import strip_location
from media.probe import probe
from storage import open_store

from .helpers import CORPUS, CORPUS2, Services, cluster_tree, seed_photo
from .magickd_support import mean_abs_diff, pillow_reference
from .ypws_support import start_ypws

HDR = CORPUS2 / "formats" / "gain-map.jpg"  # 3840x2160, gain map 960x540 (a quarter of each side)
GAIN_RATIO = 4
CFG = from_dict(load_dict())
KEEPING = {p.name for p in CFG.sizes if p.keep_gain_map}
_GPS_IFD, _MAKE, _MODEL = 0x8825, 0x010F, 0x0110


def render(data: bytes, cfg=CFG) -> dict[tuple[str, str], bytes]:
    options = RenderOptions(parse_targets(by_name(cfg.sizes), None, list(cfg.sizes[0].formats)), Limits.from_config(cfg.limits, cfg.magickd))
    return {(o.target.name, o.target.fmt): o.data for o in pipeline.render(data, options)}


def secondary_images(jpeg: bytes) -> list[bytes]:
    """The images after the first that the primary image's MPF (CIPA DC-007) index lists."""
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and jpeg[pos + 1] not in (0xDA, 0xD9):
        length = int.from_bytes(jpeg[pos + 2:pos + 4], "big")
        payload = jpeg[pos + 4:pos + 2 + length]
        if jpeg[pos + 1] == 0xE2 and payload.startswith(b"MPF\x00"):
            return _mp_entries(jpeg, pos + 8, payload[4:])
        pos += 2 + length
    return []


def _mp_entries(jpeg: bytes, tiff_at: int, tiff: bytes) -> list[bytes]:
    order = "big" if tiff[:2] == b"MM" else "little"
    u = lambda raw: int.from_bytes(raw, order)  # noqa: E731
    ifd = u(tiff[4:8])
    for i in range(u(tiff[ifd:ifd + 2])):
        entry = tiff[ifd + 2 + 12 * i:ifd + 14 + 12 * i]
        if u(entry[:2]) == 0xB002:  # MPEntry: 16 bytes an image, offsets from the MPF TIFF header
            count, at = u(entry[4:8]) // 16, u(entry[8:12])
            images = []
            for n in range(1, count):
                mp = tiff[at + 16 * n:at + 16 * n + 16]
                size, offset = u(mp[4:8]), u(mp[8:12])
                images.append(jpeg[tiff_at + offset:tiff_at + offset + size])
            return images
    return []


def gain_map_of(jpeg: bytes) -> tuple[Image.Image, bytes] | None:
    """The gain map image (decoded) and its XMP, or None when the JPEG carries none."""
    found = [im for im in secondary_images(jpeg) if b"http://ns.adobe.com/hdr-gain-map/1.0/" in im]
    if not found:
        return None
    xmp = re.search(rb"<x:xmpmeta.*?</x:xmpmeta>", found[0], re.S)
    gain = Image.open(io.BytesIO(found[0]), formats=["JPEG"])
    gain.load()
    return gain, xmp.group(0) if xmp else b""


@pytest.fixture(scope="module")
def renditions():
    return render(HDR.read_bytes())


def test_default_config_keeps_the_gain_map_in_the_large_sizes():
    assert KEEPING == {"large", "xlarge"}


@pytest.mark.parametrize("size", ["large", "xlarge"])
def test_large_renditions_carry_a_resized_gain_map(renditions, size):
    data = renditions[(size, "jpeg")]
    with Image.open(io.BytesIO(data)) as sdr:  # what an SDR viewer sees
        sdr.load()
        assert sdr.mode == "RGB"
        expected = {"large": (1024, 576), "xlarge": (2048, 1152)}[size]
        assert sdr.size == expected
    found = gain_map_of(data)
    assert found is not None, "no gain map in the rendition"
    gain, xmp = found
    assert gain.mode == "L"
    assert abs(gain.width - expected[0] / GAIN_RATIO) <= 1 and abs(gain.height - expected[1] / GAIN_RATIO) <= 1
    assert b"hdrgm:Version" in xmp and b"hdrgm:GainMapMax" in xmp
    # the gain map is the original's, resized: it is not flat, and libvips reads it back as Ultra HDR
    assert gain.getextrema()[1] > gain.getextrema()[0]
    again = pyvips.Image.new_from_buffer(data, "")
    assert again.get("vips-loader") == "uhdrload_buffer"
    assert check_rendition(data, "jpeg", expected) is None  # magickd verify takes it as a good rendition


@pytest.mark.parametrize("size", ["square", "thumb", "small", "medium"])
def test_small_renditions_stay_plain_jpeg(renditions, size):
    data = renditions[(size, "jpeg")]
    assert gain_map_of(data) is None and b"MPF\x00" not in data and b"hdrgm" not in data
    with Image.open(io.BytesIO(data)) as im:  # progressive or baseline as the size's profile says
        assert im.format == "JPEG" and bool(im.info.get("progressive")) == CFG.size(size).progressive


@pytest.mark.parametrize("fmt", ["webp", "avif"])
def test_other_formats_of_a_large_size_are_sdr(renditions, fmt):
    data = renditions[("large", fmt)]
    assert b"hdrgm" not in data
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (1024, 576)


def test_the_sdr_base_looks_like_the_plain_rendition_and_the_original(renditions):
    tree = load_dict()
    for size in tree["sizes"]:
        size["keep_gain_map"] = False
    plain_cfg = from_dict(tree)
    plain = render(HDR.read_bytes(), plain_cfg)[("large", "jpeg")]
    assert gain_map_of(plain) is None
    hdr = Image.open(io.BytesIO(renditions[("large", "jpeg")])).convert("RGB")
    assert mean_abs_diff(hdr, Image.open(io.BytesIO(plain))) < 2.0
    assert mean_abs_diff(hdr, pillow_reference(HDR, hdr.size)) < 4.0


def test_no_location_or_camera_data_in_hdr_renditions():
    """An HDR original carrying GPS: the HDR rendition holds none (nor in its gain map image)."""
    original = _hdr_original_with_gps()
    out = render(original)
    for size in KEEPING:
        data = out[(size, "jpeg")]
        assert gain_map_of(data) is not None
        exif = Image.open(io.BytesIO(data)).getexif()
        assert _GPS_IFD not in exif and _MAKE not in exif and _MODEL not in exif
        assert b"GPS" not in data


def test_a_gain_map_needs_an_uncropped_size():
    tree = load_dict()
    tree["sizes"][0]["keep_gain_map"] = True  # square: crop = "attention"
    with pytest.raises(ConfigError, match=r"sizes\.square\.keep_gain_map"):
        from_dict(tree)


@pytest.mark.parametrize("damage", ["scan_data", "truncated"])
def test_a_damaged_gain_map_never_stops_an_accepted_photo_rendering(damage):
    data = HDR.read_bytes()
    gain = secondary_images(data)[0]
    at = data.rfind(gain)
    if damage == "scan_data":  # libultrahdr decodes it anyway: the gain map is kept, damage and all
        data = data[:at + 2000] + bytes(400) + data[at + 2400:]
    else:  # no longer an Ultra HDR file: an ordinary JPEG (its base) is accepted and rendered
        data = data[:at + len(gain) // 2]
        assert probe(data, "jpeg", CFG.limits).format == "jpeg"
    out = render(data)
    with Image.open(io.BytesIO(out[("large", "jpeg")])) as im:
        im.load()
        assert im.size == (1024, 576)
    assert (gain_map_of(out[("large", "jpeg")]) is not None) == (damage == "scan_data")


def _hdr_original_with_gps() -> bytes:
    """gain-map.jpg at half size with the EXIF (GPS included) of a camera photo."""
    exif = pyvips.Image.new_from_file(str(CORPUS / "formats" / "gps.jpg")).get("exif-data")
    image = pyvips.Image.uhdrload_buffer(HDR.read_bytes(), shrink=2).copy()
    image.set_type(pyvips.GValue.blob_type, "exif-data", exif)
    data = image.uhdrsave_buffer(Q=90)
    assert _GPS_IFD in Image.open(io.BytesIO(data)).getexif()
    return data


def test_the_gps_scrub_of_an_hdr_original_keeps_its_gain_map():
    original = _hdr_original_with_gps()
    scrubbed = strip_location(original, "jpeg")
    assert len(scrubbed) == len(original) and not Image.open(io.BytesIO(scrubbed)).getexif().get_ifd(_GPS_IFD)
    assert gain_map_of(scrubbed)[0].tobytes() == gain_map_of(original)[0].tobytes()
    assert pyvips.Image.new_from_buffer(scrubbed, "").get("vips-loader") == "uhdrload_buffer"


@pytest.mark.slow
def test_ypws_serves_the_gain_map_and_a_scrubbed_original(tmp_path):
    """Real gunicorn ypws and magickd: a large size rendered on demand carries the gain map, a
    small one none; the public original has no GPS and keeps its MPF gain map."""
    tree = cluster_tree(tmp_path, overrides={"cluster": {"admin_token": "t-admin", "url_key": "t-key"}})
    services = Services(tmp_path)
    try:
        cfg, path = start_ypws(services, tmp_path / "ypws", tree)
        node = cfg.magickd.nodes[0]
        services.start_module(node.name, "magickd", "serve", "--node", node.name, config_path=path,
                              health_url=f"{node.url}/healthz")
        original = tmp_path / "hdr.jpg"
        original.write_bytes(_hdr_original_with_gps())
        rec = seed_photo(open_store(cfg.storage, cfg.local_root), "alice", original)
        base = f"{cfg.node('ypws', 'ypws1').url}{rec.ref.url_path}"

        large = requests.get(f"{base}/large.jpg", timeout=60)
        assert large.status_code == 200 and large.headers["Content-Type"] == "image/jpeg"
        gain, _ = gain_map_of(large.content)
        assert Image.open(io.BytesIO(large.content)).size == (1024, 576) and gain.size == (256, 144)
        small = requests.get(f"{base}/small.jpg", timeout=60)
        assert small.status_code == 200 and gain_map_of(small.content) is None

        served = requests.get(f"{base}/original.jpg", timeout=60)
        assert served.status_code == 200
        assert served.content == strip_location(original.read_bytes(), "jpeg") != original.read_bytes()
        assert not Image.open(io.BytesIO(served.content)).getexif().get_ifd(_GPS_IFD)  # emptied in place
        gain, xmp = gain_map_of(served.content)
        assert gain.size == (480, 270) and b"hdrgm:Version" in xmp
    finally:
        services.stop_all()
