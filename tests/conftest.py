"""Fixtures shared by every test module."""

from __future__ import annotations

import os

import pytest

from cluster.seaweed import start_seaweed
from storage.local import LocalStore
from storage.s3 import S3Store

from .helpers import Services, s3_settings


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One real `weed server -s3` for the whole session, on free loopback ports."""
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture
def services(tmp_path):
    svc = Services(tmp_path)
    yield svc
    svc.stop_all()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    """A fresh blob store: the embedded local one, and S3 (a new bucket) on the session's SeaweedFS."""
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        weed = request.getfixturevalue("seaweed")
        s = S3Store(s3_settings(endpoint=weed.endpoint, access_key=weed.access_key, secret_key=weed.secret_key,
                                  bucket=f"contract-{os.urandom(4).hex()}", part_size=5 * 1024 * 1024))
        yield s
        s.close()
