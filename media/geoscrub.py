"""Take the location out of an original before anyone is sent it.

GPS coordinates stay in the stored original only: ypfs keeps the upload as it
came, and the public ``original.{ext}`` URL serves a copy without them. The copy
differs from the original only where location was: every change here replaces
bytes with as many other bytes (zeros, spaces), so no offset, length or box
size moves and every container format stays valid without being rewritten.
Pixels are never touched.

What is blanked:

- every EXIF GPS IFD, wherever the format keeps EXIF: the file itself (TIFF),
  each APP1 ``Exif`` segment of a JPEG (and of every image of an MPO), a PNG
  ``eXIf`` chunk, a WebP ``EXIF`` chunk, a HEIF/AVIF ``Exif`` item (found
  through its ``iinf`` and ``iloc`` boxes). The IFD is emptied and the values
  it points at zeroed, so no coordinate is left in the bytes. Every offset is
  held to the segment, chunk or item the EXIF sits in: a malformed pointer out
  of it is ignored, never followed into the image data;
- in every XMP packet, each property whose name contains "GPS" (``exif:GPS…``,
  and the like of drone makers), as an attribute or as an element; a packet
  where "GPS" still shows after that is blanked whole;
- a compressed PNG text chunk whose text mentions GPS: its data is zeroed and
  its type renamed to a private ancillary chunk (``skIp``) that decoders skip.
  PNG chunks carry a CRC, so each chunk touched gets its CRC recomputed.

The work is a list of patches ``(offset, replacement)`` computed through a
``read_at(offset, length)`` function, so an original too large for the cache
is scrubbed while it streams: one pass to find the patches, then every chunk
served gets the patches that fall in it.
"""

from __future__ import annotations

import bisect
import itertools
import re
import zlib
from typing import BinaryIO, Iterable, Iterator

from .containers import ReadAt, heif_exif_items, png_chunks, riff_chunks

Patch = tuple[int, bytes]  # offset, replacement of the same length

_EXIF_ID = b"Exif\x00\x00"  # opens a JPEG APP1 segment's EXIF, the TIFF structure right after it
_RDF_OPEN, _RDF_CLOSE = b"<rdf:RDF", b"</rdf:RDF>"
_GPS_IFD_TAG = 0x8825
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_IFDS = 8           # IFD0, IFD1 (the thumbnail) and a few more
_MAX_ENTRIES = 1000
_MAX_VALUE = 1 << 16    # no GPS value is near this; larger ones are not ours to zero
_MAX_XMP = 8 << 20
# A real file holds a few EXIF blocks (an MPO one per image) and an XMP packet or two;
# only a crafted one holds thousands, and the work on it stays bounded: the first
# _MAX_STRUCTURES of each are scrubbed.
_MAX_STRUCTURES = 64
_MAX_FOUND = 4096
_MAX_TEXT = 8 << 20     # decompressed PNG text looked at
_SCAN_CHUNK = 1 << 20
_PNG_COMPRESSED_TEXT = (b"zTXt", b"iTXt")
_PNG_INERT_TYPE = b"skIp"  # ancillary, private, safe to copy: decoders skip it

# Bounded patterns (a property value is short; an element holds a few values at most), and
# at most _MAX_GPS_WORDS mentions are worked through one by one: a packet crafted with
# many more is blanked whole, so no packet costs more than a few ms.
_GPS_NAME = rb"[\w.-]{1,64}:[\w.-]{0,64}[Gg][Pp][Ss][\w.-]{0,64}"
_GPS_ATTRIBUTE = re.compile(rb"(?<=\s)" + _GPS_NAME + rb"\s{0,16}=\s{0,16}(?:\"[^\"]{0,4096}\"|'[^']{0,4096}')")
_GPS_ELEMENT = re.compile(rb"<(" + _GPS_NAME + rb")(?:\s[^>]{0,4096})?(?:/>|>.{0,16384}?</\1\s{0,16}>)", re.S)
_GPS_WORD = re.compile(rb"[Gg][Pp][Ss]")
_MAX_GPS_WORDS = 64


