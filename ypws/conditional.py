"""HTTP validators and ranges as pure functions: dates, If-None-Match, If-Modified-Since, Range.

Kept apart from any framework so the event-loop hit path and the falcon app
answer conditional and partial requests the same way.
"""

from __future__ import annotations

import email.utils
from typing import Callable


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return dt.timestamp() if dt is not None else None


def etag_listed(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): does an If-None-Match value list our ETag?"""
    header = header.strip()
    if header == "*":
        return True
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def not_modified(if_none_match: str | None, if_modified_since: str | None, etag: str, last_modified: float) -> bool:
    """Whether a GET/HEAD may be answered 304. If-None-Match, when present, decides alone."""
    if if_none_match is not None:
        return etag_listed(if_none_match, etag)
    since = parse_http_date(if_modified_since)
    return since is not None and int(last_modified) <= since


class RangeError(ValueError):
    """A Range header we cannot satisfy or parse (416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a single byte range, None to send the whole body; RangeError for 416.

    Units other than bytes, and multiple ranges, are ignored (the whole body is
    sent), as RFC 9110 allows; a malformed or unsatisfiable byte range is a 416.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or (not first and not last):
        raise RangeError("malformed byte range")
    if len(first) > 19 or len(last) > 19:
        raise RangeError("byte range out of bounds")
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeError("unsatisfiable byte range")
        n = min(n, size)
        return size - n, n
    start = int(first)
    if last and int(last) < start:
        raise RangeError("malformed byte range")
    if start >= size:
        raise RangeError("unsatisfiable byte range")
    end = int(last) if last else size - 1
    end = min(end, size - 1)
    return start, end - start + 1


def if_range_matches(if_range: str | None, etag: str, last_modified: float,
                     parse_date: Callable[[str], float | None] = parse_http_date) -> bool:
    """True when a Range may be honoured given If-Range (absent, or naming the current version)."""
    if not if_range:
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag  # strong comparison
    date = parse_date(value)
    return date is not None and int(last_modified) == int(date)
