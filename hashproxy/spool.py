"""Request bodies bound for ypfs, held whole (memory, then disk) before any ypfs worker sees them.

ypfs runs synchronous gunicorn workers, one request each. Streamed straight
through, a client that sends its upload's Content-Length and then trickles (or
stops) held a worker for as long as it liked: two such clients took a two-worker
ypfs down for everyone (issue 13, finding 2). So the proxy takes the whole body
first, under an overall deadline (``hashproxy.upload_deadline``), and hands it to
ypfs at loopback speed with a Content-Length (a chunked upload becomes a sized
one). A body is kept in memory up to ``MEMORY`` bytes and on disk beyond, in an
unlinked temporary file under ``{data_dir}/hashproxy/spool``; the bytes one worker
holds at once are capped by ``hashproxy.spool_bytes`` (past it: 503, try again).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

MEMORY = 1024 * 1024
BLOCK = 256 * 1024


class SpoolBudget:
    """Body bytes this worker holds at once, over every upload in progress."""

    def __init__(self, limit: int, folder: Path):
        self.limit = limit
        self.used = 0
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # uploads in flight, private photos among them

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class BodySpool:
    """One request body: appended to while it arrives, read back once to send it."""

    def __init__(self, budget: SpoolBudget):
        self.budget = budget
        self.size = 0
        self.file = tempfile.SpooledTemporaryFile(max_size=MEMORY, dir=budget.folder)

    def write(self, data: bytes) -> bool:
        """Keep ``data``; False (nothing kept) when the worker's budget would be exceeded."""
        if not self.budget.take(len(data)):
            return False
        self.file.write(data)
        self.size += len(data)
        return True

    def blocks(self) -> Iterator[bytes]:
        self.file.seek(0)
        while block := self.file.read(BLOCK):
            yield block

    def close(self) -> None:
        self.budget.give(self.size)
        self.size = 0
        self.file.close()
