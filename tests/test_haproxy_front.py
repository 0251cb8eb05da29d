"""HAProxy as the front: `python -m hashproxy haproxy-config` output, checked by `haproxy -c` and run for real.

The unit tests check the generated text (what the lead and an operator rely on:
routing key, consistent hashing with bounded loads, health checks, limits, no
secrets) and that HAProxy 2.6 accepts it. The real-process test runs a small real
cluster on loopback (magickd, ypfs, three ypws) behind Debian's `haproxy -db`
started from the generated file, and goes through it as a client would.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

from cluster import procs
from cluster.config import ConfigError, NodeConfig
from hashproxy.haproxy import READY_PATH, ROUTE_KEY_HEADER, render as render_sections
from storage.keys import IMAGE_ROUTE_REGEX, image_route_key

from .helpers import CORPUS, REPO, cluster_tree, deep_update, write_config
from .ypws_support import access_lines, raw_http, wait_for

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
SECRETS = {"admin_token": "adm-SECRET-token-1234567890", "url_key": "url-SECRET-key-0987654321"}
S3_SECRET = "s3-SECRET-key-abcdefabcdef"


def render(cfg, check_path: str = READY_PATH) -> str:
    """`python -m hashproxy haproxy-config`'s output for ``cfg`` (the sections it takes, unpacked)."""
    return render_sections(cfg.hashproxy, cfg.ypws.nodes, cfg.ypfs.nodes, check_path)


