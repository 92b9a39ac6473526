"""Versioned schema migrations, applied when the database is opened (daemon start).

The schema's version lives in table martinet_schema, one row per version reached
(version, name, applied_at); the current version is the highest. `upgrade(db)`:

- a new database (no task table) gets the current schema directly (the models,
  plus models.PARTIAL_INDEXES) and is stamped with the latest version;
- a database made before versions were recorded (no martinet_schema) is placed
  by its columns, tables and indexes (`detect`), then upgraded;
- a database at an older version runs the migrations after it, in order;
- a database at a NEWER version than this code knows is refused (SchemaTooNew):
  an older martinet must not write to a schema it does not understand.

Two daemons starting at once: the upgrade holds a lock (SQLite: the write lock
of BEGIN IMMEDIATE; PostgreSQL: an advisory transaction lock; MySQL: GET_LOCK),
then reads the version again, so one upgrades and the other finds it current.
On SQLite and PostgreSQL every migration and its version stamp run in one
transaction (DDL is transactional there): an upgrade happens whole or not at
all. MySQL commits each DDL statement by itself, so there each migration is
stamped as soon as it is done, and every migration is written to be re-run
safely (each step checks whether it is already there): an upgrade interrupted
half way resumes at the next start.

Adding a schema change: change models.py, then append a Migration below whose
`apply` brings a database of the previous version to the new one (columns that
are NOT NULL get a database default, so adding them never rewrites the rows one
by one). tests/store/test_migrations.py checks that a database upgraded from
version 1 has the same columns and indexes as a new one.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import peewee
from playhouse.migrate import SchemaMigrator

from martinet.errors import SchemaTooNew, StoreError
from martinet.models import PARTIAL_INDEXES, bind

log = logging.getLogger(__name__)

VERSION_TABLE = "martinet_schema"
PG_LOCK_KEY = 0x6D617274696E6574 & 0x7FFFFFFFFFFFFFFF  # "martinet": pg_advisory_xact_lock's key
MYSQL_LOCK = "martinet_schema"
MYSQL_LOCK_WAIT = 300  # seconds a second daemon waits for the first one's upgrade (big ALTERs on MySQL)
# Text columns of version 1: MySQL's TEXT holds 64 KiB, so they became LONGTEXT (version 2).
V1_TEXT = {
    "schedule": {"description": True, "args": False},
    "task": {
        "description": True,
        "args": False,
        "progress_message": True,
        "result": True,
        "error_message": True,
        "error_traceback": True,
    },
    "attempt": {"error_message": True, "error_traceback": True},
}  # column -> nullable


class Migration(NamedTuple):
    """Brings a database from version `version - 1` to `version`."""

    version: int
    name: str
    apply: Callable[[peewee.Database, SchemaMigrator], None]


# ---- the steps migrations are made of (each one does nothing if already done) ------------


def _columns(db: peewee.Database, table: str) -> set[str]:
    return {c.name for c in db.get_columns(table)}


def _indexes(db: peewee.Database, table: str) -> set[str]:
    return {i.name for i in db.get_indexes(table)}


def _add_columns(db: peewee.Database, migrator: SchemaMigrator, table: str, **fields: peewee.Field) -> None:
    have = _columns(db, table)
    for name, field in fields.items():
        if name not in have:
            # NOT NULL columns carry a database default (see _not_null): one ALTER, no row rewrite.
            migrator.add_column(table, name, field, allow_not_null=not field.null).run()


def _not_null(field: peewee.Field, default: str) -> peewee.Field:
    """A NOT NULL column for add_column: the default is also the database's, so
    rows that exist get it at once (a new database has no database defaults:
    peewee, and the store's raw inserts, always give every column a value)."""
    field.constraints = [peewee.SQL(f"DEFAULT {default}")]
    return field


def _quoted(db: peewee.Database, columns: str) -> str:
    """ "queue, priority DESC" with each column quoted (key is reserved on MySQL)."""
    q0, q1 = db.quote[0], db.quote[1]  # the opening and closing quote characters
    parts = (c.split() for c in columns.split(","))
    return ", ".join(" ".join([f"{q0}{col}{q1}", *rest]) for col, *rest in parts)


def _create_index(
    db: peewee.Database, name: str, table: str, columns: str, unique: bool = False, where: str | None = None
) -> None:
    """CREATE INDEX unless an index of that name exists (MySQL has no IF NOT EXISTS)."""
    if name in _indexes(db, table):
        return
    sql = f"CREATE {'UNIQUE ' if unique else ''}INDEX {name} ON {table} ({_quoted(db, columns)})"
    db.execute_sql(sql + (f" WHERE {where}" if where else ""))


def _drop_index(db: peewee.Database, migrator: SchemaMigrator, table: str, name: str) -> None:
    if name in _indexes(db, table):
        migrator.drop_index(table, name).run()


def create_partial_indexes(db: peewee.Database) -> None:
    """models.PARTIAL_INDEXES, partial where the database can (not on MySQL: full there)."""
    mysql = isinstance(db, peewee.MySQLDatabase)
    for index in PARTIAL_INDEXES:
        if mysql:
            _create_index(db, index.name, "task", index.full, index.unique)
        else:
            _create_index(db, index.name, "task", index.columns, index.unique, index.where)


def _create_table(
    db: peewee.Database, table: str, indexes: tuple[str, ...] = (), **fields: peewee.Field
) -> None:
    """A table as it was when a migration added it (not the current model: that may
    have changed since), with an index on each column in `indexes`, named as peewee
    names them."""
    meta = type("Meta", (), {"database": db, "table_name": table})
    model = type(f"Frozen_{table}", (peewee.Model,), {"Meta": meta, **fields})
    assert issubclass(model, peewee.Model)  # for the type checker: type() says only `type`
    model.create_table(safe=True)
    for column in indexes:
        _create_index(db, f"{table}_{column}", table, column)


# ---- the migrations, in order ------------------------------------------------------


def _v2_mysql_longtext(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """MySQL: text columns become LONGTEXT (TEXT holds 64 KiB; args and results may be larger)."""
    if not isinstance(db, peewee.MySQLDatabase):
        return
    for table, columns in V1_TEXT.items():
        rows = db.execute_sql(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        ).fetchall()
        short = [name for name, kind in rows if name in columns and kind.lower() != "longtext"]
        if short:  # one ALTER per table: MySQL copies the table once
            changes = ", ".join(f"MODIFY `{c}` LONGTEXT{'' if columns[c] else ' NOT NULL'}" for c in short)
            db.execute_sql(f"ALTER TABLE {table} {changes}")


def _v3_schedule_limits(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Schedules: until, count (remaining), misfire policy and grace."""
    _add_columns(
        db,
        migrator,
        "schedule",
        until=peewee.DoubleField(null=True),
        remaining=peewee.IntegerField(null=True),
        misfire=_not_null(peewee.CharField(max_length=8), "'once'"),
        misfire_grace=peewee.DoubleField(null=True),
    )


def _v4_reliability(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Tasks: attempt budget, per-task backoff, time limit, and why stalled or cancelled."""
    added = "attempt_budget" not in _columns(db, "task")
    _add_columns(
        db,
        migrator,
        "task",
        attempt_budget=_not_null(peewee.IntegerField(), "3"),
        retry_base=peewee.DoubleField(null=True),
        retry_factor=peewee.DoubleField(null=True),
        retry_cap=peewee.DoubleField(null=True),
        timeout=peewee.DoubleField(null=True),
        reason=peewee.TextField(null=True),
    )
    if added:  # what `retry` grants again: the attempts a task was given at submit
        db.execute_sql("UPDATE task SET attempt_budget = max_attempts")


def _v5_keys_and_dependencies(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Unique keys (tasks and schedules), dependencies between tasks."""
    _add_columns(db, migrator, "schedule", key=peewee.CharField(max_length=255, null=True))
    _create_index(db, "schedule_key", "schedule", "key", unique=True)
    _add_columns(
        db,
        migrator,
        "task",
        key=peewee.CharField(max_length=255, null=True),
        unique_key=peewee.CharField(max_length=255, null=True),
        key_mode=peewee.CharField(max_length=8, null=True),
        has_parents=_not_null(peewee.BooleanField(), "FALSE"),
        has_dependents=_not_null(peewee.BooleanField(), "FALSE"),
    )
    _create_index(db, "task_key", "task", "key")
    _create_index(db, "task_unique_key", "task", "unique_key", unique=True)
    _create_table(
        db,
        "dependency",
        ("task_id", "parent_id"),
        id=peewee.AutoField(),
        task_id=peewee.IntegerField(),
        parent_id=peewee.IntegerField(),
    )


def _v6_releases(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Tasks: how many times a handler gave the task back."""
    _add_columns(db, migrator, "task", releases=_not_null(peewee.IntegerField(), "0"))


def _v7_queues(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Queue settings and task-name limits; dispatch by queue."""
    _create_table(
        db,
        "queue_setting",
        name=peewee.CharField(max_length=255, primary_key=True),
        order=peewee.CharField(max_length=8, default="fifo"),
        weight=peewee.IntegerField(default=1),
        concurrency=peewee.IntegerField(null=True),
        rate_count=peewee.IntegerField(null=True),
        rate_period=peewee.DoubleField(null=True),
        paused=peewee.BooleanField(default=False),
        updated_at=peewee.DoubleField(),
    )
    _create_table(
        db,
        "task_limit",
        name=peewee.CharField(max_length=255, primary_key=True),
        concurrency=peewee.IntegerField(null=True),
        rate_count=peewee.IntegerField(null=True),
        rate_period=peewee.DoubleField(null=True),
        updated_at=peewee.DoubleField(),
    )
    _create_index(db, "task_status_queue_priority_run_at", "task", "status, queue, priority, run_at")
    _drop_index(db, migrator, "task", "task_status_priority_run_at")


def _v8_dispatch_index(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """The dispatch order served by an index: priority DESC, run_at, id."""
    _create_index(db, "task_dispatch", "task", "status, queue, priority DESC, run_at, id")
    _drop_index(db, migrator, "task", "task_status_queue_priority_run_at")


def _v9_search_indexes(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Search: indexes ending in (created_at, id), and finished_at."""
    _create_index(db, "task_created", "task", "created_at, id")
    _create_index(db, "task_status_created", "task", "status, created_at, id")
    _create_index(db, "task_name_status_created", "task", "name, status, created_at, id")
    _create_index(db, "task_finished", "task", "finished_at, id")
    _drop_index(db, migrator, "task", "task_name_status")


def _v10_partial_indexes(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Leaner indexes: dispatch, due times, keys and schedule runs index only their rows
    (full indexes on MySQL, which has no partial ones); (worker, status) is gone."""
    create_partial_indexes(db)  # the new unique indexes exist before the old ones go
    for old in (
        "task_dispatch",
        "task_status_run_at",
        "task_key",
        "task_unique_key",
        "task_schedule_id_due_at",
        "task_worker_status",
    ):
        _drop_index(db, migrator, "task", old)


def _v11_events(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """Events: what happened to tasks, kept for a while, so clients can catch up."""
    _create_table(
        db,
        "event",
        id=peewee.BigAutoField(),
        task_id=peewee.BigIntegerField(null=True),
        name=peewee.CharField(max_length=255, null=True),
        kind=peewee.CharField(max_length=16),
        at=peewee.DoubleField(),
        body=peewee.TextField(),
    )


def _v12_database_identity(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """The database's identity (models.DatabaseIdentity): workers tie their journaled
    outcomes to it. An existing database gets one now, once."""
    _create_table(
        db,
        "database_identity",
        database_id=peewee.CharField(max_length=64, primary_key=True),
        created_at=peewee.DoubleField(),
    )
    if not db.execute_sql("SELECT 1 FROM database_identity").fetchone():
        _new_identity(db)


def _v13_finished_index(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """task_finished indexes finished tasks only (models.PARTIAL_INDEXES): a task's insert,
    claim and start no longer write to it. MySQL keeps its full index (no partial ones)."""
    if isinstance(db, peewee.MySQLDatabase):
        return
    if not _is_partial(db, "task", "task_finished"):
        _drop_index(db, migrator, "task", "task_finished")
    create_partial_indexes(db)


def _v14_daemons(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """The daemons that use the database, with their heartbeats (models.DaemonRow)."""
    _create_table(
        db,
        "daemon",
        id=peewee.CharField(max_length=64, primary_key=True),
        host=peewee.CharField(max_length=255),
        pid=peewee.IntegerField(),
        address=peewee.CharField(max_length=255),
        version=peewee.CharField(max_length=32),
        started_at=peewee.DoubleField(),
        beat_at=peewee.DoubleField(),
        stopped_at=peewee.DoubleField(null=True),
    )


def _v15_leasing_daemon(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """task.daemon: the daemon that leased the task's current attempt (a daemon loses only
    its own workers' leases when several share the database)."""
    _add_columns(db, migrator, "task", daemon=peewee.CharField(max_length=64, null=True))


def _v16_event_task_index(db: peewee.Database, migrator: SchemaMigrator) -> None:
    """A task's events found by task (models.Event's event_task): `show`, the dashboard."""
    _create_index(db, "event_task", "event", "task_id, id")


def _is_partial(db: peewee.Database, table: str, name: str) -> bool:
    """Whether index `name` exists with a WHERE clause."""
    return any(i.name == name and " WHERE " in (i.sql or "").upper() for i in db.get_indexes(table))


def _new_identity(db: peewee.Database) -> None:
    """A new random identity, replacing any: a database created afresh over the remains of
    another (its tables dropped) is another database to the workers' journals."""
    db.execute_sql("DELETE FROM database_identity")
    db.execute_sql(
        f"INSERT INTO database_identity (database_id, created_at) VALUES ({db.param}, {db.param})",
        (secrets.token_hex(16), time.time()),
    )


MIGRATIONS = (
    Migration(2, "MySQL: text columns are LONGTEXT", _v2_mysql_longtext),
    Migration(3, "schedules: until, count, misfire", _v3_schedule_limits),
    Migration(4, "tasks: attempt budget, backoff, timeout, reason", _v4_reliability),
    Migration(5, "unique keys and dependencies", _v5_keys_and_dependencies),
    Migration(6, "tasks: releases", _v6_releases),
    Migration(7, "queue settings and task limits", _v7_queues),
    Migration(8, "dispatch index", _v8_dispatch_index),
    Migration(9, "search indexes", _v9_search_indexes),
    Migration(10, "partial indexes", _v10_partial_indexes),
    Migration(11, "events", _v11_events),
    Migration(12, "database identity", _v12_database_identity),
    Migration(13, "finished tasks' index", _v13_finished_index),
    Migration(14, "daemons", _v14_daemons),
    Migration(15, "the daemon that leased a task", _v15_leasing_daemon),
    Migration(16, "a task's events", _v16_event_task_index),
)
LATEST = MIGRATIONS[-1].version


# ---- reading and recording the version -------------------------------------------------


def detect(db: peewee.Database) -> int | None:
    """The version of a database that has no version table, read from what it has;
    None when it has no martinet tables. Versions that only added indexes are told
    apart by their indexes; every migration is safe to re-run, so placing a database
    too low costs time, never correctness."""
    tables = set(db.get_tables())
    if "task" not in tables:
        return None
    task, schedule = _columns(db, "task"), _columns(db, "schedule") if "schedule" in tables else set()
    indexes = _indexes(db, "task")
    if "until" not in schedule:
        return 1
    if "attempt_budget" not in task:
        return 3
    if "key" not in task or "dependency" not in tables:
        return 4
    if "releases" not in task:
        return 5
    if "queue_setting" not in tables or "task_limit" not in tables:
        return 6
    if "daemon" in tables:
        if "daemon" not in task:
            return 14
        return 16 if "event_task" in _indexes(db, "event") else 15
    if "database_identity" in tables:
        mysql = isinstance(db, peewee.MySQLDatabase)  # its task_finished stays full
        return 13 if mysql or _is_partial(db, "task", "task_finished") else 12
    if "event" in tables:
        return 11
    if "task_ready" in indexes:
        return 10
    if "task_created" in indexes:
        return 9
    if "task_dispatch" in indexes:
        return 8
    return 7


def version(db: peewee.Database) -> int | None:
    """The database's schema version (recorded, else detected); None when it is new:
    without a task table it is, whatever a version table left behind says (martinet's
    tables were dropped: bench.py does, so may an operator starting afresh)."""
    tables = set(db.get_tables())
    if "task" not in tables:
        return None
    if VERSION_TABLE in tables:
        found = db.execute_sql(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()[0]
        if found is not None:
            return found
    return detect(db)


def _create_version_table(db: peewee.Database) -> None:
    db.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL PRIMARY KEY,"
        " name VARCHAR(255) NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
    )


def _stamp(db: peewee.Database, number: int, name: str) -> None:
    """Record a version reached (raw SQL: no model bound to a database, so two
    connections in two threads can upgrade at once)."""
    p = db.param
    if not db.execute_sql(f"SELECT 1 FROM {VERSION_TABLE} WHERE version = {p}", (number,)).fetchone():
        db.execute_sql(
            f"INSERT INTO {VERSION_TABLE} (version, name, applied_at) VALUES ({p}, {p}, {p})",
            (number, name, time.time()),
        )


@contextmanager
def _locked(db: peewee.Database) -> Iterator[None]:
    """One upgrader at a time; on SQLite and PostgreSQL, inside one transaction."""
    if isinstance(db, peewee.MySQLDatabase):
        got = db.execute_sql("SELECT GET_LOCK(%s, %s)", (MYSQL_LOCK, MYSQL_LOCK_WAIT)).fetchone()[0]
        if got != 1:
            raise StoreError(
                f"another martinet has been upgrading this database's schema for {MYSQL_LOCK_WAIT} s "
                f"(MySQL lock {MYSQL_LOCK!r}); wait for it to finish, then start again"
            )
        try:
            yield
        finally:
            db.execute_sql("SELECT RELEASE_LOCK(%s)", (MYSQL_LOCK,))
        return
    with db.atomic():  # SQLite: BEGIN IMMEDIATE (store.open_database), the only writer until commit
        if isinstance(db, peewee.PostgresqlDatabase):
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (PG_LOCK_KEY,))
        yield


def upgrade(db: peewee.Database) -> tuple[int | None, int]:
    """Bring the database to the latest schema; returns (version found, version now).

    Found None: it was new and got the current schema directly. Raises SchemaTooNew
    when the database is newer than this code.
    """
    with _locked(db):
        recorded = VERSION_TABLE in db.get_tables()
        found = version(db)
        if found is not None and found > LATEST:
            raise SchemaTooNew(
                f"the database's schema is version {found}, newer than this martinet knows "
                f"(up to {LATEST}): a newer martinet has upgraded it. Upgrade martinet "
                f"(pip install -U martinet) wherever it runs against this database; "
                f"do not run an older one against it"
            )
        if recorded and found == LATEST:
            return found, found  # the common case
        _create_version_table(db)
        if found is None:
            db.execute_sql(f"DELETE FROM {VERSION_TABLE}")  # what a dropped schema left
            db.create_tables(list(bind(db)), safe=True)  # the models bound to this db (models.bind)
            create_partial_indexes(db)
            _new_identity(db)
            _stamp(db, LATEST, "created")
            return None, LATEST
        if not recorded:
            _stamp(db, found, "found without a version table")
        migrator = SchemaMigrator.from_database(db)
        for migration in MIGRATIONS:
            if migration.version > found:
                log.info("schema: migrating to version %d (%s)", migration.version, migration.name)
                migration.apply(db, migrator)
                _stamp(db, migration.version, migration.name)
        if found < LATEST:
            log.info("schema: upgraded from version %d to %d", found, LATEST)
        return found, LATEST
