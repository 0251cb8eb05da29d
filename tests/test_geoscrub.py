"""The location comes out of an original before it is served; nothing else changes.

Every check decodes with Pillow (its own EXIF and XMP readers, its PNG CRC
checks), and the coordinates are also searched for as raw bytes, so a GPS IFD
that is merely unlinked but still in the file would fail.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

import pillow_heif
import pytest
from PIL import Image, PngImagePlugin

from media.geoscrub import PatchedReader, apply_patches, location_patches, strip_location

from .helpers import CORPUS

pillow_heif.register_heif_opener()

GPS_IFD, MAKE = 0x8825, 0x010F
LATITUDE = (51.0, 30.0, 12.5)  # stored as the rationals 51/1 30/1 25/2
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/" exif:GPSLatitude="51,30.2083N" exif:GPSLongitude="0,7.6667W">'
       b'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Harbour</rdf:li></rdf:Alt></dc:title>'
       b'<exif:GPSAltitude>12/1</exif:GPSAltitude><exif:GPSAreaInformation/></rdf:Description></rdf:RDF></x:xmpmeta>')


def exif_with_gps() -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: LATITUDE, 3: "W", 4: (0.0, 7.0, 40.0)})
    return exif


def picture() -> Image.Image:
    im = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    return Image.merge("RGB", (im.getchannel(0), im.getchannel(0).rotate(90), im.getchannel(0).transpose(0)))


def craft(fmt: str) -> bytes:
    """A small image in ``fmt`` with a GPS IFD (and, where the format carries it, GPS in XMP)."""
    im, out = picture(), io.BytesIO()
    if fmt == "tiff":
        im.save(out, "TIFF", tiffinfo={MAKE: "TestCam", 34853: {1: "N", 2: LATITUDE}, 700: XMP})
    elif fmt == "png":
        im.save(out, "PNG", exif=exif_with_gps())
    elif fmt == "heif":
        im.save(out, "HEIF", exif=exif_with_gps().tobytes(), xmp=XMP)
    else:
        im.save(out, {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}[fmt], exif=exif_with_gps(), xmp=XMP)
    return out.getvalue()


def latitude_bytes(data: bytes) -> list[bytes]:
    """51/1 30/1 25/2 as the file's TIFF structures would store them, in both byte orders."""
    return [struct.pack(f"{order}6I", 51, 1, 30, 1, 25, 2) for order in "<>"]


def gps_of(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as im:
        return dict(im.getexif().get_ifd(GPS_IFD))


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").tobytes()


def png_crcs_hold(data: bytes) -> bool:
    pos = 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        body = data[pos + 4:pos + 8 + length]
        if zlib.crc32(body) != int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big"):
            return False
        pos += 12 + length
    return True


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff", "heif", "avif"])
def test_every_container_loses_its_coordinates_and_keeps_the_rest(fmt):
    original = craft(fmt)
    assert gps_of(original) and any(b in original for b in latitude_bytes(original))  # the test means something
    served = strip_location(original, fmt)
    assert len(served) == len(original)
    assert gps_of(served) == {}
    assert not any(b in served for b in latitude_bytes(served))
    assert b"GPSLatitude" not in served and b"51,30.2083N" not in served and b"12/1" not in served
    assert pixels(served) == pixels(original)
    with Image.open(io.BytesIO(served)) as im:
        make = im.getexif().get(MAKE) or im.getexif().get_ifd(0x8769).get(MAKE)
        assert make == "TestCam"
    if XMP in original:  # the XMP packet stays, without its GPS properties
        assert b"Harbour" in served and b"<rdf:RDF" in served and b"</rdf:RDF>" in served
    if fmt == "png":
        assert png_crcs_hold(served)


@pytest.mark.parametrize("name", ["formats/gps.jpg", "formats/DSCN0010.jpg", "formats/exif_gps.jpg",
                                  "formats/canon_hdr_NO.jpg"])
def test_real_photos_lose_their_gps_and_nothing_else(name):
    original = (CORPUS / name).read_bytes()
    before = gps_of(original)
    assert before
    served = strip_location(original, "jpeg")
    assert len(served) == len(original) and gps_of(served) == {}
    assert pixels(served) == pixels(original)
    with Image.open(io.BytesIO(original)) as a, Image.open(io.BytesIO(served)) as b:
        ea, eb = a.getexif(), b.getexif()
        assert {k: v for k, v in ea.items() if k != GPS_IFD} == {k: v for k, v in eb.items() if k != GPS_IFD}
        assert dict(ea.get_ifd(0x8769)) == dict(eb.get_ifd(0x8769))  # the Exif IFD: exposure, dates...
    for value in before.values():  # multi-part values (rationals, strings) are gone from the bytes
        if isinstance(value, tuple) and len(value) == 3:
            for order in "<>":
                packed = b"".join(struct.pack(f"{order}2I", v.numerator, v.denominator) for v in value)
                if packed in original:
                    assert packed not in served


def test_a_gps_entry_that_is_no_pointer_has_its_value_blanked():
    original = (CORPUS / "hostile" / "exif_gps_typeerror.jpg").read_bytes()
    served = strip_location(original, "jpeg")
    assert len(served) == len(original) and served != original
    assert pixels(served) == pixels(original)


@pytest.mark.parametrize("name", ["formats/hopper.jpg", "formats/xmp_test.jpg", "formats/transparent.png",
                                  "formats/lossy_alpha.webp", "formats/hopper.tif", "formats/image.heic",
                                  "formats/sugarshack.mpo", "hostile/empty_gps_ifd.jpg"])
def test_originals_without_coordinates_are_served_as_stored(name):
    fmt = {"jpg": "jpeg", "mpo": "jpeg", "png": "png", "webp": "webp", "tif": "tiff", "heic": "heif"}[name.rsplit(".", 1)[1]]
    original = (CORPUS / name).read_bytes()
    assert strip_location(original, fmt) == original


def test_a_compressed_png_text_chunk_that_mentions_gps_is_made_inert():
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP.decode(), zip=True)
    info.add_text("Comment", "kept")
    out = io.BytesIO()
    picture().save(out, "PNG", pnginfo=info)
    original = out.getvalue()
    served = strip_location(original, "png")
    assert len(served) == len(original) and png_crcs_hold(served)
    with Image.open(io.BytesIO(served)) as im:
        im.load()
        assert "xmp" not in im.info and "XML:com.adobe.xmp" not in im.info and im.info["Comment"] == "kept"
    assert pixels(served) == pixels(original)


