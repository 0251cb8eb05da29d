"""`ypfs gc`: objects no photo record reaches go, once old enough; everything reachable stays.

Against both stores (the local one and S3 on a real SeaweedFS), then the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from storage.keys import PhotoRef, dedupe_key
from storage.records import PhotoRecord
from ypfs.gc import sweep

from .helpers import REPO, cluster_tree, write_config

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64
HOUR = 3600.0


def _photo(store, user: str, photo_id: str, secret: str, sha: str) -> PhotoRef:
    """A whole photo as ypfs and magickd leave it: record, original, two renditions, duplicate entry."""
    rec = PhotoRecord(id=photo_id, owner=user, secret=secret, format="jpeg", width=10, height=10, bytes=3,
                      sha256=sha, uploaded_at=time.time())
    ref = rec.ref
    store.put(ref.original_key, b"jpg")
    store.put(ref.rendition_key("small", "0123abcd", "jpeg"), b"r1")
    store.put(ref.rendition_key("medium", "0123abcd", "jpeg"), b"r2")
    store.put(dedupe_key(user, sha), json.dumps({"id": photo_id}).encode())
    rec.save(store)
    return ref


def _garden(store) -> tuple[set[str], set[str]]:
    """(keys that must stay, keys that are garbage)."""
    kept = _photo(store, "ann", "1001", "0123456789", SHA_A)
    gone = _photo(store, "ann", "1002", "abcdef0123", SHA_B)
    store.delete(gone.record_key)  # a delete cut short after its commit point
    stale = PhotoRef("ann", "1001", "ffffffffff")  # right photo, wrong secret: nothing serves it
    store.put(stale.original_key, b"x")
    store.put(dedupe_key("bob", SHA_C), json.dumps({"id": "999"}).encode())  # names a photo never stored
    store.put("dedupe/bob/" + "d" * 64 + ".json", b"not json")
    keep = {kept.record_key, kept.original_key, dedupe_key("ann", SHA_A), *store.list(kept.rendition_prefix),
            "users/ann.json"}
    store.put("users/ann.json", b"{}")  # outside what gc walks
    garbage = {gone.original_key, *store.list(gone.rendition_prefix), dedupe_key("ann", SHA_B), stale.original_key,
               dedupe_key("bob", SHA_C), "dedupe/bob/" + "d" * 64 + ".json"}
    return keep, garbage


def _all_keys(store) -> set[str]:
    return {k for prefix in ("originals/", "renditions/", "dedupe/", "photos/", "users/") for k in store.list(prefix)}


def test_young_garbage_is_kept_and_old_garbage_removed(store):
    keep, garbage = _garden(store)
    assert len(garbage) == 7 and keep | garbage <= _all_keys(store)

    young = sweep(store, grace=HOUR)  # an upload in flight looks exactly like this: nothing may go
    assert (young.orphans, young.young, young.removed) == ([], 7, 0)
    assert garbage <= _all_keys(store)

    dry = sweep(store, grace=HOUR, dry_run=True, now=time.time() + 2 * HOUR)
    assert set(dry.orphans) == garbage and dry.removed == 0 and garbage <= _all_keys(store)

    done = sweep(store, grace=HOUR, now=time.time() + 2 * HOUR)
    assert set(done.orphans) == garbage and done.removed == 7 and done.examined == 11  # 3 originals, 4 renditions, 4 duplicate entries
    assert _all_keys(store) & garbage == set()
    assert keep <= _all_keys(store)
    assert sweep(store, grace=HOUR, now=time.time() + 2 * HOUR).orphans == []  # nothing left to find


def test_gc_command_lists_then_removes(tmp_path):
    cfg, path = write_config(tmp_path, cluster_tree(tmp_path))
    from storage import open_store

    store = open_store(cfg.storage, cfg.local_root)
    keep, garbage = _garden(store)
    cli = [sys.executable, "-m", "ypfs", "--config", str(path), "gc", "--quiet", "--grace-minutes", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    dry = subprocess.run([*cli, "--dry-run"], capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert dry.returncode == 0, dry.stderr
    assert {line.split(" ", 2)[2] for line in dry.stdout.splitlines() if line.startswith("would remove ")} == garbage
    assert garbage <= _all_keys(store)
    real = subprocess.run(cli, capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert real.returncode == 0 and "7 unreachable (7 removed)" in real.stdout, real.stdout + real.stderr
    assert _all_keys(store) & garbage == set() and keep <= _all_keys(store)


def test_gc_against_an_unreachable_store_is_a_clear_error(tmp_path):
    tree = cluster_tree(tmp_path)
    tree["storage"] = {"backend": "s3", "s3": {"endpoint": "127.0.0.1:1", "access_key": "a", "secret_key": "b",
                                               "bucket": "nowhere", "retries": 1}}
    _, path = write_config(tmp_path, tree)
    out = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "gc", "--quiet"], capture_output=True,
                         text=True, cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 1 and out.stderr.startswith("storage error: ") and "Traceback" not in out.stderr
