"""The API's OpenAPI document is true: schemathesis (PyPI) runs it against a real ypfs.

A real ypfs (gunicorn) on the embedded store behind a real hashproxy, with a user and
photos already there; schemathesis reads ``/api/openapi.json`` through the front and sends, for every
operation, a bounded number of generated requests (valid and not), with the owner's
token, and checks every answer: never a 5xx, and each status, content type and body
as the document says.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .helpers import REPO, Services, cluster_tree, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    cfg, path = write_config(tmp, cluster_tree(tmp, overrides={"ypfs": {"render_after_upload": False, "workers": 2}}))
    services = Services(tmp)
    node = cfg.ypfs.nodes[0]
    try:
        services.start_module("ypfs1", "ypfs", "serve", "--node", "ypfs1", config_path=path,
                              health_url=f"{node.url}/healthz")
        services.start_module("hashproxy", "hashproxy", "serve", config_path=path,
                              health_url=f"{cfg.public_url}/healthz")
        token = subprocess.run([sys.executable, "-m", "ypfs", "--config", str(path), "user", "add", "ann"],
                               capture_output=True, text=True, cwd=REPO, timeout=60, check=True).stdout.strip()
        for i in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (32, 24), (i * 80, 10, 10)).save(buf, "JPEG")
            r = requests.post(f"{cfg.public_url}/upload", files={"photo": ("p.jpg", buf.getvalue())},
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert r.status_code == 201, r.text
        yield cfg.public_url, token  # through the front, as clients call it
    finally:
        services.stop_all()


def test_every_answer_matches_the_document_and_none_is_a_5xx(api):
    url, token = api
    schema = schemathesis.openapi.from_url(f"{url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "POST /upload", "GET /api/photos/{user}/{photo_id}", "PATCH /api/photos/{user}/{photo_id}",
        "DELETE /api/photos/{user}/{photo_id}", "GET /api/users/{user}/photos"}
    calls: dict[str, int] = {}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def run(case):
            calls[op.path + " " + op.method] = calls.get(op.path + " " + op.method, 0) + 1
            case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30,
                                   excluded_checks=excluded)

        # any bytes fit "format: binary", and no schema can say "a decodable image": a schema-valid
        # upload may rightly be refused (415/422); everything else must be accepted when valid
        excluded = [positive_data_acceptance] if op.path == "/upload" else []

        run()
    assert len(calls) == 5 and min(calls.values()) >= 5, calls  # every operation really exercised


def test_the_document_is_served_and_names_every_route(api):
    url, _ = api
    doc = requests.get(f"{url}/api/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/upload", "/api/photos/{user}/{photo_id}", "/api/users/{user}/photos"}
