"""media.jpeg: the marker walk ypfs and magickd run before decoding a JPEG."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from media.jpeg import MAX_SCANS, JpegStructureError, count_scans

from .helpers import CORPUS
from .jpeg_craft import many_scan_jpeg, segment


def _jpeg(**save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(out, "JPEG", **save)
    return out.getvalue()


@pytest.mark.parametrize("path", sorted(p.name for p in (CORPUS / "formats").iterdir()
                                        if p.read_bytes()[:2] == b"\xff\xd8"))
def test_every_valid_corpus_jpeg_passes(path):
    assert 1 <= count_scans((CORPUS / "formats" / path).read_bytes()) <= 12


def test_baseline_has_one_scan_and_progressive_several():
    assert count_scans(_jpeg()) == 1
    assert 2 <= count_scans(_jpeg(progressive=True)) <= 12


def test_a_scan_bomb_is_refused_and_it_really_is_a_legal_jpeg():
    bomb = many_scan_jpeg(256, 256)
    with Image.open(io.BytesIO(bomb)) as im:  # Pillow decodes it: only the scan count is wrong
        im.load()
        assert im.size == (256, 256)
    with pytest.raises(JpegStructureError) as info:
        count_scans(bomb)
    assert info.value.code == "too_many_scans" and str(MAX_SCANS) in str(info.value)


def test_marker_bytes_inside_a_segment_do_not_end_the_walk():
    """An end-of-image marker hidden in a comment must not cut the scan count short."""
    bomb = many_scan_jpeg(64, 64, comment_between_scans=b"\xff\xd9\xff\xd9")
    with pytest.raises(JpegStructureError) as info:
        count_scans(bomb)
    assert info.value.code == "too_many_scans"


def test_an_exif_thumbnail_is_not_the_image():
    """An APP1 segment carrying a whole JPEG (an EXIF thumbnail) is skipped by its length."""
    thumb = _jpeg(progressive=True)
    main = _jpeg()
    with_thumb = main[:2] + segment(0xE1, b"Exif\x00\x00" + thumb) + main[2:]
    assert count_scans(with_thumb) == 1


def test_end_of_image_replaced_by_another_marker_is_refused():
    data = (CORPUS / "hostile" / "8a9cc8eeed66aeb423a91c44111d9450.jpg").read_bytes()
    with pytest.raises(JpegStructureError) as info:
        count_scans(data)
    assert info.value.code == "undecodable"


@pytest.mark.parametrize("cut", [10, 200, -2])
def test_truncated_jpegs_are_refused(cut):
    data = _jpeg()[:cut]
    with pytest.raises(JpegStructureError) as info:
        count_scans(data)
    assert info.value.code == "undecodable"


def test_trailing_data_after_the_image_is_allowed():
    """MPO and many phones append data after the first image's end marker."""
    assert count_scans(_jpeg() + b"\xff\xd8\xff\xda garbage") == 1


def test_not_a_jpeg_and_empty():
    for data in (b"", b"GIF89a", b"\xff\xd8"):
        with pytest.raises(JpegStructureError):
            count_scans(data)
