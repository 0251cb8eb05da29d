"""Walking the containers images come in, far enough to find their metadata blocks.

Each walker reads through a ``read_at(offset, length)`` function (so it works on
bytes in memory and on an object in storage alike), checks every length against
the end of what holds it, and stops at the first thing out of place: it yields
what it could read, never raises on damaged input.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

ReadAt = Callable[[int, int], bytes]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_ENTRIES = 4096   # items, extents, boxes read from one container
MAX_BOX = 8 << 20    # the largest iloc box read


def png_chunks(read_at: ReadAt, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset of the chunk, data length, type) for each chunk of a PNG."""
    if read_at(0, 8) != PNG_SIGNATURE:
        return
    pos = 8
    while pos + 12 <= size:
        head = read_at(pos, 8)
        length, type_ = int.from_bytes(head[:4], "big"), head[4:8]
        if pos + 12 + length > size:
            return
        yield pos, length, type_
        if type_ == b"IEND":
            return
        pos += 12 + length


def riff_chunks(read_at: ReadAt, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset of the chunk, data length, fourcc) for each top-level chunk of a WebP."""
    head = read_at(0, 12)
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return
    pos = 12
    while pos + 8 <= size:
        h = read_at(pos, 8)
        length = int.from_bytes(h[4:8], "little")
        if pos + 8 + length > size:
            return
        yield pos, length, h[:4]
        pos += 8 + length + (length & 1)


def _boxes(read_at: ReadAt, start: int, end: int) -> Iterator[tuple[int, int, bytes]]:
    """(payload start, box end, type) of each ISOBMFF box between ``start`` and ``end``."""
    pos = start
    while pos + 8 <= end:
        h = read_at(pos, 16)
        length, type_, header = int.from_bytes(h[:4], "big"), h[4:8], 8
        if length == 1:
            length, header = int.from_bytes(h[8:16], "big"), 16
        elif length == 0:
            length = end - pos
        if length < header or pos + length > end:
            return
        yield pos + header, pos + length, type_
        pos += length


class _Fields:
    """Big-endian fields read in order from one box payload; IndexError past its end."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> int:
        if self.pos + n > len(self.data):
            raise IndexError
        value = int.from_bytes(self.data[self.pos:self.pos + n], "big")
        self.pos += n
        return value


def heif_exif_items(read_at: ReadAt, size: int) -> list[tuple[int, int]]:
    """(file offset, length) of each single-extent Exif item of a HEIF/AVIF file."""
    meta = next(((s, e) for s, e, t in _boxes(read_at, 0, size) if t == b"meta"), None)
    if meta is None:
        return []
    ids: set[int] = set()
    locations: dict[int, tuple[int, list[tuple[int, int]]]] = {}
    idat = None
    try:
        for start, end, type_ in _boxes(read_at, meta[0] + 4, meta[1]):  # meta is a FullBox
            if type_ == b"iinf":
                ids = _exif_item_ids(read_at, start, end)
            elif type_ == b"iloc" and end - start <= MAX_BOX:
                locations = _item_locations(_Fields(read_at(start, end - start)))
            elif type_ == b"idat":
                idat = start
    except IndexError:  # a truncated box: no EXIF found, nothing touched
        return []
    items = []
    for item in ids:
        method, extents = locations.get(item, (0, []))
        if len(extents) == 1 and (method == 0 or (method == 1 and idat is not None)):
            offset, length = extents[0]
            offset += idat if method == 1 else 0
            if offset + length <= size:
                items.append((offset, length))
    return items


def _exif_item_ids(read_at: ReadAt, start: int, end: int) -> set[int]:
    version = read_at(start, 1)[:1]
    first = start + 4 + (2 if version == b"\x00" else 4)  # FullBox, then the entry count
    ids = set()
    for pos, box_end, type_ in itertools.islice(_boxes(read_at, first, end), MAX_ENTRIES):
        if type_ != b"infe":
            continue
        f = _Fields(read_at(pos, min(box_end - pos, 16)))
        version = f.take(1)
        f.take(3)
        if version >= 2:
            item_id = f.take(2 if version == 2 else 4)
            f.take(2)  # protection index
            if f.take(4) == int.from_bytes(b"Exif", "big"):
                ids.add(item_id)
    return ids


def _item_locations(f: _Fields) -> dict[int, tuple[int, list[tuple[int, int]]]]:
    """item id -> (construction method, [(offset, length)]) from an iloc payload."""
    version = f.take(1)
    f.take(3)
    sizes = f.take(1)
    offset_size, length_size = sizes >> 4, sizes & 15
    sizes = f.take(1)
    base_offset_size, index_size = sizes >> 4, (sizes & 15) if version in (1, 2) else 0
    out = {}
    for _ in range(min(f.take(2 if version < 2 else 4), MAX_ENTRIES)):
        item_id = f.take(2 if version < 2 else 4)
        method = f.take(2) & 15 if version in (1, 2) else 0
        f.take(2)  # data reference index
        base = f.take(base_offset_size)
        extents = []
        for _ in range(min(f.take(2), MAX_ENTRIES)):
            f.take(index_size)
            extents.append((base + f.take(offset_size), f.take(length_size)))
        out[item_id] = (method, extents)
    return out
