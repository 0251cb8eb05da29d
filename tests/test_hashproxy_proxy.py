"""hashproxy as a real process in front of real stub nodes: pinning, headers, PURGE to ypfs, streaming, limits."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time

import pytest
import requests

from cluster.config import dump_toml, load
from cluster.ring import Ring

from .hashproxy_support import ProxyCluster, image_urls
from .helpers import Services, check_connection_cap, deep_update, service_auth

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hashproxy")
    services = Services(tmp)
    try:
        yield ProxyCluster(tmp, services, ypws=3, hashproxy={"client_timeout": 2.0, "read_timeout": 1.5}).start()
    finally:
        services.stop_all()


def served_by(base: str, urls: list[str], session: requests.Session | None = None) -> dict[str, str]:
    s = session or requests.Session()
    out = {}
    for u in urls:
        r = s.get(base + u, timeout=10)
        assert r.status_code == 200, (u, r.status_code, r.text)
        out[u] = r.headers["X-Served-By"]
    return out


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read one response (until Content-Length or close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


# -- pinning -------------------------------------------------------------------------------------------


def test_each_image_goes_to_its_ring_owner_and_keeps_x_served_by(cluster):
    ring = Ring([n.name for n in cluster.cfg.ypws.nodes])
    urls = image_urls(90)
    seen = served_by(cluster.base, urls)
    for u, node in seen.items():
        assert node == ring.owner(u.rsplit(".", 1)[0])
    assert len(set(seen.values())) == 3  # the pinning is spread, not one node
    # the same URL again, other formats, versions and spellings: the same node
    for u in urls[:20]:
        stem = u.rsplit(".", 1)[0]
        variants = [u, stem + ".webp", stem + ".avif?v=abcd1234", u.replace("/photos/", "/photos//")]
        assert set(served_by(cluster.base, variants).values()) == {seen[u]}


def test_route_cli_in_other_processes_agrees_with_the_proxy(cluster):
    urls = image_urls(4, user="bob")
    seen = served_by(cluster.base, urls)
    for u in urls:
        assert cluster.route_cli(u) == seen[u]


def test_mapping_is_the_same_in_every_worker_and_after_a_restart(cluster):
    urls = image_urls(60, user="carol")
    # a fresh connection per request, so both workers answer some of them
    before = {}
    for u in urls:
        r = requests.get(cluster.base + u, headers={"Connection": "close"}, timeout=10)
        before[u] = r.headers["X-Served-By"]
    cluster.services.stop("hashproxy")
    cluster.start_proxy()
    assert served_by(cluster.base, urls) == before


def test_forwarding_headers(cluster):
    r = requests.get(cluster.base + "/photos/dave/1_abc/small.jpg", headers={"X-Forwarded-For": "10.1.2.3"}, timeout=10)
    echoed = r.json()["headers"]
    assert echoed["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert echoed["x-forwarded-proto"] == "http"
    assert echoed["x-forwarded-host"] == f"127.0.0.1:{cluster.cfg.hashproxy.port}"
    assert echoed["via"] == "1.1 hashproxy"
    assert r.headers["Via"] == "1.1 hashproxy"
    assert r.headers["X-Served-By"] in {n.name for n in cluster.cfg.ypws.nodes}


def test_uploads_and_api_go_to_ypfs_and_pages_to_ypws(cluster):
    assert requests.post(cluster.base + "/upload", data=b"abc", timeout=10).headers["X-Served-By"] == "ypfs1"
    assert requests.get(cluster.base + "/api/photos", timeout=10).headers["X-Served-By"] == "ypfs1"
    pages = {requests.get(cluster.base + p, timeout=10).headers["X-Served-By"] for p in ("/", "/u/alice", "/upload")}
    assert pages <= {n.name for n in cluster.cfg.ypws.nodes}


def test_head_and_pipelined_requests(cluster):
    port = cluster.cfg.hashproxy.port
    status, headers, body = raw_request(port, b"HEAD /photos/a/1_abc/small.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body == b"" and "x-served-by" in headers
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /photos/a/1_abc/small.jpg HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /photos/a/2_abc/small.jpg HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    first, second = data.index(b"1_abc/small.jpg"), data.index(b"2_abc/small.jpg")
    assert first < second < data.index(b'"status":"ok"')


# -- purge ------------------------------------------------------------------------------------------------


def test_purge_goes_to_ypfs_with_its_credentials_and_to_no_cache_node(cluster):
    """A front keeps no purge state: PURGE (any /photos/ path, /photos/ itself included) is
    proxied to ypfs, which checks the token and logs the purge; no ypws node hears of it here."""
    cluster.reset_nodes()
    auth = {"Authorization": f"Bearer {cluster.cfg.cluster.admin_token}"}
    for path in ("/photos/erin/5_abc/small.webp", "/photos/erin/6_abc/", "/photos/"):
        r = requests.request("PURGE", cluster.base + path, headers=auth, timeout=10)
        assert r.status_code == 200 and r.json()["node"].startswith("ypfs"), r.text
        assert r.json()["authorization"] == auth["Authorization"]  # forwarded for ypfs to check
    assert cluster.node_stats(cluster.cfg.ypfs.nodes[0].name)["purges"] == [
        "/photos/erin/5_abc/small.webp", "/photos/erin/6_abc/", "/photos/"]
    for n in cluster.cfg.ypws.nodes:
        assert cluster.node_stats(n.name)["purges"] == []


# -- streaming ---------------------------------------------------------------------------------------------


def _worker_peak_rss_kib(cluster) -> int:
    peaks = []
    for pid in cluster.proxy_pids()[1:]:
        with open(f"/proc/{pid}/status") as fh:
            peaks += [int(l.split()[1]) for l in fh if l.startswith("VmHWM")]
    return max(peaks)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_30_mb_upload_streams_through_with_bounded_memory(cluster, chunked):
    size, block = 30 * 1024 * 1024, 256 * 1024
    pattern = bytes(range(256)) * (block // 256)
    digest = hashlib.sha256()
    for _ in range(size // block):
        digest.update(pattern)
    before = _worker_peak_rss_kib(cluster)
    conn = http.client.HTTPConnection("127.0.0.1", cluster.cfg.hashproxy.port, timeout=60)
    conn.putrequest("POST", "/upload")
    if chunked:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for _ in range(size // block):
        conn.send(b"%x\r\n%s\r\n" % (block, pattern) if chunked else pattern)
    if chunked:
        conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 200
    assert body["bytes"] == size and body["sha256"] == digest.hexdigest()
    assert resp.getheader("X-Served-By") == "ypfs1"
    # a buffered 30 MB body would show here; streaming keeps the peak within a few MB
    assert _worker_peak_rss_kib(cluster) - before < 12 * 1024


def test_chunked_and_close_delimited_responses_come_back_intact(cluster):
    s = requests.Session()
    for _ in range(3):  # on one keep-alive client connection
        r = s.get(cluster.base + "/_chunked", timeout=10)
        assert r.content == b"alpha-" + b"beta-" * 1000 + b"gamma"
        assert r.headers["Transfer-Encoding"] == "chunked"
        r = s.get(cluster.base + "/_close", timeout=10)
        assert r.content == b"until-eof-" * 500
    # an HTTP/1.0 client gets a close-delimited body back
    status, headers, body = raw_request(cluster.cfg.hashproxy.port, b"GET /_chunked HTTP/1.0\r\n\r\n")
    assert status == 200 and headers["connection"] == "close"


def test_bodies_through_the_keep_alive_pool(cluster):
    s = requests.Session()
    for i in range(30):
        r = s.get(cluster.base + f"/photos/frank/{i}_abc/large.jpg", timeout=10)
        assert r.json()["path"] == f"/photos/frank/{i}_abc/large.jpg"


# -- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, status, code", [
    (b"THIS IS NOT HTTP\r\n\r\n", 400, "bad_request"),
    (b"GET /photos/a/1_s/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_path"),
    (b"GET /photos/a/1_s/%ff%fe.jpg HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_encoding"),
    (b"GET /photos/a/1_s/%zz.jpg HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_escape"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(700)) + b"\r\n",
     431, "headers_too_large"),
    (b"POST /photos/a/1_s/small.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, "method_not_allowed"),
    (b"PURGE /u/alice HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400, "upgrade_unsupported"),
])
def test_malformed_requests_get_a_json_4xx_and_the_proxy_survives(cluster, data, status, code):
    pids = cluster.proxy_pids()
    got, headers, body = raw_request(cluster.cfg.hashproxy.port, data)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == code
    assert requests.get(cluster.base + "/healthz", timeout=10).status_code == 200
    assert cluster.proxy_pids() == pids  # no worker crashed and was replaced


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_client_that_stalls_mid_head_gets_408(cluster):
    with socket.create_connection(("127.0.0.1", cluster.cfg.hashproxy.port), timeout=10) as sock:
        sock.sendall(b"GET /photos/a/1_s/small.jpg HTTP/1.1\r\nHost: x\r\n")  # never finished
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b'"request_timeout"' in data


def test_an_upload_that_stalls_mid_body_gets_408(cluster):
    with socket.create_connection(("127.0.0.1", cluster.cfg.hashproxy.port), timeout=10) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b'"client_timeout"' in data


def test_a_node_that_does_not_answer_in_time_gives_504(cluster):
    r = requests.get(cluster.base + "/_sleep/3", timeout=20)
    assert r.status_code == 504
    assert r.json()["error"] == "upstream_timeout"


def test_node_errors_pass_through_and_are_counted(cluster):
    r = requests.get(cluster.base + "/_status/503", timeout=10)
    assert r.status_code == 503
    assert r.headers["X-Served-By"].startswith("ypws")
    metrics = requests.get(cluster.base + "/metrics", headers=service_auth(cluster.cfg), timeout=10).text
    errors = [l for l in metrics.splitlines() if l.startswith("hashproxy_upstream_errors_total{") and 'role="ypws"' in l]
    assert sum(float(l.rsplit(" ", 1)[1]) for l in errors) >= 1


def test_metrics_show_per_node_requests_and_url_share(cluster):
    served_by(cluster.base, image_urls(30, user="gina"))
    text = requests.get(cluster.base + "/metrics", headers=service_auth(cluster.cfg), timeout=10).text
    for n in cluster.cfg.ypws.nodes:
        assert f'hashproxy_upstream_requests_total{{node="{n.name}",role="ypws"}}' in text
        share = next(l for l in text.splitlines() if l.startswith(f'hashproxy_node_url_share{{node="{n.name}"}}'))
        assert 0.25 < float(share.rsplit(" ", 1)[1]) < 0.42
    assert "hashproxy_upstream_in_flight" in text


# -- node removal -------------------------------------------------------------------------------------------------


def test_connections_past_the_cap_get_503_and_the_proxy_keeps_serving(tmp_path, services):
    pc = ProxyCluster(tmp_path, services, ypws=1, hashproxy={"workers": 1, "max_connections": 3}).start()
    check_connection_cap(pc.cfg.hashproxy.port, 3)


def test_removing_a_node_from_the_config_moves_only_its_urls(tmp_path, services):
    pc = ProxyCluster(tmp_path, services, ypws=4).start()
    urls = image_urls(200, user="hank")
    before = served_by(pc.base, urls)
    assert "ypws3" in before.values()
    services.stop("hashproxy")
    tree = deep_update(pc.tree, {})
    tree["ypws"]["nodes"] = [n for n in tree["ypws"]["nodes"] if n["name"] != "ypws3"]
    path = tmp_path / "three.toml"
    path.write_text(dump_toml(tree))
    load(path)
    pc.start_proxy(config_path=path)
    after = served_by(pc.base, urls)
    ring4 = Ring(["ypws1", "ypws2", "ypws3", "ypws4"])
    for u in urls:
        if before[u] != "ypws3":
            assert after[u] == before[u]
        else:
            assert after[u] == ring4.order_names(u.rsplit(".", 1)[0])[1]
