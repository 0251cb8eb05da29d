"""Hand-made JPEGs for the structure tests: legal files no encoder writes, built byte by byte."""

from __future__ import annotations

import struct


def segment(code: int, payload: bytes) -> bytes:
    return bytes([0xFF, code]) + struct.pack(">H", len(payload) + 2) + payload


def many_scan_jpeg(width: int, height: int, *, comment_between_scans: bytes = b"") -> bytes:
    """A legal greyscale progressive JPEG with 1 + 63 x 14 = 883 scans: every AC coefficient
    on its own, refined bit by bit from Al=13 down to 0, all-zero data coded as EOB runs.

    Tiny on disk, yet a decoder visits every block once per scan: the scan bomb.
    ``comment_between_scans`` goes into a COM segment after the DC scan (to check a
    walker skips segments by length rather than looking for marker bytes in them).
    """
    blocks = -(-width // 8) * -(-height // 8)
    out = bytearray(b"\xff\xd8")
    out += segment(0xDB, bytes([0]) + bytes([1] * 64))
    out += segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0]))
    out += segment(0xC4, bytes([0x00, 1] + [0] * 15 + [0]))  # DC table 0: category 0 -> '0'
    # AC table 0: EOBn (a run of 2**n + extra blocks) at code length n + 1: '0', '10', '110', ...
    out += segment(0xC4, bytes([0x10] + [1] * 15 + [0] + [n << 4 for n in range(15)]))

    def scan(ss: int, se: int, ah: int, al: int, bits: str) -> bytes:
        bits += "1" * (-len(bits) % 8)
        data = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
        return segment(0xDA, bytes([1, 1, 0x00, ss, se, (ah << 4) | al])) + data

    eob, left = "", blocks
    while left:
        run = min(left, 32767)
        n = run.bit_length() - 1
        eob += "1" * n + "0" + (format(run - (1 << n), f"0{n}b") if n else "")
        left -= run
    out += scan(0, 0, 0, 0, "0" * blocks)
    if comment_between_scans:
        out += segment(0xFE, comment_between_scans)
    for k in range(1, 64):
        out += scan(k, k, 0, 13, eob)
        for al in range(12, -1, -1):
            out += scan(k, k, al + 1, al, eob)
    return bytes(out + b"\xff\xd9")
