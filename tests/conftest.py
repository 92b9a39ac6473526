from __future__ import annotations

import pytest

from tests import backends
from tests.harness import Cluster

BACKENDS = ["sqlite", "postgresql", "mysql"]


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'martinet.db'}"
    url = backends.check(request.param)
    backends.reset(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'martinet.db'}"


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
