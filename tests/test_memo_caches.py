"""The memo caches (functools.lru_cache, cachetools): bounded, and never a reason to serve stale data.

A memo may only save work: a revoked token stops working once the user cache's TTL has
passed, and the disk cache's read memo never serves an entry that another worker replaced
or purged, however full the memo is.
"""

from __future__ import annotations

import falcon
import falcon.testing
import pytest

from cluster.ring import Ring
from storage.local import LocalStore
from storage.records import UserRecord
from ypfs.app import TokenAuth
from ypws.diskcache import DiskCache


def test_a_revoked_token_works_only_until_the_user_cache_expires(tmp_path):
    store = LocalStore(tmp_path / "store")
    user = UserRecord("alice")
    token = user.new_token()
    user.save(store)
    now = [1000.0]
    auth = TokenAuth(store, ttl=5.0, clock=lambda: now[0])
    req = falcon.testing.create_req(headers={"Authorization": f"Bearer {token}"})
    assert auth.user(req).name == "alice"
    user.token_hashes.clear()  # revoked
    user.save(store)
    now[0] += 4.9
    assert auth.user(req).name == "alice"  # the cached record, within the TTL
    now[0] += 0.2
    with pytest.raises(falcon.HTTPError) as refused:
        auth.user(req)
    assert refused.value.status_code == 401


def test_the_read_memo_never_serves_a_replaced_or_purged_entry(tmp_path):
    root = tmp_path / "c"
    mine = DiskCache(root, 1 << 20, "s3fifo", memo_bytes=4096)
    other = DiskCache(root, 1 << 20, "s3fifo", memo_bytes=0)  # another worker of the node
    other.put("k", b"old" * 300, {"v": 1})
    assert mine.get("k").body == b"old" * 300  # now in mine's memo
    other.purge(["k"])
    assert mine.get("k") is None
    other.put("k", b"new" * 300, {"v": 2})
    assert mine.get("k").meta == {"v": 2} and bytes(mine.get("k").body) == b"new" * 300


def test_the_read_memo_stays_within_its_bytes_and_keeps_the_latest(tmp_path):
    cache = DiskCache(tmp_path / "c", 1 << 20, "s3fifo", memo_bytes=10_000)
    for i in range(40):
        cache.put(f"k{i}", bytes([i]) * 1000, {"i": i})
        assert cache.get(f"k{i}").meta == {"i": i}
    assert 0 < cache._memo.currsize <= 10_000
    assert "k39" in cache._memo and "k0" not in cache._memo  # least recently used out first
    assert all(bytes(cache.get(f"k{i}").body) == bytes([i]) * 1000 for i in range(40))
    big = DiskCache(tmp_path / "d", 1 << 20, "s3fifo", memo_bytes=500)  # an entry larger than the memo
    big.put("k", b"x" * 1000, {})
    assert bytes(big.get("k").body) == b"x" * 1000 and big._memo.currsize == 0


def test_ring_orders_are_the_same_memoised_or_not():
    ring = Ring(["a", "b", "c", "d"])
    keys = [f"/photos/u/{i}_abcdef0123/small" for i in range(500)]
    first = [ring.order(k) for k in keys]
    assert first == [ring.order(k) for k in keys] == [ring._order(k) for k in keys]
    assert sorted(first[0]) == [0, 1, 2, 3]
    assert {o[0] for o in first} == {0, 1, 2, 3}
