"""The store conformance suite: every test here runs on each backend (SQLite always;
PostgreSQL and MySQL when reachable, required in CI), or with `--db URL` on exactly
that database, its martinet tables dropped before each test.

What a test may rely on is what the store's docstrings (martinet/store/) promise, nothing more.
"""

from __future__ import annotations

import pytest

from martinet.retry import RetryPolicy
from martinet.store import Store, open_database
from tests.backends import use_models


@pytest.fixture
def db(db_url):
    """The database, opened as the daemon opens it (schema created or upgraded); the
    shared models (models.Task, ...) on it, for the test's own reads and writes."""
    database = open_database(db_url)
    with use_models(database):
        yield database
    database.close()


@pytest.fixture
def store(db) -> Store:
    return Store(db, RetryPolicy(base=10.0, factor=2.0, cap=300.0))


@pytest.fixture
def other(db, db_url) -> Store:
    """A second daemon's store: its own connection to the same database (a store's
    queries go to its own connection; the test's reads through the shared models, to `db`'s)."""
    second = open_database(db_url)
    yield Store(second, RetryPolicy(base=10.0, factor=2.0, cap=300.0))
    second.close()
