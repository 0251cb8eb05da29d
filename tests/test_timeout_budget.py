"""One timeout budget: every layer's limit sits inside the next one's, checked when the config loads,
and the limits that bound a storage failure (the S3 deadline, the render call's budget) hold in practice."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest

from cluster import procs
from cluster.budget import check_timeout_budget, storage_operation_seconds, storage_retry_seconds
from cluster.config import ConfigError, from_dict, load, load_dict
from magickd.client import RenderClient, RenderUnavailable
from cluster import deadline
from storage import StorageUnavailable
from storage.keys import PhotoRef
from storage.s3 import S3Store

from .helpers import deep_update, s3_settings


def config(**sections):
    return from_dict(deep_update(load_dict(), sections))


def test_the_defaults_nest_and_a_storage_failure_surfaces_in_seconds():
    cfg = load(with_secrets=False)
    check_timeout_budget(cfg)
    s3 = cfg.storage.s3
    # 3 attempts x (2 s + 5 s) + 0.2 + 0.4 s of back-off, cut to the 8 s deadline
    assert storage_retry_seconds(s3) == pytest.approx(21.6)
    assert storage_operation_seconds(cfg) == 8.0
    assert storage_operation_seconds(cfg) < cfg.ypfs.request_deadline < cfg.ypfs.timeout < cfg.hashproxy.read_timeout
    assert cfg.magickd.request_deadline < cfg.magickd.client_timeout < cfg.ypws.request_deadline < cfg.ypws.timeout
    assert cfg.ypws.timeout < cfg.hashproxy.read_timeout


def test_the_old_defaults_are_refused_naming_the_keys_and_the_sums():
    """Issue 11's set-up: S3 retries (4 x 30 s) outlasting ypfs's 60 s worker and the proxy's 60 s."""
    with pytest.raises(ConfigError) as err:
        config(storage={"s3": {"retries": 4, "connect_timeout": 5.0, "read_timeout": 30.0, "deadline": 1000.0}},
               hashproxy={"read_timeout": 60.0})
    message = str(err.value)
    assert message.startswith("ypfs.request_deadline: the timeout budget does not nest")
    assert "storage.s3.deadline = 1000" in message and "4 x (5 + 30)" in message and "= 141.4" in message
    assert "ypfs.request_deadline (25s)" in message


@pytest.mark.parametrize("sections, key, figures", [
    ({"ypfs": {"timeout": 80}}, "hashproxy.read_timeout", "ypfs.timeout (80s)"),
    ({"ypfs": {"request_deadline": 60.0}}, "ypfs.timeout", "ypfs.request_deadline (60s)"),
    ({"limits": {"decode_timeout": 30.0}}, "ypfs.request_deadline", "limits.decode_timeout (30s)"),
    ({"ypws": {"timeout": 75}}, "hashproxy.read_timeout", "ypws.timeout (75s)"),
    ({"ypws": {"request_deadline": 20.0}}, "ypws.request_deadline", "magickd.client_timeout (30s)"),
    ({"magickd": {"client_timeout": 20.0}}, "magickd.client_timeout", "magickd.request_deadline (25s)"),
    ({"magickd": {"render_timeout": 25.0}}, "magickd.request_deadline", "magickd.render_timeout (25s)"),
    ({"magickd": {"queue_wait": 60.0}}, "magickd.request_deadline", "magickd.queue_wait (60s)"),
    ({"storage": {"s3": {"deadline": 30.0, "read_timeout": 30.0}}}, "ypfs.request_deadline", "= 30s)"),
    ({"hashproxy": {"read_timeout": 60.0}}, "hashproxy.read_timeout", "ypfs.timeout (60s)"),
])
def test_each_limit_must_sit_inside_the_next(sections, key, figures):
    with pytest.raises(ConfigError) as err:
        config(**sections)
    assert str(err.value).startswith(f"{key}: the timeout budget does not nest"), str(err.value)
    assert figures in str(err.value)


@pytest.mark.parametrize("sections, figures", [
    ({"supervise": {"stop_timeout": 15.0}}, "magickd (magickd.render_timeout + 5 = 25s)"),
    ({"supervise": {"stop_timeout": 10.0}}, "ypfs and ypws (10s)"),
    ({"hashproxy": {"graceful_timeout": 40.0}}, "hashproxy (hashproxy.graceful_timeout + 2 = 42s)"),
])
def test_the_stop_timeout_outlasts_every_graceful_stop(sections, figures):
    """A node stopped by the supervisor (or systemd's TimeoutStopSec) gets its whole graceful stop:
    15 s, the old default, would SIGKILL magickd renders still allowed 20 s."""
    with pytest.raises(ConfigError) as err:
        config(**sections)
    assert str(err.value).startswith("supervise.stop_timeout: "), str(err.value)
    assert figures in str(err.value)


def test_a_short_retry_sum_counts_instead_of_a_long_deadline():
    cfg = config(storage={"s3": {"deadline": 100.0, "retries": 2, "connect_timeout": 1.0, "read_timeout": 2.0,
                                 "retry_backoff": 0.5}})
    assert storage_operation_seconds(cfg) == pytest.approx(2 * 3.0 + 0.5)


