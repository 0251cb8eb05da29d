"""Photo ids and secrets.

Yupoo's lesson: per-shard auto-increment ids collide once there are several
upload nodes. These ids need no central counter. A 63-bit integer, printed in
decimal, laid out like Twitter's Snowflake:

    41 bits  milliseconds since the configured epoch (about 69 years)
     8 bits  node id from the config (unique per ypfs node)
     4 bits  worker slot: each process holds an flock on one of 16 slot files,
             so workers of one node never share a slot, and a slot frees itself
             when its process dies, even by SIGKILL
    10 bits  sequence within the millisecond (1024 ids/ms per worker)

Ids sort by time, so a user's photos list in upload order. Store keys sort as
text, not as numbers, so every id is printed with the same 19 digits: the
Snowflake value plus ``ID_OFFSET`` (10**18). Without it the ids would grow from 18
to 19 digits in mid-2031 (at the 2024 epoch), and from then on a user's newest
photos would list before their oldest. The offset keeps the value under 2**63 for
about 62 years after the epoch. The clock going backwards is waited out (briefly)
rather than risking a repeat.

Each photo also gets a random secret (40 bits, hex) that is part of its public
URLs, so ids cannot be enumerated into photos.
"""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Callable

from cluster.locks import try_flock

NODE_BITS, SLOT_BITS, SEQ_BITS = 8, 4, 10
ID_OFFSET = 10**18  # every id has 19 decimal digits, so ids sort the same as text and as numbers
TIME_SHIFT = NODE_BITS + SLOT_BITS + SEQ_BITS  # an id's milliseconds sit above this many bits
MAX_NODE, MAX_SLOT, MAX_SEQ = (1 << NODE_BITS) - 1, (1 << SLOT_BITS) - 1, (1 << SEQ_BITS) - 1
MAX_BACKWARDS_MS = 5000


class IdError(RuntimeError):
    pass


def new_secret() -> str:
    return secrets.token_hex(5)


def claim_slot(lock_dir: Path) -> tuple[int, int]:
    """Hold an exclusive flock on a free slot file; return (slot, fd). The fd must stay open."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(MAX_SLOT + 1):
        fd = try_flock(lock_dir / f"slot-{slot}.lock")
        if fd is not None:
            return slot, fd
    raise IdError(f"all {MAX_SLOT + 1} id slots in {lock_dir} are held; too many workers on one node")


class IdGenerator:
    """Thread-safe Snowflake-style generator for one process (one node id + slot)."""

    def __init__(self, node_id: int, slot: int, epoch_ms: int, clock: Callable[[], float] = time.time):
        if not 0 <= node_id <= MAX_NODE:
            raise IdError(f"node id {node_id} out of range 0..{MAX_NODE}")
        if not 0 <= slot <= MAX_SLOT:
            raise IdError(f"slot {slot} out of range 0..{MAX_SLOT}")
        self._prefix = (node_id << (SLOT_BITS + SEQ_BITS)) | (slot << SEQ_BITS)
        self._epoch_ms = epoch_ms
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = -1
        self._seq = 0

    def _now_ms(self) -> int:
        return int(self._clock() * 1000) - self._epoch_ms

    def next_id(self) -> str:
        with self._lock:
            now = self._now_ms()
            if now < self._last_ms:
                if self._last_ms - now > MAX_BACKWARDS_MS:
                    raise IdError("clock moved backwards by more than 5 s; refusing to issue ids")
                while now < self._last_ms:
                    time.sleep(0.001)
                    now = self._now_ms()
            if now == self._last_ms:
                self._seq = (self._seq + 1) & MAX_SEQ
                if self._seq == 0:  # this millisecond is used up
                    while now <= self._last_ms:
                        now = self._now_ms()
            else:
                self._seq = 0
            self._last_ms = now
            value = ID_OFFSET + ((now << TIME_SHIFT) | self._prefix | self._seq)
            if value >= 2**63:
                raise IdError("the id space of this epoch is used up (63 bits); configure a later ids.epoch_ms")
            return str(value)


def first_id_at(unix_ms: int, epoch_ms: int) -> int:
    """The smallest id issued at ``unix_ms``: every later id is larger."""
    return ID_OFFSET + (max(0, unix_ms - epoch_ms) << TIME_SHIFT)
