"""Schema migrations on every backend: a database made by the first version, with
tasks and a schedule in it, is upgraded to the current schema and the current store
works on it; an upgraded database has the schema of a new one; a newer one is refused;
two daemons starting at once upgrade it once."""

from __future__ import annotations

import threading

import peewee
import pytest
from playhouse.db_url import connect as connect_url

from martinet import migrations
from martinet.errors import SchemaTooNew
from martinet.models import TABLES, bind
from martinet.present import attempt_infos, maybe_task_info, task_page
from martinet.query import Search
from martinet.store import Store, open_database
from tests import backends
from tests.store import schema_v1
from tests.store.support import LEASE, NOW

BIG = "x" * 100_000  # more than MySQL's TEXT holds (64 KiB)


def plain(url: str, **options) -> peewee.Database:
    """A connection as the first version made it (no LONGTEXT on MySQL, no pragmas)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1].partition("?")[0]
        return peewee.SqliteDatabase(path, pragmas={"busy_timeout": 30000}, **options)
    if url.startswith(("mysql", "mariadb")):
        return connect_url(url.replace("mariadb://", "mysql://", 1), charset="utf8mb4", **options)
    return connect_url(url, **options)


def make_v1(url: str) -> dict[str, int]:
    """A version-1 database with tasks (queued, scheduled, succeeded with an attempt,
    a schedule's run) and a schedule in it."""
    db = plain(url)
    schema_v1.database.initialize(db)
    db.connect()
    db.create_tables(schema_v1.TABLES)
    t = {"created_at": NOW - 100, "updated_at": NOW - 100}
    sched = schema_v1.Schedule.create(name="tick", kind="interval", spec="60", next_due=NOW + 60, **t).id
    ids = {
        "queued": schema_v1.Task.create(name="add", args='{"x": 1}', status="queued", run_at=NOW - 50,
                                        request_id="r-1", description="first", max_attempts=5, **t).id,
        "later": schema_v1.Task.create(name="add", status="scheduled", run_at=NOW + 3600, **t).id,
        "done": schema_v1.Task.create(name="add", status="succeeded", run_at=NOW - 90, attempt=1,
                                      result='{"ok": true}', finished_at=NOW - 80, **t).id,
        "run": schema_v1.Task.create(name="tick", status="succeeded", run_at=NOW, schedule_id=sched,
                                     due_at=NOW, attempt=1, finished_at=NOW + 1, **t).id,
        "schedule": sched,
    }  # fmt: skip
    schema_v1.Attempt.create(task_id=ids["done"], attempt=1, worker="w0", started_at=NOW - 85, ended_at=NOW - 80,
                             outcome="succeeded")  # fmt: skip
    db.close()
    return ids


def schema(db: peewee.Database) -> dict:
    """Tables, their columns (name, type, nullable) and indexes (name, unique, columns, partial)."""
    out = {}
    for table in sorted(db.get_tables()):
        columns = sorted((c.name, c.data_type.lower(), c.null) for c in db.get_columns(table))
        indexes = sorted(
            (i.name, i.unique, tuple(i.columns), " WHERE " in (i.sql or "").upper())
            for i in db.get_indexes(table)
        )
        out[table] = (columns, indexes)
    return out


@pytest.fixture
def v1(db_url):
    return make_v1(db_url)


def test_a_version_1_database_with_tasks_is_upgraded_and_the_store_works_on_it(db_url, v1):
    # When the daemon opens it
    db = open_database(db_url)
    try:
        store = Store(db)
        # Then it is at the latest version, and every task is as it was
        assert migrations.version(db) == migrations.LATEST
        queued = maybe_task_info(store.get_task(v1["queued"]))
        assert (queued["status"], queued["args"], queued["description"]) == ("queued", {"x": 1}, "first")
        assert (queued["max_attempts"], queued["releases"], queued["key"]) == (5, 0, None)
        assert maybe_task_info(store.get_task(v1["done"]))["result"] == {"ok": True}
        assert [a["outcome"] for a in attempt_infos(store.attempts(v1["done"]))] == ["succeeded"]
        assert store.submit({"name": "add", "request_id": "r-1", "max_attempts": 3}, NOW) == (
            v1["queued"],
            False,
        )

        # And the current store claims, completes (a result larger than 64 KiB), retries and searches
        with store.atomic():
            (claimed,) = store.claim("w1", ["add"], 5, NOW, LEASE)
        assert (claimed["id"], claimed["attempt"]) == (v1["queued"], 1)
        with store.atomic():
            assert store.complete(v1["queued"], 1, "w1", {"big": BIG}, NOW + 1)["status"] == "succeeded"
        assert maybe_task_info(store.get_task(v1["queued"]))["result"] == {"big": BIG}
        items, _ = task_page(store.search_tasks(Search(name="add", statuses=("succeeded",)), 10))
        assert {t["id"] for t in items} == {v1["queued"], v1["done"]}
        assert store.count_tasks(Search(name="add")) == {"succeeded": 2, "scheduled": 1}
        # (what `retry` grants again is what the task was given at submit)
        assert store.Task.get_by_id(v1["queued"]).attempt_budget == 5

        # And the schedule goes on: the next run, once, a key can be declared
        with store.atomic():
            (run,) = store.expand_schedules(NOW + 60, 3)
            assert store.expand_schedules(NOW + 60, 3) == []
        assert maybe_task_info(store.get_task(run))["due_at"] is not None
        assert store.add_schedule({"name": "t", "kind": "interval", "spec": "60", "key": "k"}, NOW, NOW)[1]
        first, created = store.submit({"name": "add", "key": "once", "max_attempts": 3}, NOW)
        assert created and store.submit({"name": "add", "key": "once", "max_attempts": 3}, NOW) == (
            first,
            False,
        )
    finally:
        db.close()


def test_an_upgraded_database_has_the_schema_of_a_new_one(db_url, v1):
    db = open_database(db_url)
    upgraded = schema(db)
    db.close()
    backends.reset(db_url)
    db = open_database(db_url)
    try:
        assert upgraded == schema(db)
        assert migrations.upgrade(db) == (migrations.LATEST, migrations.LATEST)
    finally:
        db.close()


def test_each_version_is_recorded_once_and_a_new_database_starts_at_the_latest(db_url, v1):
    db = open_database(db_url)
    rows = db.execute_sql("SELECT version, name FROM martinet_schema ORDER BY version").fetchall()
    db.close()
    assert [v for v, _ in rows] == list(range(1, migrations.LATEST + 1))
    assert rows[0][1] == "found without a version table"
    backends.reset(db_url)
    db = open_database(db_url)
    try:
        rows = db.execute_sql("SELECT version, name FROM martinet_schema").fetchall()
        assert [tuple(r) for r in rows] == [(migrations.LATEST, "created")]
    finally:
        db.close()


def test_a_database_without_a_version_table_is_placed_by_what_it_has(db):
    # Given a database of the current schema made before versions were recorded
    db.execute_sql("DROP TABLE martinet_schema")
    before = schema(db)
    # Then it is recognised as current, and upgrading only records the version
    assert migrations.detect(db) == migrations.LATEST
    assert migrations.upgrade(db) == (migrations.LATEST, migrations.LATEST)
    assert schema(db) == {**before, "martinet_schema": schema(db)["martinet_schema"]}


def test_a_database_whose_tables_were_dropped_is_new_again(db_url, db):
    # Given martinet's tables dropped, the version table left behind (as bench.py does)
    db.execute_sql(f"UPDATE martinet_schema SET version = {migrations.LATEST + 1}")
    db.drop_tables(list(bind(db)))
    db.close()
    # Then the next start makes the current schema and records it afresh
    db = open_database(db_url)
    try:
        assert {t._meta.table_name for t in TABLES} <= set(db.get_tables())
        rows = db.execute_sql("SELECT version, name FROM martinet_schema").fetchall()
        assert [tuple(r) for r in rows] == [(migrations.LATEST, "created")]
    finally:
        db.close()


def test_a_database_from_a_newer_version_is_refused(db_url, db):
    db.execute_sql(
        f"INSERT INTO martinet_schema (version, name, applied_at) VALUES ({migrations.LATEST + 1}, 'future', 0)"
    )
    with pytest.raises(
        SchemaTooNew, match=f"version {migrations.LATEST + 1}, newer than this martinet knows"
    ):
        open_database(db_url)


def test_two_daemons_starting_at_once_upgrade_it_once(db_url, v1):
    # Given two daemons, each with its own connection, opening a version-1 database at once
    results, errors = [], []
    start = threading.Barrier(2)

    def daemon() -> None:
        if db_url.startswith("sqlite"):  # as open_database makes them
            db = plain(db_url, lock_type="IMMEDIATE")
        elif db_url.startswith(("mysql", "mariadb")):
            db = plain(db_url, field_types={"TEXT": "LONGTEXT"})
        else:
            db = plain(db_url)
        try:
            db.connect()
            start.wait(timeout=10)
            results.append(migrations.upgrade(db))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=daemon) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    # Then one upgraded it and the other found it current; nothing was done twice
    assert not errors
    assert sorted(results) == [(1, migrations.LATEST), (migrations.LATEST, migrations.LATEST)]
    db = open_database(db_url)
    try:
        versions = [v for (v,) in db.execute_sql("SELECT version FROM martinet_schema").fetchall()]
        assert sorted(versions) == list(range(1, migrations.LATEST + 1))
        assert maybe_task_info(Store(db).get_task(v1["queued"]))["status"] == "queued"
        assert {t._meta.table_name for t in TABLES} <= set(db.get_tables())
    finally:
        db.close()


