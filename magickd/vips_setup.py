"""libvips settings for one render worker, set deliberately once per process.

The pool's parallelism is its processes, so each render uses ``vips_concurrency``
threads (1 by default: no oversubscription, steady latency). The operation cache
is off by default: renders never repeat an operation, so all it did was keep the
last renders' images alive (~20 MB more peak RSS at 24 MP, bench_magickd).
glibc gives every thread its own malloc arena, which inflates libvips' RSS, so
arenas are capped (``mallopt(M_ARENA_MAX)``, the same knob as the
``MALLOC_ARENA_MAX`` environment variable, which children also inherit), and
``release_memory`` hands the heap's free pages back after a render that left the
worker above ``KEEP_RSS``, so one large original does not leave a worker's RSS
high (fragmentation) for good. Below it the pages are kept for the next render:
giving them back costs ~10% of a 4 MP render in page faults (bench_magickd).
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
KEEP_RSS = 100 * 1024 * 1024  # resident bytes a worker keeps between renders


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def limit_malloc_arenas(arenas: int = ARENA_MAX) -> bool:
    """Cap glibc malloc arenas in this process (and what it forks); False where not glibc."""
    os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas))
    mallopt = getattr(_LIBC, "mallopt", None)
    return bool(mallopt(M_ARENA_MAX, arenas)) if mallopt is not None else False


def resident_bytes() -> int:
    """This process's RSS (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_memory(keep: int = KEEP_RSS) -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``) if RSS is over ``keep``."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None or resident_bytes() <= keep:
        return False
    trim(0)
    return True


def configure(concurrency: int = 1, cache_max_mem: int = 0) -> None:
    pyvips.concurrency_set(max(1, concurrency))
    pyvips.cache_set_max_mem(cache_max_mem)
    pyvips.cache_set_max(100 if cache_max_mem > 0 else 0)
    pyvips.cache_set_max_files(0)
    pyvips.block_untrusted_set(True)
