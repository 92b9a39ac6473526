"""Shared by every layer: the --db option, the run's own state folder, and the databases
(`db_url` on each backend, `sqlite_url`). Each layer's conftest.py adds its own fixtures:
tests/unit (make_core), tests/store (db, store, other), tests/e2e (cluster, any_cluster)."""

from __future__ import annotations

import os
import shutil
import tempfile
from urllib.parse import urlparse

import pytest

from tests import backends

BACKENDS = ["sqlite", "postgresql", "mysql"]


def pytest_addoption(parser):
    # Here, not in tests/store/conftest.py: pytest reads options from the root conftest only.
    parser.addoption(
        "--db",
        metavar="URL",
        help="run the tests that run on every backend (the store suite: pytest tests/store --db URL) "
        "on this database only; its martinet tables are dropped before each test",
    )


def pytest_configure(config):
    """Tests run in four processes (pytest-xdist, `-n 4` in pyproject.toml), each with its
    own databases (tests/backends.py); one database given with --db is one process's."""
    if config.getoption("db") and getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0
        config.option.dist = "no"
    # Default journals (a worker without --journal or MARTINET_STATE_DIR, in process or
    # started by a test) go under a folder of the run's own, never the user's state folder.
    config._martinet_state = tempfile.mkdtemp(prefix="martinet-tests-state-")
    os.environ["XDG_STATE_HOME"] = config._martinet_state


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_martinet_state", ""), ignore_errors=True)


def pytest_generate_tests(metafunc):
    """`db_url` is parametrized by backend, or by the one URL given with --db."""
    if "db_url" in metafunc.fixturenames:
        url = metafunc.config.getoption("db")
        if url:
            metafunc.parametrize("db_url", [url], ids=[urlparse(url).scheme or "db"], indirect=True)
        else:
            metafunc.parametrize("db_url", BACKENDS, indirect=True)


@pytest.fixture
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each backend (or the --db one, emptied)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'martinet.db'}"
    url = request.param if "://" in request.param else backends.check(request.param)
    backends.reset(url)
    return url


@pytest.fixture
def pg_url() -> str:
    """An empty PostgreSQL database, for what only PostgreSQL does (skipped only when no
    server is reachable, and then a failure in CI)."""
    url = backends.check("postgresql")
    backends.reset(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'martinet.db'}"
