"""martinet.enqueue_in: a task enqueued inside an application's own PostgreSQL
transaction exists if and only if that transaction commits, and the daemon (embedded,
on PostgreSQL, with worker threads) dispatches it as soon as it is committed."""

from __future__ import annotations

import json
import select
import sqlite3
import threading
import time

import psycopg
import psycopg2
import pytest
import sqlalchemy
from sqlalchemy.orm import Session

import martinet

WAIT = 10  # seconds any story here may take at most


@pytest.fixture
def live(pg_url, make_live):
    live = make_live(pg_url)
    live.worker(concurrency=2)
    return live


def _django_connection(url: str):
    import django
    from django.conf import settings

    if not settings.configured:
        parts = sqlalchemy.engine.make_url(url)
        database = {"ENGINE": "django.db.backends.postgresql", "NAME": parts.database, "USER": parts.username,
                    "HOST": parts.host, "PORT": parts.port or 5432}  # fmt: skip
        settings.configure(DATABASES={"default": database})
        django.setup()
    from django.db import connection

    return connection


class App:
    """An application's connection of one kind, in a transaction of its own."""

    def __init__(self, kind: str, url: str) -> None:
        self._close = None
        if kind == "psycopg2":
            self.conn = self.handle = psycopg2.connect(url)
        elif kind in ("psycopg3", "psycopg3 cursor"):
            self.conn = psycopg.connect(url)
            self.handle = self.conn if kind == "psycopg3" else self.conn.cursor()
        elif kind in ("sqlalchemy", "sqlalchemy session"):
            engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
            connection = engine.connect()
            self.conn = connection
            self.handle = connection if kind == "sqlalchemy" else Session(bind=connection)
            self._close = engine.dispose
        elif kind == "django":
            self.conn = self.handle = _django_connection(url)
            self.conn.set_autocommit(False)
        # what ends the transaction: a Session's own, else the connection's
        self.tx = self.handle if isinstance(self.handle, Session) else self.conn

    def commit(self) -> None:
        self.tx.commit()

    def rollback(self) -> None:
        self.tx.rollback()

    def close(self) -> None:
        self.conn.close()
        if self._close:
            self._close()


