"""libvips settings for one render worker, set deliberately once per process.

The pool's parallelism is its processes, so each render uses ``vips_concurrency``
threads (1 by default: no oversubscription, steady latency). The operation cache
is capped in bytes; renders rarely repeat an operation, so it mostly bounds
memory. glibc gives every thread its own malloc arena, which inflates libvips'
RSS, so arenas are capped (``mallopt(M_ARENA_MAX)``, the same knob as the
``MALLOC_ARENA_MAX`` environment variable, which children also inherit).
Untrusted libvips loaders are blocked as defence in depth: the probe step
already admits only a list of formats.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import pyvips

M_ARENA_MAX = -8
ARENA_MAX = 2


def limit_malloc_arenas(arenas: int = ARENA_MAX) -> bool:
    """Cap glibc malloc arenas in this process (and what it forks); False where not glibc."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def configure(concurrency: int = 1, cache_max_mem: int = 50 * 1024 * 1024) -> None:
    pyvips.concurrency_set(max(1, concurrency))
    pyvips.cache_set_max_mem(cache_max_mem)
    pyvips.cache_set_max(100)
    pyvips.cache_set_max_files(0)
    pyvips.block_untrusted_set(True)
