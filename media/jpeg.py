"""A JPEG's marker structure, walked without decoding: shared by the upload check and the renderer.

Two kinds of damage get past libjpeg's own checks, and both are caught here for
the cost of a regular-expression scan over the file:

- **Scan bombs.** A legal progressive JPEG may carry any number of scans, and a
  decoder visits every block of the image once per scan. A 20 KB file with a
  thousand scans over a 100 MP canvas keeps libjpeg busy for most of a minute,
  all of it inside one library call that no deadline can interrupt. Real
  encoders write 1 (baseline) to about a dozen scans; more than ``MAX_SCANS``
  is refused before any decoding.
- **No end of image.** libjpeg reads the scans it needs and stops; a file whose
  end-of-image marker was replaced by another marker (``hostile/8a9cc8ee…``)
  decodes "fine" in libvips. A photo must end its first image with EOI.

Segments are skipped by their declared lengths (so an EXIF thumbnail, with its
own markers inside APP1, is never mistaken for the image's), and entropy-coded
data is skipped to the next real marker (0xFF followed by anything but a
stuffed 0x00, a restart marker or fill).
"""

from __future__ import annotations

import re

MAX_SCANS = 100

_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_SOI, _EOI, _SOS, _TEM = 0xD8, 0xD9, 0xDA, 0x01


class JpegStructureError(ValueError):
    """The marker structure is damaged (``code`` "undecodable") or a bomb ("too_many_scans")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def count_scans(data: bytes | bytearray | memoryview) -> int:
    """The number of scans of the first image; JpegStructureError if its structure is unfit."""
    if bytes(data[:2]) != b"\xff\xd8":
        raise JpegStructureError("undecodable", "not a JPEG (no start-of-image marker)")
    pos, scans = 2, 0
    while True:
        found = _MARKER.search(data, pos)
        if found is None:
            raise JpegStructureError("undecodable", "the JPEG has no end-of-image marker (truncated or damaged)")
        start, code = found.start(), data[found.start() + 1]
        if code == _EOI:
            if scans == 0:
                raise JpegStructureError("undecodable", "the JPEG has no image data")
            return scans
        if code == _SOI:
            raise JpegStructureError("undecodable", f"a second start-of-image marker at byte {start}")
        if code == _TEM:
            pos = start + 2
            continue
        if start + 4 > len(data):
            raise JpegStructureError("undecodable", "the JPEG ends inside a marker")
        length = int.from_bytes(data[start + 2:start + 4], "big")
        if length < 2:
            raise JpegStructureError("undecodable", f"a marker segment of impossible length at byte {start}")
        if code == _SOS:
            scans += 1
            if scans > MAX_SCANS:
                raise JpegStructureError("too_many_scans", f"the JPEG has more than {MAX_SCANS} scans")
        pos = start + 2 + length