def strip_location(data: bytes, fmt: str) -> bytes:
    """``data`` (an original in format ``fmt``) without its location; the same bytes if it has none."""
    patches = location_patches(lambda start, length: data[start:start + length], len(data), fmt)
    return apply_patches(data, 0, patches) if patches else data


def location_patches(read_at: ReadAt, size: int, fmt: str) -> list[Patch]:
    """The patches that blank every location in an object of ``size`` bytes read through ``read_at``."""
    patches: dict[int, bytes] = {}
    exif_ids, opens, closes = _scan(read_at, size)
    for base, end in itertools.islice(_exif_blocks(read_at, size, fmt, exif_ids), _MAX_STRUCTURES):
        patches.update(_gps_ifd_patches(read_at, base, end))
    for start, end in itertools.islice(_packets(opens, closes), _MAX_STRUCTURES):
        patches.update(_xmp_patches(read_at(start, end - start), start))
    if fmt == "png":
        chunks = _png_patches(read_at, size, patches)  # each holds the patches inside it
        patches = {at: repl for at, repl in patches.items()
                   if not any(c <= at and at + len(repl) <= c + len(r) for c, r in chunks.items())}
        patches.update(chunks)
    return sorted(patches.items())


def apply_patches(chunk: bytes, offset: int, patches: Iterable[Patch]) -> bytes:
    """``chunk`` (the object's bytes from ``offset``) with the patches that overlap it applied."""
    end = offset + len(chunk)
    out: bytearray | None = None
    for at, repl in patches:
        lo, hi = max(at, offset), min(at + len(repl), end)
        if lo < hi:
            out = out if out is not None else bytearray(chunk)
            out[lo - offset:hi - offset] = repl[lo - at:hi - at]
    return bytes(out) if out is not None else chunk


class PatchedReader:
    """A readable stream of an object, from its start, with the patches applied as it is read."""

    def __init__(self, raw: BinaryIO, patches: list[Patch]):
        self._raw, self._patches, self._offset = raw, patches, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        out = apply_patches(chunk, self._offset, self._patches)
        self._offset += len(chunk)
        return out

    def close(self) -> None:
        self._raw.close()


# -- finding what to look at ---------------------------------------------------------------------------


def _scan(read_at: ReadAt, size: int) -> tuple[list[int], list[int], list[int]]:
    """Offsets of EXIF identifiers, of XMP RDF openings and of RDF closings, in one pass of
    overlapping chunks."""
    needles = (_EXIF_ID, _RDF_OPEN, _RDF_CLOSE)
    found: tuple[set[int], ...] = tuple(set() for _ in needles)
    overlap = max(len(n) for n in needles) - 1
    pos = 0
    while pos < size:
        chunk = read_at(pos, _SCAN_CHUNK + overlap)
        if not chunk:
            break
        for needle, offsets in zip(needles, found):
            at = chunk.find(needle)
            while at != -1 and len(offsets) < _MAX_FOUND:
                offsets.add(pos + at)
                at = chunk.find(needle, at + 1)
        pos += _SCAN_CHUNK
    exif_ids, opens, closes = (sorted(offsets) for offsets in found)
    return exif_ids, opens, closes