KINDS = ["psycopg2", "psycopg3", "psycopg3 cursor", "sqlalchemy", "sqlalchemy session", "django"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_task_enqueued_in_a_transaction_exists_if_and_only_if_it_commits(live, pg_url, kind):
    m = live.m
    app = App(kind, pg_url)
    try:
        undone = m.enqueue_in(app.handle, "add", {"a": 1, "b": 1})
        assert undone.created
        app.rollback()
        kept = m.enqueue_in(app.handle, "add", {"a": 2, "b": 3})
        with pytest.raises(martinet.TaskNotFound):
            m.get(kept)  # not committed yet: no one else sees it
        app.commit()
        # The daemon heard of it at the commit: nothing else would make an idle worker's
        # empty queue worth claiming from again.
        assert m.wait(kept, timeout=WAIT) == 5
        with pytest.raises(martinet.TaskNotFound):
            m.get(undone)  # rolled back: never existed
    finally:
        app.close()


def test_a_task_enqueued_for_later_runs_then(live, pg_url):
    m = live.m
    with psycopg2.connect(pg_url) as conn:  # (commits at the end of the block)
        due = time.time() + 0.3
        tid = m.enqueue_in(conn, "clock", {}, run_at=0.3)  # seconds from now, as in execute
    assert m.wait(tid, timeout=WAIT) >= due  # clock returns when it started


def test_keys_and_request_ids_in_a_transaction_hold_as_for_execute(live, pg_url):
    m = live.m
    held = m.execute("sleepy", {"seconds": 30}, key="report-1")  # in use until revoked below
    conn = psycopg2.connect(pg_url)
    try:
        again = m.enqueue_in(conn, "sleepy", {"seconds": 0.01}, key="report-1")
        assert again == held and not again.created  # a key in use names its task
        m.revoke(held)  # (its handler stops at once: the worker's other thread runs the rest)
        first = m.enqueue_in(conn, "add", {"a": 1, "b": 1}, key="sum", request_id="r-1")
        assert m.enqueue_in(conn, "add", {"a": 1, "b": 1}, request_id="r-1") == first  # same transaction
        # The daemon's own insert of a key that an open transaction is inserting is
        # refused at once, and the daemon goes on serving
        started = time.monotonic()
        with pytest.raises(martinet.StoreError, match="has not committed yet"):
            m.execute("add", {"a": 1, "b": 1}, key="sum")
        assert time.monotonic() - started < WAIT / 2
        assert m.ping()["workers"] == 1
        conn.commit()
        named = m.execute("add", {"a": 1, "b": 1}, key="sum")
        assert named == first and not named.created
        assert m.wait(first, timeout=WAIT) == 2
    finally:
        conn.close()


def test_a_task_enqueued_after_others_runs_once_they_succeed_even_if_they_end_before_the_commit(live, pg_url):
    """The application's transaction reads the task it waits on, running; that task ends
    (without waiting for the application's locks) before the transaction commits; the
    daemon settles the waiting task once it hears of it."""
    m = live.m
    parent = m.execute("sleepy", {"seconds": 0.2})
    doomed = m.execute("sleepy", {"seconds": 5}, max_attempts=1, time_limit=0.3)
    conn = psycopg2.connect(pg_url)
    try:
        child = m.enqueue_in(conn, "add", {"a": 4, "b": 4}, after=[parent])
        orphan = m.enqueue_in(conn, "add", {"a": 4, "b": 4}, after=[doomed])
        m.wait(parent, timeout=WAIT)
        with pytest.raises(martinet.TaskFailed):
            m.wait(doomed, timeout=WAIT)
        conn.commit()
    finally:
        conn.close()
    assert m.wait(child, timeout=WAIT) == 8
    with pytest.raises(martinet.TaskFailed, match="cancelled"):
        m.wait(orphan, timeout=WAIT)
    assert m.get(orphan)["reason"] == f"task {doomed} it waited on ended dead"


def test_a_task_enqueued_while_the_daemon_was_not_listening_still_runs(live, pg_url):
    """The daemon's listening connection is cut: it listens again and looks at every queue,
    so a task whose note it may have missed still runs."""
    m = live.m
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN martinet_changes%%' AND datname = current_database()"
            )
            assert cursor.fetchone() == (True,)
        with psycopg2.connect(pg_url) as conn:
            tid = m.enqueue_in(conn, "add", {"a": 5, "b": 5})
        assert m.wait(tid, timeout=WAIT) == 10
        deadline = time.monotonic() + WAIT
        while True:  # and it listens again
            with admin.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN martinet_changes%%'"
                    " AND datname = current_database()"
                )
                if cursor.fetchone() == (1,):
                    break
            assert time.monotonic() < deadline, "the daemon did not listen again"
            time.sleep(0.01)
    finally:
        admin.close()


def test_a_connection_in_autocommit_mode_commits_the_task_at_once(live, pg_url):
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        # (the key kept for good: a worker may end the task before the second call)
        tid = live.m.enqueue_in(conn, "add", {"a": 6, "b": 1}, key="auto", unique="always")
        again = live.m.enqueue_in(conn, "add", {"a": 6, "b": 1}, key="auto", unique="always")
        assert again == tid and not again.created  # (a savepoint: its own BEGIN)
        assert live.m.wait(tid, timeout=WAIT) == 7
    finally:
        conn.close()


def test_a_database_without_martinet_tables_is_named(pg_url):
    with (
        psycopg2.connect(pg_url) as conn,
        pytest.raises(martinet.StoreError, match="start `martinet serve` on it"),
    ):
        martinet.Martinet.connect("tcp://127.0.0.1:9").enqueue_in(conn, "add", {"a": 1, "b": 1})


def test_enqueue_in_refuses_what_is_not_a_postgresql_connection(live):
    with pytest.raises(martinet.BadInput, match="PostgreSQL through psycopg 2 or 3, not through sqlite3"):
        live.m.enqueue_in(sqlite3.connect(":memory:"), "add", {"a": 1, "b": 1})
    with pytest.raises(martinet.BadInput, match="needs a PostgreSQL connection"):
        live.m.enqueue_in(object(), "add", {"a": 1, "b": 1})
    with pytest.raises(martinet.BadInput, match="args must be"):
        live.m.enqueue_in(sqlite3.connect(":memory:"), "add", [1])  # checked before anything is written


