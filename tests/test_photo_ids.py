"""Photo ids (storage/ids.py): unique, time-ordered, fixed-width, and worker slots held per process."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storage import ids
from storage.keys import record_key


def test_ids_unique_and_time_ordered_across_threads():
    gen = ids.IdGenerator(node_id=7, slot=3, epoch_ms=1704067200000)
    out: list[list[str]] = [[] for _ in range(8)]

    def work(i: int) -> None:
        out[i] = [gen.next_id() for _ in range(3000)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [x for chunk in out for x in chunk]
    assert len(set(every)) == len(every) == 24000
    for chunk in out:
        assert chunk == sorted(chunk, key=int)
    assert all(len(x) <= 19 and int(x) < 2**63 for x in every)


def test_ids_from_different_nodes_and_slots_never_collide():
    t = 1_800_000_000.0
    a = ids.IdGenerator(1, 0, 1704067200000, clock=lambda: t)
    b = ids.IdGenerator(2, 0, 1704067200000, clock=lambda: t)
    c = ids.IdGenerator(1, 1, 1704067200000, clock=lambda: t)
    seen = [g.next_id() for g in (a, b, c) for _ in range(500)]
    assert len(set(seen)) == 1500
    ms = int(t * 1000)  # the time an id carries, as the home page's listing window reads it
    assert ids.first_id_at(ms, 1704067200000) <= int(seen[0]) < ids.first_id_at(ms + 1, 1704067200000)


def test_ids_sort_as_text_in_time_order_for_decades():
    """Keys list as text: ids keep one width, across the point (mid-2031 at the 2024 epoch)
    where the bare Snowflake value would have grown from 18 to 19 digits."""
    epoch = 1704067200000
    moments = [1_704_067_200.001, 1_800_000_000.0, 1_942_500_000.0, 1_942_600_000.0, 1_950_000_000.0,
               2_500_000_000.0, 3_600_000_000.0]  # from the epoch to 2084
    issued = []
    for t in moments:
        gen = ids.IdGenerator(255, 15, epoch, clock=lambda t=t: t)
        issued += [gen.next_id() for _ in range(3)]
    assert {len(x) for x in issued} == {19}
    assert issued == sorted(issued) == sorted(issued, key=int)
    assert all(int(x) < 2**63 for x in issued)
    for x, t in zip(issued[::3], moments):  # each id carries the second it was issued in
        assert ids.first_id_at(int(t) * 1000, epoch) <= int(x) < ids.first_id_at(int(t) * 1000 + 1000, epoch)
    assert sorted(record_key("u", x) for x in reversed(issued)) == [record_key("u", x) for x in issued]


def test_clock_going_far_back_refuses_instead_of_repeating():
    now = [1_800_000_000.0]
    gen = ids.IdGenerator(1, 0, 1704067200000, clock=lambda: now[0])
    gen.next_id()
    now[0] -= 60
    with pytest.raises(ids.IdError):
        gen.next_id()


def test_worker_slots_are_exclusive_between_processes(tmp_path):
    """Each process holds a different slot; a dead holder frees its slot (even by SIGKILL)."""

    code = "import sys; from pathlib import Path; from storage.ids import claim_slot; " \
           "print(claim_slot(Path(sys.argv[1]))[0], flush=True); sys.stdin.read()"
    holders = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).parent.parent))
               for _ in range(3)]
    try:
        slots = [int(h.stdout.readline()) for h in holders]
        assert sorted(slots) == [0, 1, 2]
        holders[0].kill()
        holders[0].wait(10)
        slot, _fd = ids.claim_slot(tmp_path)
        assert slot == slots[0]  # the killed holder's slot, and only it, is free again
    finally:
        for h in holders:
            h.kill()
            h.wait(10)