def _packets(opens: list[int], closes: list[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of each RDF packet: an opening and the first closing after it, no longer than
    _MAX_XMP; openings inside a packet already taken are part of it, so each byte is read once."""
    taken_to = -1
    for start in opens:
        if start < taken_to:
            continue
        at = bisect.bisect_left(closes, start)
        if at == len(closes):
            return
        end = closes[at] + len(_RDF_CLOSE)
        if end - start <= _MAX_XMP:
            yield start, end
            taken_to = end


# -- EXIF ----------------------------------------------------------------------------------------------


def _exif_blocks(read_at: ReadAt, size: int, fmt: str, exif_ids: list[int]) -> Iterator[tuple[int, int]]:
    """(start, end) of each TIFF structure holding EXIF, bounded by the segment, chunk or item
    that contains it: a malformed offset must never reach the image data around it."""
    if fmt == "tiff":
        yield 0, size
    elif fmt == "jpeg":  # each APP1 "Exif" segment, in the primary image and every MPO image
        for at in exif_ids:
            head = read_at(at - 4, 4) if at >= 4 else b""
            if head[:2] == b"\xff\xe1":
                yield at + 6, min(size, at - 2 + int.from_bytes(head[2:4], "big"))
    elif fmt == "png":
        for pos, length, type_ in png_chunks(read_at, size):
            if type_ == b"eXIf":
                yield pos + 8, pos + 8 + length
    elif fmt == "webp":
        for pos, length, fourcc in riff_chunks(read_at, size):
            if fourcc == b"EXIF":
                skip = len(_EXIF_ID) if read_at(pos + 8, len(_EXIF_ID)) == _EXIF_ID else 0
                yield pos + 8 + skip, pos + 8 + length
    elif fmt in ("heif", "avif"):  # an Exif item: a 32-bit offset to the TIFF header, then the data
        for start, length in heif_exif_items(read_at, size):
            if length > 4:
                yield start + 4 + int.from_bytes(read_at(start, 4), "big"), start + length


class _Tiff:
    """Bounded reads of one TIFF structure at ``base`` that must end by ``end`` (offsets inside
    it are relative to ``base``)."""

    def __init__(self, read_at: ReadAt, base: int, end: int):
        self.read_at, self.base, self.end = read_at, base, end
        head = read_at(base, 8)
        self.order = "big" if head[:2] == b"MM" else "little"
        self.ok = base + 8 <= end and len(head) == 8 and head[:2] in (b"MM", b"II") and self.u(head[2:4]) == 42
        self.first_ifd = self.u(head[4:8]) if self.ok else 0

    def u(self, raw: bytes) -> int:
        return int.from_bytes(raw, self.order)

    def inside(self, offset: int, length: int) -> bool:
        return offset >= 8 and self.base + offset + length <= self.end

    def ifd(self, offset: int) -> tuple[list[tuple[int, int, int, bytes]], int] | None:
        """(entries as (tag, type, count, value field), next IFD offset), or None if out of bounds."""
        if not self.inside(offset, 2):
            return None
        count = self.u(self.read_at(self.base + offset, 2))
        if count > _MAX_ENTRIES or not self.inside(offset, 2 + 12 * count + 4):
            return None
        raw = self.read_at(self.base + offset + 2, 12 * count + 4)
        entries = [(self.u(raw[i:i + 2]), self.u(raw[i + 2:i + 4]), self.u(raw[i + 4:i + 8]), raw[i + 8:i + 12])
                   for i in range(0, 12 * count, 12)]
        return entries, self.u(raw[12 * count:])


def _gps_ifd_patches(read_at: ReadAt, base: int, end: int) -> dict[int, bytes]:
    """Zeros over the GPS IFD of the TIFF structure at ``base`` and over every value it points at."""
    tiff = _Tiff(read_at, base, end)
    if not tiff.ok:
        return {}
    patches: dict[int, bytes] = {}
    offset, seen = tiff.first_ifd, set()
    while offset and offset not in seen and len(seen) < _MAX_IFDS:
        seen.add(offset)
        parsed = tiff.ifd(offset)
        if parsed is None:
            break
        entries, offset = parsed
        for tag, type_, count, value in entries:
            if tag != _GPS_IFD_TAG:
                continue
            if count == 1 and type_ in (4, 13):  # LONG or IFD: the pointer it should be
                patches.update(_blank_ifd(tiff, tiff.u(value)))
            else:  # a malformed GPS entry: whatever value it points at goes
                patches.update(_blank_value(tiff, type_, count, value))
    return patches


def _blank_value(tiff: _Tiff, type_: int, count: int, value: bytes) -> dict[int, bytes]:
    """Zeros over an entry's out-of-line value (an inline one goes with its IFD)."""
    length = _TYPE_SIZES.get(type_, 1) * count
    at = tiff.u(value)
    if 4 < length <= _MAX_VALUE and tiff.inside(at, length):
        return {tiff.base + at: bytes(length)}
    return {}


def _blank_ifd(tiff: _Tiff, offset: int) -> dict[int, bytes]:
    parsed = tiff.ifd(offset)
    if parsed is None:
        return {}
    entries, _next = parsed
    patches = {}
    for _tag, type_, count, value in entries:
        patches.update(_blank_value(tiff, type_, count, value))
    # an IFD of no entries and no successor: every reader sees an empty GPS IFD
    patches[tiff.base + offset] = bytes(2 + 12 * len(entries) + 4)
    return patches


# -- XMP -----------------------------------------------------------------------------------------------


def _xmp_patches(packet: bytes, start: int) -> dict[int, bytes]:
    """Spaces over every GPS property of the RDF packet ``packet`` found at ``start``."""
    if not _GPS_WORD.search(packet):
        return {}
    blanked = packet
    if len(_GPS_WORD.findall(packet)) <= _MAX_GPS_WORDS:
        blanked = _GPS_ELEMENT.sub(lambda m: b" " * len(m.group(0)), blanked)
        blanked = _GPS_ATTRIBUTE.sub(lambda m: b" " * len(m.group(0)), blanked)
    if _GPS_WORD.search(blanked) and b"\xff" not in packet:
        # a serialisation the patterns do not cover: the packet goes whole. XMP is
        # UTF-8, which never holds 0xFF, so such a range lies in one segment of a JPEG.
        blanked = _RDF_OPEN + b" " * (len(packet) - len(_RDF_OPEN) - len(_RDF_CLOSE)) + _RDF_CLOSE
    return {start: blanked} if blanked != packet else {}


# -- PNG -----------------------------------------------------------------------------------------------


def _png_patches(read_at: ReadAt, size: int, patches: dict[int, bytes]) -> dict[int, bytes]:
    """Compressed text chunks that mention GPS made inert, and the CRC of every chunk changed."""
    out: dict[int, bytes] = {}
    texts = 0
    for pos, length, type_ in png_chunks(read_at, size):
        data_at = pos + 8
        texts += type_ in _PNG_COMPRESSED_TEXT
        if (type_ in _PNG_COMPRESSED_TEXT and texts <= _MAX_STRUCTURES
                and _compressed_text_mentions_gps(type_, read_at(data_at, length))):
            new_type, data = _PNG_INERT_TYPE, bytes(length)
        elif any(at < data_at + length and at + len(repl) > data_at for at, repl in patches.items()):
            new_type, data = type_, apply_patches(read_at(data_at, length), data_at, patches.items())
        else:
            continue
        out[pos + 4] = new_type + data + zlib.crc32(new_type + data).to_bytes(4, "big")
    return out


def _compressed_text_mentions_gps(type_: bytes, data: bytes) -> bool:
    keyword_end = data.find(b"\x00")
    if keyword_end == -1:
        return False
    if type_ == b"zTXt":
        compressed = data[keyword_end + 2:]
    else:  # iTXt: keyword, NUL, compression flag, method, language NUL, translated keyword NUL, text
        if keyword_end + 2 >= len(data) or data[keyword_end + 1] != 1:
            return False  # uncompressed: the XMP patterns saw it
        rest = data[keyword_end + 3:]
        parts = rest.split(b"\x00", 2)
        if len(parts) < 3:
            return False
        compressed = parts[2]
    try:
        text = zlib.decompressobj().decompress(compressed, _MAX_TEXT)
    except zlib.error:
        return False
    return bool(_GPS_WORD.search(text))