def test_each_thread_lends_its_own_connection(live, pg_url):
    m = live.m
    errors: list[BaseException] = []
    ids: list[int] = []

    def app(i: int) -> None:
        try:
            with psycopg2.connect(pg_url) as conn:
                for j in range(5):
                    ids.append(m.enqueue_in(conn, "add", {"a": i, "b": j}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=app, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors and len(set(ids)) == 20
    assert sorted(m.wait(i, timeout=WAIT) for i in ids) == sorted(i + j for i in range(4) for j in range(5))


def test_the_notes_of_a_turn_rolled_back_are_not_lost(pg_url, make_core, monkeypatch):
    """A turn that heard of a task waiting on one that has succeeded meanwhile, and then
    failed to commit: the next turn looks at every waiting task, and releases it."""
    import peewee

    from martinet.protocol import Cmd

    core = make_core(pg_url)
    core.hello("w", ["add"])
    parent = core.submit("add")
    core.claim()
    conn = psycopg2.connect(pg_url)
    try:
        with martinet.Martinet.connect("tcp://127.0.0.1:9") as m:
            child = m.enqueue_in(conn, "add", {"a": 1, "b": 1}, after=[parent])
        core.turn(
            status=[(Cmd.ENDED, {"worker_id": "w", "ended": [{"id": parent, "attempt": 1, "ok": True}]})]
        )
        conn.commit()  # after the parent's end, which saw no task waiting on it
    finally:
        conn.close()
    server = core.server

    def failing(*args, **kwargs):
        raise peewee.OperationalError("a test made the commit fail")

    monkeypatch.setattr(server.hub, "record", failing)
    server.turn([], [], [], core.now, [{"queue": "default", "waiting": [child]}])  # rolled back
    monkeypatch.undo()
    server.turn([], [], [], core.now)  # heard nothing new
    assert core.request("get", id=child)["item"]["status"] in ("queued", "leased")


class Counted:
    """A psycopg2 connection that counts the statements sent on it (one round trip each)."""

    def __init__(self, url: str, autocommit: bool) -> None:
        sent: list[str] = []
        self.sent = sent

        class Counting(psycopg2.extensions.cursor):
            def execute(self, sql, params=None):
                sent.append(sql)
                return super().execute(sql, params)

        self.conn = psycopg2.connect(url, cursor_factory=Counting)
        self.conn.autocommit = autocommit


def notes(listener, app) -> list[dict]:
    """The notes on CHANGES committed before now: those heard before a last one sent now
    from `app`'s connection (PostgreSQL delivers them in commit order)."""
    from martinet.store.app_transaction import CHANGES

    with app.conn.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, 'end')", (CHANGES,))
    app.conn.commit()
    got: list[dict] = []
    deadline = time.monotonic() + WAIT
    while True:
        select.select([listener], [], [], max(0.0, deadline - time.monotonic()))
        listener.poll()
        while listener.notifies:
            payload = listener.notifies.pop(0).payload
            if payload == "end":
                return got
            got.append(json.loads(payload))
        assert time.monotonic() < deadline, "the last note never came"


@pytest.mark.parametrize("autocommit", [True, False])
def test_a_task_with_neither_key_nor_parents_is_one_statement_and_told_only_when_made(pg_url, autocommit):
    """Its INSERT and its NOTIFY go in one statement: one round trip, and in autocommit
    mode no BEGIN and COMMIT of its own (the statement is atomic by itself). A request_id
    already used makes nothing and tells nothing."""
    from martinet.store import open_database
    from martinet.store.app_transaction import CHANGES

    open_database(pg_url).close()  # the tables, as `martinet serve` makes them
    listener = psycopg2.connect(pg_url)
    listener.autocommit = True
    listener.cursor().execute(f"LISTEN {CHANGES}")
    app = Counted(pg_url, autocommit)
    try:
        m = martinet.Martinet.connect("tcp://127.0.0.1:9")
        tid = m.enqueue_in(app.conn, "add", {"a": 1, "b": 2}, request_id="once")
        later = m.enqueue_in(app.conn, "add", {"a": 1, "b": 2}, queue="slow", run_at=60)
        assert tid.created and later.created
        assert len(app.sent) == 2 and all(sql.startswith("WITH made AS (INSERT") for sql in app.sent)
        app.conn.commit()
        (first, second) = notes(listener, app)
        assert first == {"queue": "default"} and second["queue"] == "slow" and second["run_at"] > time.time()
        app.sent.clear()
        again = m.enqueue_in(app.conn, "add", {"a": 1, "b": 2}, request_id="once")
        assert again == tid and not again.created
        assert len(app.sent) == 2  # the INSERT that stood back, then the read of the task it names
        app.conn.commit()
        assert notes(listener, app) == []
    finally:
        app.conn.close()
        listener.close()
