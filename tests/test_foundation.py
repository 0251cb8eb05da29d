"""Unit tests of the shared foundation: key scheme, photo ids, records, format sniffing (config: test_config.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cluster.config import from_dict, load_dict
from storage import ids
from storage.keys import InvalidName, PhotoRef, parse_photo_segment, parse_record_key, record_key, valid_user
from storage.records import PhotoRecord, UserRecord, profile_version, rendition_url
from media.sniff import headless_heif, sniff

from .helpers import CORPUS

# -- key scheme ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "..", "a/b", "A", "-x", "a" * 33, "a\x00", "a b", "é", "../x"])
def test_invalid_user_names(name):
    with pytest.raises(InvalidName):
        valid_user(name)


def test_keys_are_built_only_from_valid_parts():
    ref = PhotoRef("alice", "123", "0123456789")
    assert ref.original_key == "originals/alice/123_0123456789"
    assert ref.record_key == "photos/alice/123.json"
    assert ref.rendition_key("small", "abcdef01", "webp") == "renditions/alice/123_0123456789/small.abcdef01.webp"
    assert ref.size_url_path("small", "jpeg") == "/photos/alice/123_0123456789/small.jpg"
    for bad in [("alice", "0123", "0123456789"), ("alice", "1", "xyz"), ("al/ice", "1", "0123456789")]:
        with pytest.raises(InvalidName):
            PhotoRef(*bad)
    with pytest.raises(InvalidName):
        ref.rendition_key("../x", "abcdef01", "jpeg")
    assert parse_record_key(record_key("bob", "42")) == ("bob", "42")
    assert parse_photo_segment("42_0123456789") == ("42", "0123456789")
    with pytest.raises(InvalidName):
        parse_photo_segment("42-0123456789")


def test_profile_version_changes_with_sharpening_only_when_params_change():
    cfg = from_dict(load_dict())
    small = cfg.size("small")
    import dataclasses

    assert profile_version(small) == profile_version(dataclasses.replace(small, variants=("webp",)))
    retuned = dataclasses.replace(small, sharpen_amount=small.sharpen_amount + 0.1)
    assert profile_version(retuned) != profile_version(small)
    ref = PhotoRef("alice", "123", "0123456789")
    assert rendition_url("http://h", ref, small).endswith(f"/small.jpg?v={profile_version(small)}")


# -- ids -------------------------------------------------------------------------------------


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
    import subprocess
    import sys

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


# -- records -----------------------------------------------------------------------------------


def test_user_tokens_are_stored_hashed():
    user = UserRecord("alice")
    token = user.new_token()
    assert token.startswith("alice.") and len(token) > 40
    assert user.check_token(token) and not user.check_token(token + "x")
    assert token not in user.to_json().decode()
    assert UserRecord.from_json(user.to_json()).check_token(token)


def test_photo_record_round_trip_ignores_unknown_fields():
    rec = PhotoRecord(id="1", owner="a", secret="0123456789", format="jpeg", width=1, height=2, bytes=3,
                      sha256="0" * 64, uploaded_at=1.0)
    raw = rec.to_json().replace(b"{", b'{"future_field": 1, ', 1)
    assert PhotoRecord.from_json(raw) == rec


# -- sniffing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,fmt", [
    ("formats/hopper.jpg", "jpeg"), ("formats/sugarshack.mpo", "jpeg"), ("formats/transparent.png", "png"),
    ("formats/transparent.gif", "gif"), ("formats/simple-rgb.webp", "webp"), ("formats/hopper.tif", "tiff"),
    ("formats/hopper.avif", "avif"), ("formats/image.heic", "heif"), ("formats/hopper.bmp", "bmp"),
    ("hostile/eps_named_as.jpg", None), ("hostile/circle.svg", None), ("hostile/psd-oob-write-overflow.psd", None),
    ("hostile/text_file_renamed.jpg", None), ("hostile/empty.jpg", None),
])
def test_sniff_by_content_not_name(name, fmt):
    assert sniff((CORPUS / name).read_bytes()[:64]) == fmt


@pytest.mark.parametrize("name,headless", [
    ("hostile/github_46_2.heic", True), ("formats/image.heic", False), ("hostile/text_file_renamed.jpg", False),
    ("hostile/empty.jpg", False), ("hostile/psd-oob-write-overflow.psd", False)])
def test_heif_boxes_without_ftyp_are_damaged_heif_not_an_unknown_format(name, headless):
    head = (CORPUS / name).read_bytes()[:64]
    assert headless_heif(head) is headless
    assert sniff(head) == ("heif" if name.startswith("formats/") else None)


# -- process helpers ---------------------------------------------------------------------------------


def test_start_ready_stops_a_child_that_never_gets_ready():
    import os
    import sys

    from cluster import procs

    port = procs.free_port()
    seen: list = []
    real_start = procs.start

    def spy(*args, **kwargs):
        seen.append(real_start(*args, **kwargs))
        return seen[-1]

    procs.start = spy
    try:
        with pytest.raises(TimeoutError):
            procs.start_ready([sys.executable, "-c", "import time; time.sleep(60)"], f"http://127.0.0.1:{port}/",
                              timeout=1.0)
    finally:
        procs.start = real_start
    assert seen and seen[0].poll() is not None  # stopped, not leaked
    with pytest.raises(ProcessLookupError):
        os.kill(seen[0].pid, 0)