@pytest.mark.parametrize("key", ["deadline", "connect_timeout", "read_timeout"])
def test_storage_timeouts_must_be_positive(key):
    with pytest.raises(ConfigError, match=rf"^storage\.s3\.{key}: must be positive"):
        config(storage={"s3": {key: 0.0}})


def test_an_inconsistent_config_file_does_not_load(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[ypws]\ntimeout = 90\n")
    with pytest.raises(ConfigError, match=r"^hashproxy\.read_timeout: .*ypws\.timeout \(90s\)"):
        load(path, with_secrets=False)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections (the kernel's backlog) and never answers: a hung endpoint."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield sock.getsockname()[1]
    sock.close()


def test_s3_deadline_bounds_every_retry_against_a_hung_endpoint(silent_server):
    store = S3Store(s3_settings(endpoint=f"127.0.0.1:{silent_server}", access_key="a", secret_key="b",
                                  bucket="hung", retries=5, connect_timeout=2.0, read_timeout=5.0, deadline=1.5))
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable) as err:
        store.stat("photos/alice/1.json")
    took = time.monotonic() - t0
    assert took < 3.0, took  # without the deadline: 5 x 5 s of reads plus back-offs
    assert f"127.0.0.1:{silent_server}" in str(err.value)
    # the request's own deadline, if nearer, wins; once it has passed, nothing is started
    with deadline.within(0.5):
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailable):
            store.get("photos/alice/1.json")
        assert time.monotonic() - t0 < 1.5
        time.sleep(0.6)
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailable, match="deadline has passed"):
            store.get("photos/alice/1.json")
        assert time.monotonic() - t0 < 0.1
    store.close()


@pytest.fixture
def hung_part_server():
    """An S3 endpoint that starts a multipart upload and then never answers an uploaded part."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    release, seen = threading.Event(), []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:  # the bucket exists
            seen.append("HEAD")
            self._answer(200)

        def do_POST(self) -> None:  # CreateMultipartUpload (CompleteMultipartUpload never comes)
            seen.append("POST " + self.path.split("?", 1)[1])
            self._answer(200, b"<InitiateMultipartUploadResult><Bucket>hung</Bucket><Key>k</Key>"
                              b"<UploadId>u1</UploadId></InitiateMultipartUploadResult>")

        def do_PUT(self) -> None:  # UploadPart: the body is read, then no answer
            seen.append("PUT part")
            self.rfile.read(int(self.headers["Content-Length"]))
            release.wait(30)

        def do_DELETE(self) -> None:  # AbortMultipartUpload
            seen.append("DELETE")
            self._answer(204)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_s3_deadline_bounds_a_multipart_upload_part_by_part(hung_part_server):
    """A large original goes up in parts; a part the endpoint never answers ends the put within
    the operation's deadline (every part is sent from the calling thread, where the deadline is
    known), not after the read timeout of each part in minio's own upload threads."""
    port, seen = hung_part_server
    store = S3Store(s3_settings(endpoint=f"127.0.0.1:{port}", access_key="a", secret_key="b", bucket="hung",
                                part_size=5 * 1024 * 1024, retries=1, connect_timeout=2.0, read_timeout=6.0,
                                deadline=1.5))
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable):
        store.put("originals/alice/1_0123456789", io.BytesIO(b"x" * (11 * 1024 * 1024)))
    took = time.monotonic() - t0
    assert seen.count("PUT part") == 1, seen  # one part at a time
    assert seen[-1] == "DELETE", seen  # the failed upload aborted, though past the deadline
    assert took < 4.0, took  # without: 6 s of read timeout per hung part
    store.close()


def test_a_render_call_with_a_budget_ends_within_it_whatever_the_nodes_do(tmp_path):
    """ypws's missing-size render: two hung magickd nodes cost one budget, not two client timeouts."""
    silent = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(2)]
    try:
        tree = load_dict()
        tree["magickd"]["nodes"] = [{"name": f"m{i}", "host": "127.0.0.1", "port": s.getsockname()[1]}
                                    for i, s in enumerate(silent)]
        cfg = from_dict(tree)
        client = RenderClient(cfg.magickd, cfg.cluster.admin_token)
        ref = PhotoRef("alice", str(10**18 + 5), "abcdef0123")
        t0 = time.monotonic()
        with pytest.raises(RenderUnavailable) as err:
            client.render(ref, sizes=["small"], budget=2.0)
        took = time.monotonic() - t0
        assert 1.5 < took < 3.5, took
        assert "no time left for another node" in str(err.value)
        # a node that refuses at once does not spend the budget: the next one is tried
        free = procs.free_port()
        tree["magickd"]["nodes"] = [{"name": "gone", "host": "127.0.0.1", "port": free},
                                    {"name": "hung", "host": "127.0.0.1", "port": silent[0].getsockname()[1]}]
        client = RenderClient(from_dict(tree).magickd, "")
        with pytest.raises(RenderUnavailable) as err:
            client.render(ref, sizes=["small"], budget=1.5)
        assert "gone:" in str(err.value) and "hung:" in str(err.value)
    finally:
        for s in silent:
            s.close()
