"""magickd's POST /render refuses what it cannot do with a clean JSON error: a wrong secret and a
missing photo are one 404, an unknown size or format, a bad user name, a field of the wrong type
and a body that is not JSON are 400s; an unknown path is a 404.

In-process: falcon's TestClient over ``magickd.app.create_app`` with the real RenderService on a
real LocalStore. The credential: test_service_auth.py; hostile originals, the queue, idempotency
and the client against real gunicorn workers: test_magickd_service.py.
"""

from __future__ import annotations

import pytest
from falcon import testing

from storage.local import LocalStore

from .helpers import CORPUS, seed_photo
from .magickd_support import render_app
from .ypws_support import app_config

AUTH = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture
def magickd(tmp_path):
    cfg = app_config(tmp_path)
    store = LocalStore(cfg.local_root)
    return testing.TestClient(render_app(cfg, store)), store


def test_bad_requests_are_clean_json_errors(magickd):
    client, store = magickd
    rec = seed_photo(store, "dave", CORPUS / "formats" / "hopper.jpg")
    cases = [
        ({"user": "dave", "photo": rec.id, "secret": "0" * 10}, 404, "not_found"),
        ({"user": "dave", "photo": "123", "secret": rec.secret}, 404, "not_found"),
        ({"user": "dave", "photo": rec.id, "secret": rec.secret, "sizes": ["huge"]}, 400, "bad_request"),
        ({"user": "dave", "photo": rec.id, "secret": rec.secret, "sizes": ["small"], "formats": ["bmp"]},
         400, "bad_request"),
        ({"user": "../etc", "photo": rec.id, "secret": rec.secret}, 400, "bad_request"),
        ({"user": 5}, 400, "bad_request"),
    ]
    for body, status, code in cases:
        r = client.simulate_post("/render", json=body, headers=AUTH)
        assert (r.status_code, r.json["error"]) == (status, code), body
        assert set(r.json) == {"error", "message"}
    r = client.simulate_post("/render", body=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json["error"] == "bad_request"
    r = client.simulate_get("/nowhere")
    assert r.status_code == 404 and r.json["error"] == "not_found"
    # and the request that is right renders
    r = client.simulate_post("/render", json={"user": "dave", "photo": rec.id, "secret": rec.secret,
                                               "sizes": ["thumb"]}, headers=AUTH)
    assert r.status_code == 200 and [(x["size"], x["width"]) for x in r.json["renditions"]] == [("thumb", 100)]
