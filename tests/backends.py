"""The databases tests run on: SQLite always; PostgreSQL and MySQL when reachable.

URLs come from MARTINET_TEST_POSTGRES / MARTINET_TEST_MYSQL (defaults: the
local servers on their standard ports). A backend that cannot be reached is
skipped with the reason, unless MARTINET_TEST_REQUIRE_BACKENDS=1 (as in CI),
where it fails the run instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import peewee
import pytest
from playhouse.db_url import connect as connect_url

from martinet.migrations import VERSION_TABLE
from martinet.models import TABLES

DEFAULT_URLS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
ENV = {"postgresql": "MARTINET_TEST_POSTGRES", "mysql": "MARTINET_TEST_MYSQL"}
REQUIRED = os.environ.get("MARTINET_TEST_REQUIRE_BACKENDS") == "1"
_reachable: dict[str, str | None] = {}


def server_url(backend: str) -> str:
    """The backend's URL; under pytest-xdist, a database of each test process's own
    (`test_gw0`, ...), made on first use, so that parallel tests never share tables."""
    url = os.environ.get(ENV[backend]) or DEFAULT_URLS[backend]
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    own = f"{url.rstrip('/')}_{worker}"
    if own not in _created:
        _create_database(url, own.rsplit("/", 1)[1])
        _created.add(own)
    return own


_created: set[str] = set()


def _create_database(url: str, name: str) -> None:
    """CREATE DATABASE `name` on the server of `url`, unless it exists (errors: see check)."""
    try:
        db = connect_url(url)
        db.connect()
    except (peewee.PeeweeException, ImportError, OSError):
        return  # unreachable: check() says so when it tries the new URL
    try:
        if isinstance(db, peewee.PostgresqlDatabase):
            conn = db.connection()
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        else:
            db.execute_sql(f"CREATE DATABASE IF NOT EXISTS `{name}`")
    finally:
        db.close()


def check(backend: str) -> str:
    """The URL of a reachable server backend, or skip (fail in CI) saying why."""
    url = server_url(backend)
    if backend not in _reachable:
        try:
            db = connect_url(url)
            db.connect()
            db.close()
            _reachable[backend] = None
        except (peewee.PeeweeException, ImportError, OSError) as exc:
            _reachable[backend] = (
                f"{backend} at {url} is not reachable ({exc}); set {ENV[backend]} to test it"
            )
    reason = _reachable[backend]
    if reason:
        if REQUIRED:
            pytest.fail(reason + " [MARTINET_TEST_REQUIRE_BACKENDS=1]")
        pytest.skip(reason)
    return url


def reset(url: str) -> None:
    """Drop martinet's tables (and its schema version) so a test starts from an empty database."""
    db = connect_url(
        url.partition("?")[0] if url.startswith("sqlite") else url.replace("mariadb://", "mysql://", 1)
    )
    db.connect()
    for table in [*(model._meta.table_name for model in TABLES), VERSION_TABLE]:
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
    db.close()


@contextmanager
def use_models(db: peewee.Database) -> Iterator[peewee.Database]:
    """The shared models (martinet.models.Task, ...) bound to `db` for a test's own reads
    and writes, unbound after. A Store never uses them: its queries go to the models
    bound to its own database (models.bind), so this changes nothing it does."""
    db.bind(TABLES, bind_refs=False, bind_backrefs=False)
    try:
        yield db
    finally:
        for model in TABLES:
            model._meta.set_database(None)
