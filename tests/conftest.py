"""Fixtures shared by every test module."""

from __future__ import annotations

import pytest

from cluster.seaweed import start_seaweed

from .helpers import Services


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
