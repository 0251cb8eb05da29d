"""Decide an upload's format from its first bytes, against an explicit allow-list.

The name and the declared Content-Type are ignored: an EPS file named .jpg must
never reach a decoder that would hand it to Ghostscript, and an SVG never the
SVG loader. Anything not positively recognised here is refused with 415, except
HEIF boxes with the file's ``ftyp`` box missing (a cut or fuzzed HEIF): that is a
damaged image of a format we take (422), though no parser ever sees it.
The signatures and brands are the format table's (media.formats).
"""

from __future__ import annotations

from .formats import FORMATS

HEAD_BYTES = 64

#: HEIF-only box types (ISO/IEC 23008-12) a headless fragment may start with
_HEIF_BOXES = {b"meta", b"iprp", b"ipco", b"ipma", b"iinf", b"iloc", b"pitm", b"iref", b"idat", b"ispe"}
#: brand families in the order a major brand is looked for (AVIF before the generic HEIF brands)
_BRANDED = sorted((f for f in FORMATS.values() if f.brands and f.original), key=lambda f: f.name != "avif")


def sniff(head: bytes) -> str | None:
    """The format of a file starting with ``head`` (>= 32 bytes when available), or None.
    An MPO or Ultra HDR JPEG is "jpeg" (its first image is a plain JPEG)."""
    for fmt in FORMATS.values():
        if fmt.original and any(all(head[at:at + len(raw)] == raw for at, raw in sig) for sig in fmt.magic):
            return fmt.name
    if head[4:8] == b"ftyp":
        return _iso_bmff_brand(head)
    return None


def _iso_bmff_brand(head: bytes) -> str | None:
    box_size = int.from_bytes(head[:4], "big")
    end = min(len(head), box_size if box_size >= 16 else len(head))
    compatible = [head[i:i + 4] for i in range(16, end - 3, 4)]
    for brands in ([head[8:12]], [head[8:12], *compatible]):  # the major brand decides first
        for fmt in _BRANDED:
            if any(b in fmt.brands for b in brands):
                return fmt.name
    return None


def headless_heif(head: bytes) -> bool:
    """True for HEIF boxes without the leading ``ftyp`` box: damaged HEIF, not another format."""
    return len(head) >= 8 and int.from_bytes(head[:4], "big") >= 8 and head[4:8] in _HEIF_BOXES
