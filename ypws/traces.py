"""The real request traces the cache policies are measured on, read where they are kept.

The traces live beside the repository in ``../shared/traces`` (see its PROVENANCE.md)
and are never copied in; their own ``read_trace.py`` parses the original files. Here
each becomes what the replay needs: a list of dense object ids, one per request, and
each object's size, with the conventions of PROVENANCE.md (an object's size is the
largest positive size logged for its key; requests to keys that never show one are
left out).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: ../shared/traces relative to the repository root
TRACES_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
#: the traces with enough reuse for hit ratios (tencent_photo has almost none: sizes only)
HIT_RATIO_TRACES = ("wc98_day6", "bu98")


def available() -> bool:
    return (TRACES_DIR / "read_trace.py").is_file()


def _reader():
    spec = importlib.util.spec_from_file_location("shared_read_trace", TRACES_DIR / "read_trace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_trace


def load(name: str) -> tuple[list[int], list[int]]:
    """(object id per request, size per object id) of one shared trace."""
    requests = [(key, size) for _ts, key, size in _reader()(name)]
    largest: dict = {}
    for key, size in requests:
        if size and size > largest.get(key, 0):
            largest[key] = size
    ids: dict = {}
    trace = [ids.setdefault(key, len(ids)) for key, _size in requests if key in largest]
    sizes = [0] * len(ids)
    for key, i in ids.items():
        sizes[i] = largest[key]
    return trace, sizes
