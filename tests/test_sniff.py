"""Format sniffing (media/sniff.py): by content, never by name."""

from __future__ import annotations

import pytest

from media.sniff import headless_heif, sniff

from .helpers import CORPUS


@pytest.mark.parametrize("name,fmt", [
    ("formats/hopper.jpg", "jpeg"), ("formats/sugarshack.mpo", "jpeg"), ("formats/transparent.png", "png"),
    ("formats/transparent.gif", "gif"), ("formats/simple-rgb.webp", "webp"), ("formats/hopper.tif", "tiff"),
    ("formats/hopper.avif", "avif"), ("formats/image.heic", "heif"), ("formats/hopper.bmp", "bmp"),
    ("hostile/eps_named_as.jpg", None), ("hostile/circle.svg", None), ("hostile/psd-oob-write-overflow.psd", None),
    ("hostile/text_file_renamed.jpg", None), ("hostile/empty.jpg", None),
])


def test_sniff_by_content_not_name(name, fmt):
    assert sniff((CORPUS / name).read_bytes()[:64]) == fmt


@pytest.mark.parametrize("name,headless", [
    ("hostile/github_46_2.heic", True), ("formats/image.heic", False), ("hostile/text_file_renamed.jpg", False),
    ("hostile/empty.jpg", False), ("hostile/psd-oob-write-overflow.psd", False)])


def test_heif_boxes_without_ftyp_are_damaged_heif_not_an_unknown_format(name, headless):
    head = (CORPUS / name).read_bytes()[:64]
    assert headless_heif(head) is headless
    assert sniff(head) == ("heif" if name.startswith("formats/") else None)
