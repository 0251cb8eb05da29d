"""The blob-store contract: the same tests against the local store and S3 on a real SeaweedFS."""

from __future__ import annotations

import io
import os
import threading

import pytest

from storage import AlreadyExists, Conflict, NotFound, StorageAuthError, StorageError, StorageUnavailable
from storage.local import LocalStore
from storage.s3 import S3Store

from .helpers import s3_settings


# the ``store`` fixture (local, and S3 on the session's SeaweedFS) lives in conftest.py


def test_put_get_roundtrip(store):
    info = store.put("a/b/c.bin", b"hello world")
    assert info.size == 11 and info.key == "a/b/c.bin"
    assert store.get("a/b/c.bin") == b"hello world"
    stat = store.stat("a/b/c.bin")
    assert stat.size == 11
    # what put answers (S3: from the PUT's own response, no HEAD) is what stat says
    assert info.etag == stat.etag and abs(info.mtime - stat.mtime) <= 2
    assert store.exists("a/b/c.bin")


def test_overwrite_replaces_whole_object(store):
    store.put("k/x", b"first version, long")
    store.put("k/x", b"second")
    assert store.get("k/x") == b"second"


def test_missing_key_raises_not_found(store):
    with pytest.raises(NotFound):
        store.get("nope/missing")
    with pytest.raises(NotFound):
        store.stat("nope/missing")
    with pytest.raises(NotFound):
        store.open("nope/missing")
    assert not store.exists("nope/missing")


def test_stream_put_and_open(store):
    payload = os.urandom(300_000)
    store.put("s/stream", io.BytesIO(payload))
    with store.open("s/stream") as fh:
        assert fh.read(1000) == payload[:1000]
        assert fh.read() == payload[1000:]


def test_large_object_multipart(store):
    payload = os.urandom(12 * 1024 * 1024 + 123)  # > two 5 MiB parts on S3
    store.put("big/object", io.BytesIO(payload))
    assert store.stat("big/object").size == len(payload)
    assert store.get("big/object") == payload


def test_copy_replaces_the_destination_and_stands_alone(store):
    payload = os.urandom(6 * 1024 * 1024 + 7)  # a multipart original on S3
    store.put("c/src.jpg", io.BytesIO(payload), "image/jpeg")
    store.put("c/dst/old.jpg", b"replaced")
    store.copy("c/src.jpg", "c/dst/old.jpg")
    store.copy("c/src.jpg", "c/fresh/new.jpg")
    assert store.get("c/dst/old.jpg") == payload and store.get("c/fresh/new.jpg") == payload
    store.delete("c/src.jpg")  # the copies stand alone
    assert store.get("c/fresh/new.jpg") == payload and not store.exists("c/src.jpg")
    assert list(store.list("c/")) == ["c/dst/old.jpg", "c/fresh/new.jpg"]  # no temporary left listed
    with pytest.raises(NotFound):
        store.copy("c/missing.jpg", "c/never.jpg")
    assert not store.exists("c/never.jpg")


def test_replace_writes_only_over_the_version_read(store):
    store.put("cas/rec.json", b'{"title": "one"}', "application/json")
    data, etag = store.get_versioned("cas/rec.json")
    assert data == b'{"title": "one"}' and etag
    info = store.replace("cas/rec.json", b'{"title": "two"}', etag, "application/json")
    assert store.get_versioned("cas/rec.json") == (b'{"title": "two"}', info.etag) and info.etag != etag
    with pytest.raises(Conflict):  # a second writer that read "one" must not overwrite "two"
        store.replace("cas/rec.json", b'{"title": "stale"}', etag, "application/json")
    assert store.get("cas/rec.json") == b'{"title": "two"}'
    store.put("cas/rec.json", b'{"title": "2"}')  # another writer's plain put is a new version too
    with pytest.raises(Conflict):
        store.replace("cas/rec.json", b'{"title": "three"}', info.etag)
    _, etag = store.get_versioned("cas/rec.json")
    store.delete("cas/rec.json")
    with pytest.raises(Conflict):  # a deleted object is not brought back
        store.replace("cas/rec.json", b'{"title": "undead"}', etag)
    assert not store.exists("cas/rec.json") and list(store.list("cas/")) == []
    with pytest.raises(NotFound):
        store.get_versioned("cas/rec.json")


def test_get_range(store):
    store.put("r/x", bytes(range(256)))
    assert store.get_range("r/x", 10, 5) == bytes(range(10, 15))
    assert store.get_range("r/x", 250, 100) == bytes(range(250, 256))


def test_delete_is_idempotent(store):
    store.put("d/x", b"1")
    store.delete("d/x")
    store.delete("d/x")
    assert not store.exists("d/x")


def test_list_sorted_with_prefix_and_start_after(store):
    keys = ["p/u1/3.json", "p/u1/1.json", "p/u2/2.json", "p/u10/1.json", "q/other", "p.json"]
    for k in keys:
        store.put(k, b"x")
    assert list(store.list("p/")) == sorted(k for k in keys if k.startswith("p/"))
    assert list(store.list("p/u1/")) == ["p/u1/1.json", "p/u1/3.json"]
    assert list(store.list("p/", start_after="p/u1/3.json")) == ["p/u10/1.json", "p/u2/2.json"]
    assert list(store.list("zzz/")) == []


