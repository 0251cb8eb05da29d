"""Decide an upload's format from its first bytes, against an explicit allow-list.

The name and the declared Content-Type are ignored: an EPS file named .jpg must
never reach a decoder that would hand it to Ghostscript, and an SVG never the
SVG loader. Anything not positively recognised here is refused with 415, except
HEIF boxes with the file's ``ftyp`` box missing (a cut or fuzzed HEIF): that is a
damaged image of a format we take (422), though no parser ever sees it.
"""

from __future__ import annotations

#: formats we accept, in the names the rest of the system uses (storage.keys.EXTENSIONS)
SUPPORTED = ("jpeg", "png", "gif", "webp", "tiff", "heif", "avif", "bmp")

HEAD_BYTES = 64

_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
#: HEIF-only box types (ISO/IEC 23008-12) a headless fragment may start with
_HEIF_BOXES = {b"meta", b"iprp", b"ipco", b"ipma", b"iinf", b"iloc", b"pitm", b"iref", b"idat", b"ispe"}


def sniff(head: bytes) -> str | None:
    """The format of a file starting with ``head`` (>= 32 bytes when available), or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"  # also MPO, whose first image is a plain JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:2] == b"BM" and len(head) >= 26 and head[14:18] in (b"\x0c\x00\x00\x00", b"(\x00\x00\x00", b"@\x00\x00\x00", b"l\x00\x00\x00", b"|\x00\x00\x00"):
        return "bmp"  # known DIB header sizes (12, 40, 64, 108, 124), so random 'BM' text is not a BMP
    if head[4:8] == b"ftyp":
        return _iso_bmff_brand(head)
    return None


def _iso_bmff_brand(head: bytes) -> str | None:
    box_size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]]
    end = min(len(head), box_size if box_size >= 16 else len(head))
    brands += [head[i:i + 4] for i in range(16, end - 3, 4)]
    if head[8:12] in _AVIF_BRANDS:
        return "avif"
    if head[8:12] in _HEIF_BRANDS:
        return "heif"
    if any(b in _AVIF_BRANDS for b in brands):
        return "avif"
    if any(b in _HEIF_BRANDS for b in brands):
        return "heif"
    return None


def headless_heif(head: bytes) -> bool:
    """True for HEIF boxes without the leading ``ftyp`` box: damaged HEIF, not another format."""
    return len(head) >= 8 and int.from_bytes(head[:4], "big") >= 8 and head[4:8] in _HEIF_BOXES
