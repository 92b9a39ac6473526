"""End to end: real processes over TCP (tests/harness.py)."""

from __future__ import annotations

import pytest

from tests.harness import Cluster


@pytest.fixture
def cluster(tmp_path, sqlite_url):
    """A daemon and workers as real processes on free ports, on SQLite; all stopped after."""
    c = Cluster(tmp_path, sqlite_url)
    yield c
    c.shutdown()


@pytest.fixture
def any_cluster(tmp_path, db_url):
    """Like `cluster`, once per backend."""
    c = Cluster(tmp_path, db_url)
    yield c
    c.shutdown()