def test_a_database_stopped_at_any_version_without_a_record_of_it_is_upgraded(db_url):
    """Databases made before versions were recorded are placed by what they have; every
    migration is safe to run again (an upgrade interrupted on MySQL resumes)."""
    backends.reset(db_url)
    db = open_database(db_url)
    new = schema(db)
    db.close()
    for stop in range(1, migrations.LATEST + 1):
        # Given a database brought from version 1 to `stop`, with no version table
        backends.reset(db_url)
        make_v1(db_url)
        mysql = db_url.startswith(("mysql", "mariadb"))
        db = plain(db_url, **({"field_types": {"TEXT": "LONGTEXT"}} if mysql else {}))
        db.connect()
        migrator = migrations.SchemaMigrator.from_database(db)
        for migration in migrations.MIGRATIONS:
            if migration.version <= stop:
                migration.apply(db, migrator)
        # Then it is placed at that version (version 2 changed MySQL's column types only;
        # version 13 made an index partial, which MySQL's stays not: 12 is 13 there)
        expected = 1 if stop == 2 else 13 if stop == 12 and mysql else stop
        assert migrations.detect(db) == expected, stop
        # And running a migration again changes nothing
        again = schema(db)
        for migration in migrations.MIGRATIONS:
            if migration.version <= stop:
                migration.apply(db, migrator)
        assert schema(db) == again, stop
        db.close()
        # And opening it brings it to the schema of a new database
        db = open_database(db_url)
        assert schema(db) == new, stop
        db.close()


def identity(db: peewee.Database) -> list[str]:
    return [row[0] for row in db.execute_sql("SELECT database_id FROM database_identity").fetchall()]


def test_each_database_has_an_identity_made_once_that_workers_journals_check(db_url, v1):
    # Given a database of the first version: upgraded, it gets an identity
    db = open_database(db_url)
    try:
        (upgraded,) = identity(db)
        assert len(upgraded) == 32 and Store(db).database_id() == upgraded
        assert migrations.upgrade(db) == (migrations.LATEST, migrations.LATEST)
    finally:
        db.close()
    # And keeps it from one start to the next (a daemon's epoch does not: it is not the identity)
    db = open_database(db_url)
    assert identity(db) == [upgraded]
    # When its tables are dropped (the identity's with them, or not), it is a new database again
    for keep in ((), ("database_identity",)):
        db.drop_tables([t for t in bind(db) if t._meta.table_name not in keep])
        db.close()
        db = open_database(db_url)
        (fresh,) = identity(db)
        assert fresh != upgraded
        upgraded = fresh
    db.close()
