"""Failure memory: an original that failed to render is refused quickly for a while.

A hostile or broken original fails the same way every time; without this, every
page view that misses its thumbnail would burn a worker on it again. Entries
live as small files under the node's data folder, so every worker process of a
node shares them, and expire after ``ttl`` seconds (a re-tuned pipeline or a
fixed decoder gets its chance again).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Remembered:
    code: str
    message: str
    until: float


class FailureMemory:
    def __init__(self, folder: Path, ttl: float, clock: Callable[[], float] = time.time):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ttl = ttl
        self.clock = clock

    def _path(self, key: str) -> Path:
        return self.folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def remember(self, key: str, code: str, message: str) -> None:
        if self.ttl <= 0:
            return
        entry = {"key": key, "code": code, "message": message, "until": self.clock() + self.ttl}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            json.dump(entry, fh)
        os.replace(tmp, self._path(key))

    def recall(self, key: str) -> Remembered | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if entry.get("key") != key or entry.get("until", 0) <= self.clock():
            path.unlink(missing_ok=True)
            return None
        return Remembered(entry["code"], entry["message"], entry["until"])

    def forget(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
