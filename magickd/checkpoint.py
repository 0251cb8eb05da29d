"""Resume state of an admin job: where it got to and what failed, in one small JSON file.

The file name is derived from the job's arguments (and the profile version it
renders), so re-running the same command resumes, while a different command or
a re-tuned profile starts its own job. Written atomically (temp file + rename),
so a crash at any moment leaves the previous state, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Checkpoint:
    path: Path
    job: dict[str, Any]
    last_key: str = ""           # every photo record key <= this one is done
    done: int = 0
    rendered: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # photo record key -> reason
    purge_failures: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    updated_at: float = 0.0

    @staticmethod
    def path_for(folder: Path, job: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:16]
        return Path(folder) / f"{job.get('command', 'job')}-{digest}.json"

    @classmethod
    def open(cls, folder: Path, job: dict[str, Any], restart: bool = False) -> "Checkpoint":
        path = cls.path_for(folder, job)
        if restart or not path.exists():
            return cls(path=path, job=job)
        raw = json.loads(path.read_text())
        raw.pop("path", None)
        return cls(path=path, **{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})

    def save(self) -> None:
        self.updated_at = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["path"] = str(self.path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