def need_haproxy() -> None:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is not installed (tests/sysdeps.sh installs Debian's package when run as root)")


def haproxy_check(path: Path) -> str:
    out = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def config(tmp_path: Path, ypws: int = 3, ypfs: int = 2, overrides: dict | None = None):
    over = {"cluster": dict(SECRETS), "storage": {"s3": {"secret_key": S3_SECRET, "access_key": "ak"}},
            **(overrides or {})}
    return write_config(tmp_path, cluster_tree(tmp_path, ypws_nodes=ypws, ypfs_nodes=ypfs, overrides=over))


def section(text: str, header: str) -> list[str]:
    """The stripped lines of one section ("backend ypfs") of a generated config."""
    lines = text.splitlines()
    start = lines.index(header) + 1
    end = next((i for i in range(start, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
    return [line.strip() for line in lines[start:end] if line.strip()]


# -- the generated text -------------------------------------------------------------------


def test_generated_config_routes_like_hashproxy_and_haproxy_accepts_it(tmp_path):
    cfg, _ = config(tmp_path, overrides={"hashproxy": {"host": "127.0.0.1", "connect_timeout": 1.5,
                                                       "client_timeout": 20.0, "read_timeout": 80.0,
                                                       "health_interval": 0.5, "fail_threshold": 3}})
    text = render(cfg)
    s = cfg.hashproxy
    front = section(text, "frontend front")
    assert f"bind 127.0.0.1:{s.port}" in front
    assert "option forwardfor" in front
    assert "use_backend ypfs if purge" in front
    assert "use_backend ypfs if { path /api } || { path_beg /api/ } || { path /upload } METH_POST" in front
    assert "default_backend ypws_pages" in front
    defaults = section(text, "defaults")
    assert {"timeout connect 1500ms", "timeout client 20000ms", "timeout server 80000ms"} <= set(defaults)
    assert any(line.startswith("http-error status 503 ") and line.endswith("hdr Retry-After 1") for line in defaults)

    images = section(text, "backend ypws_images")
    assert "hash-type consistent" in images and "hash-balance-factor 125" in images
    assert "balance hash var(txn.route_key),xxh64" in images
    assert f"http-check send meth GET uri {READY_PATH} ver HTTP/1.1 hdr Host haproxy-check" in images
    assert any("inter 500ms fall 3 rise 1" in line for line in images)
    servers = [line.split() for line in images if line.startswith("server ")]
    assert [(w[1], w[2]) for w in servers] == [(n.name, n.bind) for n in cfg.ypws.nodes]
    pages = section(text, "backend ypws_pages")
    assert "balance leastconn" in pages and sum(line.startswith("server ") for line in pages) == 3
    ypfs = section(text, "backend ypfs")
    assert "balance leastconn" in ypfs
    assert [line.split()[2] for line in ypfs if line.startswith("server ")] == [n.bind for n in cfg.ypfs.nodes]

    for secret in (*SECRETS.values(), S3_SECRET):
        assert secret not in text
    v6 = cfg.replace(ypfs=dataclasses.replace(cfg.ypfs, nodes=(NodeConfig(name="ypfs1", host="::1", port=8101),)))
    assert "server ypfs1 [::1]:8101 id " in render(v6)
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    need_haproxy()
    out = haproxy_check(path)
    assert "WARNING" not in out and "ALERT" not in out, out


def test_balance_factor_and_check_path_and_limits(tmp_path):
    cfg, _ = config(tmp_path, overrides={"hashproxy": {"balance_factor": 2.0, "max_header_bytes": 32768,
                                                       "max_request_line": 4096}})
    text = render(cfg, "/healthz")
    assert "hash-balance-factor 200" in text and "uri /healthz " in text and f"uri {READY_PATH}" not in text
    bufsize = int(next(line.split()[1] for line in section(text, "global") if line.startswith("tune.bufsize")))
    assert 4096 + 32768 + 1024 <= bufsize < 4096 + 32768 + 4096   # the whole head fits, with HAProxy's rewrite reserve

    def with_factor(factor: float):
        return cfg.replace(hashproxy=dataclasses.replace(cfg.hashproxy, balance_factor=factor))

    assert "hash-balance-factor 0" in render(with_factor(0))
    with pytest.raises(ConfigError, match="balance_factor"):
        render(with_factor(1.0))
    with pytest.raises(ConfigError, match="check-path"):
        render(cfg, "readyz")


def test_server_ids_follow_node_names_not_positions(tmp_path):
    """Ring points derive from server ids: same name, same id, whatever the order or the other nodes."""
    cfg, _ = config(tmp_path, ypws=4)

    def ids(c) -> dict[str, str]:
        return {w[1]: w[w.index("id") + 1] for w in (line.split() for line in section(render(c), "backend ypws_images"))
                if w[0] == "server"}

    before = ids(cfg)
    shuffled = dataclasses.replace(cfg.ypws, nodes=tuple(reversed(cfg.ypws.nodes[1:])))  # reordered, ypws1 removed
    after = ids(cfg.replace(ypws=shuffled))
    assert after == {name: sid for name, sid in before.items() if name != "ypws1"}
    assert len(set(before.values())) == 4 and all(0 < int(v) < 2**20 for v in before.values())
    bad = dataclasses.replace(cfg.ypws, nodes=(NodeConfig(name="ypws one", port=1),))
    with pytest.raises(ConfigError, match="ypws one"):
        render(cfg.replace(ypws=bad))


def test_image_paths_and_routing_key_match_urls_module():
    import re

    from hashproxy.haproxy import ROUTE_KEY_EXPR

    strip = re.compile(ROUTE_KEY_EXPR.split("regsub(", 1)[1].split(",", 1)[0])
    for path in ["/photos/alice/100_abcdef0123/small.jpg", "/photos/alice/100_abcdef0123/small",
                 "/photos/alice/100_abcdef0123/medium.tar.webp", "/photos/a/b/.hidden", "/photos/a/b/",
                 "/photos/a/b/c/d.jpg", "/photos/a//x.jpg", "/u/alice", "/photos/alice/1_s/original.jpeg"]:
        is_image = re.match(IMAGE_ROUTE_REGEX, path) is not None
        assert is_image == (image_route_key(path) is not None), path
        if is_image:
            assert strip.sub("", path, count=1) == image_route_key(path), path


def test_cli_prints_the_config_without_secrets(tmp_path):
    cfg, path = config(tmp_path)
    run = subprocess.run([sys.executable, "-m", "hashproxy", "haproxy-config", "--config", str(path),
                          "--check-path", "/healthz"], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout == render(cfg, "/healthz")
    assert not any(secret in run.stdout + run.stderr for secret in (*SECRETS.values(), S3_SECRET))
    assert not (tmp_path / "var" / "secrets.toml").exists()  # nothing generated either
    bad = subprocess.run([sys.executable, "-m", "hashproxy", "haproxy-config", "--config", str(path),
                          "--check-path", "no slash"], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "check-path" in bad.stderr


# -- a real cluster behind a real HAProxy -----------------------------------------------------


@pytest.mark.slow
def test_real_cluster_behind_haproxy(tmp_path, services):
    need_haproxy()
    tree = cluster_tree(tmp_path, ypws_nodes=3, ypfs_nodes=1, overrides={
        "cluster": dict(SECRETS), "ypws": {"workers": 1}, "ypfs": {"workers": 1}, "magickd": {"workers": 1},
        "hashproxy": {"health_interval": 0.3, "health_timeout": 3.0, "fail_threshold": 3, "rampup_seconds": 0.0}})
    cfg, path = write_config(tmp_path, tree)
    for role in ("magickd", "ypfs", "ypws"):
        for node in getattr(cfg, role).nodes:
            services.start_module(node.name, role, "serve", "--node", node.name, config_path=path,
                                  health_url=f"{node.url}/healthz", timeout=90)
    # /readyz lands on every component in a parallel change; until a node has it (404), all are checked on /healthz
    def readyz(url: str) -> int:  # a node may say 503 until it is ready (a ypws node applies the purge log first)
        return wait_for(lambda: (code := requests.get(f"{url}{READY_PATH}", timeout=10).status_code) != 503 and code,
                          timeout=30) or 503

    probes = {n.name: readyz(n.url) for n in (*cfg.ypws.nodes, *cfg.ypfs.nodes)}
    assert set(probes.values()) <= {200, 404}, probes
    check_path = READY_PATH if set(probes.values()) == {200} else "/healthz"
    gen = subprocess.run([sys.executable, "-m", "hashproxy", "haproxy-config", "--config", str(path),
                          "--check-path", check_path], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True)
    hcfg = tmp_path / "haproxy.cfg"
    hcfg.write_text(gen.stdout)
    haproxy_check(hcfg)
    # one keep-alive client: each request starts after the last one ended inside HAProxy too, so no
    # request is still counted on a node when the next is placed (bounded loads has no floor; README)
    http = requests.Session()
    front = cfg.public_url  # HAProxy binds hashproxy's address, so the photo URLs ypfs returns point at it
    services.start("haproxy", [HAPROXY, "-db", "-f", str(hcfg)], health_url=f"{front}/readyz", timeout=30)
    assert http.get(f"{front}/healthz", timeout=10).json() == {"status": "ok"}

    token = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "user", "add", "alice"],
                           capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout.strip()
    data = (CORPUS / "formats/canon_hdr_NO.jpg").read_bytes()  # 2048x1536, EXIF orientation 6
    r = http.post(f"{front}/upload", files={"photo": ("canon.jpg", data)},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert r.status_code == 201, r.text
    photo = r.json()
    assert all(url.startswith(front + "/photos/alice/") for url in photo["urls"].values())

    # each size pinned: the same node twice (the second a cache hit), hashed on our routing key
    served_by = {}
    for size in ("small", "medium", "square", "original"):
        url = photo["urls"][size]
        first = http.get(url, timeout=60)
        assert first.status_code == 200, (size, first.text[:300])
        with Image.open(io.BytesIO(first.content)) as im:
            im.load()
            assert im.format == "JPEG"
            if size == "square":
                assert im.size == (75, 75)
            elif size == "small":
                assert im.size == (180, 240)  # portrait: upright after orientation 6
        again = http.get(url, timeout=60)
        assert again.status_code == 200 and again.headers["X-Served-By"] == first.headers["X-Served-By"]
        if size != "original":
            assert again.headers["X-Cache"] == "HIT"
        key = image_route_key(url.split(front, 1)[1].split("?", 1)[0])
        assert first.headers[ROUTE_KEY_HEADER] == key
        served_by[size] = first.headers["X-Served-By"]
    assert set(served_by.values()) <= {n.name for n in cfg.ypws.nodes}
    # every format of one size goes where the size goes (WebP by Accept, same key)
    webp = http.get(photo["urls"]["small"], headers={"Accept": "image/webp"}, timeout=60)
    assert webp.status_code == 200 and webp.headers["X-Served-By"] == served_by["small"]
    with Image.open(io.BytesIO(webp.content)) as im:
        assert im.format == "WEBP"
    # a non-canonical spelling (duplicate slashes) is the same URL: same key, same node
    odd = http.get(photo["urls"]["small"].replace("/photos/alice/", "/photos//alice/"), timeout=60)
    assert odd.status_code == 200 and odd.headers["X-Served-By"] == served_by["small"]

    # URLs spread over the nodes, the sizes of one photo too: 6 photos x 5 sizes (photos that do not
    # exist: ypws answers 404, still pinned)
    sizes = ("square", "small", "medium", "large", "original")
    keys = [f"/photos/bob/{10**18 + i}_0123456789/{size}.jpg" for i in range(6) for size in sizes]

    def owners() -> dict[str, str]:
        out = {}
        for k in keys:
            resp = http.get(front + k, timeout=30)
            assert resp.status_code == 404, resp.text[:200]
            out[k] = resp.headers["X-Served-By"]
        return out

    before = owners()
    assert set(before.values()) == {n.name for n in cfg.ypws.nodes}
    assert any(len({before[k] for k in keys[i:i + len(sizes)]}) > 1 for i in range(0, len(keys), len(sizes)))
    assert owners() == before

    # a second front, generated from a config that lists the nodes in another order, agrees on every URL
    (tmp_path / "second").mkdir()
    cfg2, _ = write_config(tmp_path / "second", deep_update(tree, {"ypws": {"nodes": tree["ypws"]["nodes"][::-1]},
                                                                   "hashproxy": {"port": procs.free_port()}}))
    hcfg2 = tmp_path / "haproxy2.cfg"
    hcfg2.write_text(render(cfg2, check_path))
    front2 = f"http://127.0.0.1:{cfg2.hashproxy.port}"
    services.start("haproxy2", [HAPROXY, "-db", "-f", str(hcfg2)], health_url=f"{front2}/readyz", timeout=30)
    assert {k: http.get(front2 + k, timeout=30).headers["X-Served-By"] for k in keys} == before
    services.stop("haproxy2")

    # pages on any ypws node; the API and PURGE on ypfs
    for url in (f"{front}/u/alice", f"{front}/upload"):  # GET /upload is the upload page (ypws), POST goes to ypfs
        page = http.get(url, timeout=30)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"], url
    api = http.get(f"{front}/api/photos/alice/{photo['id']}", timeout=30)
    assert api.status_code == 200 and api.json()["id"] == photo["id"]
    purge = http.request("PURGE", f"{front}/photos/alice/{photo['id']}_{photo['secret']}/small",
                         headers={"Authorization": f"Bearer {SECRETS['admin_token']}"}, timeout=30)
    assert purge.status_code == 200 and purge.json()["logged"] is True, purge.text
    assert wait_for(lambda: any(line["method"] == "PURGE" for line in access_lines(services.log("ypfs1"))), 10)
    purged = http.get(photo["urls"]["small"], timeout=60)  # gone from its node's cache: rendered/read again
    assert purged.status_code == 200 and purged.headers["X-Cache"] != "HIT"
    assert purged.headers["X-Served-By"] == served_by["small"]
    unauthorized = http.request("PURGE", f"{front}/photos/alice/{photo['id']}_{photo['secret']}/", timeout=30)
    assert unauthorized.status_code == 401
    # the request head limit is hashproxy's (line + headers), not HAProxy's default 16 KB buffer
    pad = {f"X-Pad-{i}": "p" * 7000 for i in range(5)}  # 35 KB of headers, each within gunicorn's field limit
    assert http.get(f"{front}/u/alice", headers=pad, timeout=30).status_code == 200
    huge = http.get(f"{front}/u/alice", headers={f"X-Pad-{i}": "p" * 7000 for i in range(12)}, timeout=30)
    assert huge.status_code == 400  # HAProxy's own page: the parser refuses it before any rule (README)
    bad = http.post(photo["urls"]["small"], data=b"x", timeout=30)
    assert bad.status_code == 405 and bad.json()["error"] == "method_not_allowed"
    # smuggling: HAProxy refuses conflicting lengths itself (its defaults, kept by the config)
    answer = raw_http(cfg.hashproxy.port, b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                      b"Content-Length: 2\r\n\r\nab")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    for target in (b"/photos/alice/../x.jpg", b"/photos/alice/%2E%2e/x.jpg"):  # raw: clients would resolve them
        answer = raw_http(cfg.hashproxy.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
        assert answer.startswith(b"HTTP/1.1 400") and b'"bad_path"' in answer, answer[:300]

    # a cache node dies: its URLs fail over to the others, everyone else's stay where they were
    victim = served_by["small"]
    services.stop(victim, timeout=10)
    moved = wait_for(lambda: (resp := http.get(photo["urls"]["small"], timeout=30)).status_code == 200
                       and resp.headers["X-Served-By"] != victim and resp, timeout=15)
    assert moved, "the dead node's URL did not fail over"
    with Image.open(io.BytesIO(moved.content)) as im:
        assert im.size == (180, 240)
    after = wait_for(lambda: (o := owners()) and victim not in o.values() and o, timeout=15)
    assert after, "URLs still sent to the dead node"
    assert {k: v for k, v in after.items() if before[k] != victim} == {k: v for k, v in before.items() if v != victim}
    assert http.get(f"{front}/readyz", timeout=10).status_code == 200

    # no cache node left: a JSON 503 with Retry-After, and the front says it is not ready
    for node in cfg.ypws.nodes:
        services.stop(node.name, timeout=10)
    assert wait_for(lambda: http.get(f"{front}/readyz", timeout=10).status_code == 503, timeout=15)
    down = http.get(photo["urls"]["small"], timeout=30)
    assert down.status_code == 503 and down.headers["Retry-After"] == "1"
    assert down.json()["error"] == "no_healthy_node"
