"""The store conformance suite: every test here runs on each backend (SQLite always;
PostgreSQL and MySQL when reachable, required in CI), or with `--db URL` on exactly
that database, its martinet tables dropped before each test.

What a test may rely on is what store.py's docstrings promise, nothing more.
"""

from __future__ import annotations

import pytest

from martinet.models import database
from martinet.retry import RetryPolicy
from martinet.store import Store, open_database


@pytest.fixture
def db(db_url):
    """The database, opened as the daemon opens it (schema created or upgraded)."""
    database = open_database(db_url)
    yield database
    database.close()


@pytest.fixture
def store(db) -> Store:
    return Store(db, RetryPolicy(base=10.0, factor=2.0, cap=300.0))


@pytest.fixture
def other(db, db_url) -> Store:
    """A second daemon's store: its own connection to the same database. The models
    (peewee's proxy) stay on the first one; use `as_daemon(other)` to switch."""
    second = open_database(db_url)
    database.initialize(db)
    yield Store(second, RetryPolicy(base=10.0, factor=2.0, cap=300.0))
    second.close()
    database.initialize(db)