def test_put_if_absent(store):
    store.put_if_absent("once/k", b"a")
    with pytest.raises(AlreadyExists):
        store.put_if_absent("once/k", b"b")
    assert store.get("once/k") == b"a"


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "a//b", "", "a/\x00", "a/b\n", "x" * 600])
def test_bad_keys_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x")


def test_concurrent_writers_never_expose_partial_objects(store):
    """Readers racing writers of one key see a whole version every time."""
    versions = [bytes([i]) * 200_000 for i in range(4)]
    store.put("race/k", versions[0])
    stop = threading.Event()
    bad: list[int] = []

    def writer(i: int) -> None:
        for _ in range(5):
            store.put("race/k", versions[i])

    def reader() -> None:
        while not stop.is_set():
            data = store.get("race/k")
            if data not in versions:
                bad.append(len(data))

    r = threading.Thread(target=reader)
    r.start()
    ws = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for w in ws:
        w.start()
    for w in ws:
        w.join(60)
    stop.set()
    r.join(60)
    assert bad == []


def test_local_store_leaves_no_temp_files_visible(tmp_path):
    s = LocalStore(tmp_path)
    s.put("a/b", b"x")
    (tmp_path / "a" / ".tmp-crashed").write_bytes(b"partial")  # as a crash mid-write would leave
    assert list(s.list("a/")) == ["a/b"]


@pytest.mark.s3
def test_s3_bad_credentials_is_a_clear_error(seaweed):
    s = S3Store(s3_settings(endpoint=seaweed.endpoint, access_key="wrong", secret_key="wrong", bucket="nobody"))
    with pytest.raises(StorageAuthError, match="refused the credentials"):
        s.put("x/y", b"1")


def test_s3_unreachable_endpoint_is_a_clear_error():
    sleeps: list[float] = []
    s = S3Store(s3_settings(endpoint="127.0.0.1:1", access_key="a", secret_key="b", bucket="nobody",
                              retries=3, retry_backoff=0.1, connect_timeout=0.5), sleep=sleeps.append)
    with pytest.raises(StorageUnavailable, match="127.0.0.1:1 unreachable"):
        s.get("x/y")
    assert sleeps == [0.1, 0.2]  # retried with exponential back-off


def test_s3_invalid_bucket_name_is_a_clear_error():
    with pytest.raises(StorageError, match="bucket"):
        S3Store(s3_settings(endpoint="127.0.0.1:1", bucket="x"))


@pytest.mark.s3
def test_s3_listing_resumes_after_a_transient_failure_instead_of_ending_early(seaweed):
    """A connection error in the middle of a listing must not silently truncate it."""
    import urllib3

    s = S3Store(s3_settings(endpoint=seaweed.endpoint, access_key=seaweed.access_key, secret_key=seaweed.secret_key,
                              bucket=f"resume-{os.urandom(4).hex()}", retry_backoff=0.01), sleep=lambda _: None)
    keys = [f"l/{i:04d}" for i in range(30)]
    for k in keys:
        s.put(k, b"x")
    real = s.client.list_objects
    calls = []

    def flaky(*args, **kwargs):  # the first listing dies after 10 objects, as a dropped connection would
        calls.append(kwargs.get("start_after"))
        it = real(*args, **kwargs)
        if len(calls) == 1:
            def broken():
                for n, obj in enumerate(it):
                    if n == 10:
                        raise urllib3.exceptions.ProtocolError("connection dropped")
                    yield obj
            return broken()
        return it

    s.client.list_objects = flaky
    assert list(s.list("l/")) == keys
    assert calls == [None, "l/0009"]  # resumed after the last key it had yielded


@pytest.mark.s3
def test_s3_listing_crosses_page_boundaries(seaweed, monkeypatch):
    import storage.s3

    monkeypatch.setattr(storage.s3, "LIST_PAGE", 7)
    s = S3Store(s3_settings(endpoint=seaweed.endpoint, access_key=seaweed.access_key, secret_key=seaweed.secret_key,
                              bucket=f"pages-{os.urandom(4).hex()}"))
    keys = [f"p/{i:03d}" for i in range(30)] + ["q/other"]
    for k in keys:
        s.put(k, b"x")
    assert list(s.list("p/")) == keys[:30]
    assert list(s.list("p/", start_after="p/013")) == keys[14:30]
    assert list(s.list("")) == keys


@pytest.mark.s3
def test_s3_get_retries_a_body_cut_off_midway(seaweed):
    import urllib3

    s = S3Store(s3_settings(endpoint=seaweed.endpoint, access_key=seaweed.access_key, secret_key=seaweed.secret_key,
                              bucket=f"cut-{os.urandom(4).hex()}", retry_backoff=0.01), sleep=lambda _: None)
    payload = os.urandom(100_000)
    s.put("c/x", payload)
    real = s.client.get_object
    calls = []

    def flaky(*args, **kwargs):
        resp = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            def cut(*a, **k):
                raise urllib3.exceptions.ProtocolError("connection broken mid-body")
            resp.read = cut
        return resp

    s.client.get_object = flaky
    assert s.get("c/x") == payload
    assert len(calls) == 2