def test_damaged_exif_is_left_alone_without_error():
    original = craft("jpeg")
    at = original.index(b"MM\x00\x2a") if b"MM\x00\x2a" in original else original.index(b"II\x2a\x00")
    little = original[at:at + 2] == b"II"
    # point IFD0 far outside the file, then make it a loop onto itself
    for ifd0 in (0x7FFFFFF0, 8):
        broken = bytearray(original)
        broken[at + 4:at + 8] = ifd0.to_bytes(4, "little" if little else "big")
        if ifd0 == 8:
            count = int.from_bytes(broken[at + 8:at + 10], "little" if little else "big")
            nxt = at + 10 + 12 * count
            broken[nxt:nxt + 4] = (8).to_bytes(4, "little" if little else "big")
        strip_location(bytes(broken), "jpeg")  # no exception, bounded walk
    truncated = original[:at + 20]
    assert strip_location(truncated, "jpeg") == truncated


def test_patches_apply_the_same_however_the_bytes_are_cut():
    original = craft("webp")
    patches = location_patches(lambda s, n: original[s:s + n], len(original), "webp")
    whole = strip_location(original, "webp")
    rng = random.Random(5)
    for _ in range(20):
        reader, parts = PatchedReader(io.BytesIO(original), patches), []
        while chunk := reader.read(rng.randint(1, 64)):
            parts.append(chunk)
        assert b"".join(parts) == whole
        start = rng.randrange(len(original))
        length = rng.randint(1, len(original) - start)
        assert apply_patches(original[start:start + length], start, patches) == whole[start:start + length]


def test_crafted_floods_of_packets_and_headers_are_scrubbed_in_bounded_work():
    """Thousands of RDF openings, packets or TIFF headers (each once cost a pass over the rest of the
    file): the first packets are still scrubbed, and no offset or length moves."""
    packet = b'<rdf:RDF><rdf:Description exif:GPSLatitude="51,30.2083N"/></rdf:RDF>'
    for flood in (b"<rdf:RDF a:gps" * 100_000, b"<rdf:RDF a:gps</rdf:RDF>" * 100_000,
                  b"\xff\xe1\x00\x10Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" * 100_000):
        data = b"\xff\xd8" + packet + flood
        served = strip_location(data, "jpeg")
        assert len(served) == len(data) and b"51,30.2083N" not in served


def _corpus_files() -> list:
    return sorted(p for p in CORPUS.glob("*/*") if p.suffix not in (".tsv", ".md"))


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_corpus_file_has_a_pixel_or_an_offset_changed(path):
    """Hostile files included: an EXIF whose GPS pointer leads out of its APP1 segment (as in
    hostile/broken-exif-tag.jpg, into the quantisation tables) must not have the bytes it points at
    zeroed. Whatever the scrub changes, the image decodes to the same pixels."""
    from media.sniff import sniff

    original = path.read_bytes()
    served = strip_location(original, sniff(original[:4096]) or "jpeg")
    assert len(served) == len(original)
    if served == original:
        return
    try:
        expected = pixels(original)
    except Exception:  # undecodable hostile file: only its length is promised
        return
    assert pixels(served) == expected


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "tiff", "heif", "avif"])
def test_truncated_and_damaged_containers_never_raise(fmt):
    """Cut anywhere or with bytes flipped, a file is scrubbed as far as it can be read, never an
    exception (that would turn an original download into a 500)."""
    original = craft(fmt)
    rng = random.Random(fmt)
    for cut in sorted({rng.randrange(len(original)) for _ in range(40)} | {0, 1, 8, 12, 20}):
        assert len(strip_location(original[:cut], fmt)) == cut
    for _ in range(200):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        assert len(strip_location(bytes(damaged), fmt)) == len(original)
