"""Each worker process's small thread pool, for work that overlaps a request's main thread.

An upload's original is PUT while the image is validated, and the two image
decoders run side by side; all of it releases the GIL (network I/O, libvips,
Pillow). The pool is made on first use in each process, i.e. after gunicorn forks.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_pool: tuple[int, ThreadPoolExecutor] | None = None


def background() -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="bg"))
    return _pool[1]
