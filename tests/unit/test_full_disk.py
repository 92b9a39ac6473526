"""A full disk says so: to clients, in `martinet ping`, and once in the log; a worker that
cannot write its journal takes no tasks until it can, and never exits for it.

In process, with the time passed in. SQLite's max_page_count makes a database "full"
(SQLITE_FULL, "database or disk is full") without a full disk; set as a permanent pragma,
it survives the daemon's reconnect after a failed turn.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from types import SimpleNamespace

import peewee
import pytest
import zmq

from martinet import cli, protocol
from martinet import outbox as outbox_module
from martinet.api import Martinet
from martinet.config import Settings
from martinet.dbhealth import REMIND_EVERY, describe
from martinet.messages import Task
from martinet.outbox import JOURNAL_RETRY
from martinet.protocol import Cmd
from martinet.server.loop import Daemon
from martinet.store import Store, iso, open_database
from martinet.worker import Worker
from tests.fakes import FakeSocket, header
from tests.harness import wait_for

NOW = 1_800_000_000.0
BIG = {"blob": "x" * 100_000}  # more pages than a full database can find


def fill(db: peewee.SqliteDatabase, room: bool = False) -> None:
    """No page more for this database (or room again), on this connection and the next."""
    pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
    db.pragma("max_page_count", 1 << 30 if room else pages, permanent=True)


# ---- the daemon ------------------------------------------------------------------------


class InProcess:
    """A daemon on its own SQLite file, driven turn by turn, and one client socket."""

    def __init__(self, tmp_path) -> None:
        self.path = tmp_path / "martinet.db"
        settings = Settings(db=f"sqlite:///{self.path}", client_port=0, worker_port=0, status_port=0)
        self.daemon = Daemon(settings, clock=lambda: NOW)
        self.daemon.open()
        self.ctx = zmq.Context()
        self.client = self.ctx.socket(zmq.DEALER)
        self.client.setsockopt(zmq.LINGER, 0)
        self.client.connect(f"tcp://127.0.0.1:{self.daemon.ports['client']}")
        self.rids = 0

    def request(self, op: str, now: float, **fields) -> dict:
        """One request, one turn of the daemon's loop at `now`, its reply."""
        self.rids += 1
        self.client.send_multipart(protocol.encode(Cmd.REQUEST, {"op": op, "rid": str(self.rids), **fields}))
        d = self.daemon
        assert d.client in dict(d.poller.poll(10_000)), "the request did not arrive"
        d._turn({d.client: zmq.POLLIN}, now)
        assert self.client.poll(5_000), f"no reply to {op}"
        _cmd, reply = protocol.decode(self.client.recv_multipart())
        assert reply["rid"] == str(self.rids)
        return reply

    def close(self) -> None:
        self.client.close(0)
        self.ctx.term()
        self.daemon.close()


@pytest.fixture
def served(tmp_path):
    s = InProcess(tmp_path)
    yield s
    s.close()


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_full_database_is_named_to_clients_in_ping_and_once_in_the_log(served, caplog):
    caplog.set_level(logging.INFO)
    full = f"the disk holding {served.path} is full (SQLITE_FULL)"
    # Given a daemon whose database has no room left
    fill(served.daemon.store.db)
    # When a client submits a task
    reply = served.request("execute", NOW, name="resize", args=BIG)
    # Then it is told why, not "cannot rollback - no transaction is active"
    assert reply["ok"] is False and reply["error"]["type"] == "StoreError"
    assert full in reply["error"]["message"] and "not carried out" in reply["error"]["message"]
    # And ping says so, since when, until a commit succeeds again
    assert served.request("execute", NOW + 1, name="resize", args=BIG)["ok"] is False
    ping = served.request("ping", NOW + 2)
    assert ping["ok"] is True
    assert ping["database"] == {"error": full, "since": iso(NOW), "failures": 2}
    # And the log said it once, not once a turn, then again after REMIND_EVERY
    assert len(errors(caplog)) == 1 and full in errors(caplog)[0]
    served.request("execute", NOW + REMIND_EVERY, name="resize", args=BIG)
    assert len(errors(caplog)) == 2 and "3 turn(s)" in errors(caplog)[1]
    # When there is room again, a turn that commits nothing proves nothing
    fill(served.daemon.store.db, room=True)
    assert served.request("ping", NOW + 61)["database"]["failures"] == 3
    # But one that writes ends the trouble
    created = served.request("execute", NOW + 62, name="resize", args=BIG)
    assert created["ok"] is True and created["created"] is True
    assert served.request("ping", NOW + 63)["database"] is None
    assert any("commits succeed again" in r.getMessage() for r in caplog.records)
    assert len(errors(caplog)) == 2


def test_a_failed_commit_raises_its_own_error_not_its_rollback(tmp_path):
    store = Store(open_database(f"sqlite:///{tmp_path / 'm.db'}"))
    try:
        with pytest.raises(peewee.OperationalError, match="cannot commit"):
            with store.atomic():
                store.db.execute_sql("ROLLBACK")  # SQLite ended it (SQLITE_FULL at COMMIT, say)
        with store.atomic():  # and the next transaction is fine
            store.db.execute_sql("SELECT 1")
    finally:
        store.close()


class FakePgError(Exception):
    pgcode = "53100"


class FakeMySQLError(Exception):
    pass


def wrapped(driver: Exception) -> peewee.OperationalError:
    return peewee.OperationalError(driver, *driver.args)  # as peewee wraps a driver's error


@pytest.mark.parametrize(
    "exc, said",
    [
        (wrapped(sqlite3.OperationalError("database or disk is full")), "the disk is full (SQLITE_FULL)"),
        (wrapped(FakePgError('could not extend file "base/1/2": No space left on device')), "PostgreSQL"),
        (wrapped(FakeMySQLError(1114, "The table 'task' is full")), "MySQL server's disk or table space"),
        (
            wrapped(FakeMySQLError(3, "Error writing file (Errcode: 28 - No space left on device)")),
            "disk is full",
        ),
        (wrapped(sqlite3.OperationalError("database is locked")), "database error: database is locked"),
    ],
)
def test_describe_names_a_full_disk_on_every_backend(exc, said):
    assert said in describe(exc)


# ---- `martinet ping` -----------------------------------------------------------------------


def test_martinet_ping_shows_the_database_trouble_and_exits_1_while_it_lasts(capsys):
    args = SimpleNamespace(json=False)
    well = {"epoch": "e1", "version": 2, "workers": 3, "database": None}
    assert cli.cmd_ping(SimpleNamespace(ping=lambda: well), args) == 0
    assert "3 worker(s)" in capsys.readouterr().out
    trouble = {"error": "the disk holding /d/m.db is full (SQLITE_FULL)", "since": iso(NOW), "failures": 4}
    assert cli.cmd_ping(SimpleNamespace(ping=lambda: {**well, "database": trouble}), args) == 1
    out = capsys.readouterr().out
    assert f"database: the disk holding /d/m.db is full (SQLITE_FULL) since {iso(NOW)}" in out


# ---- the worker's journal ------------------------------------------------------------------


@pytest.fixture
def worker(tmp_path):
    """A worker with a journal and fake sockets; its handlers are run by the test."""
    w = Worker(handlers={"add": lambda task, a, b: a + b}, journal=tmp_path / "w.journal", worker_id="w1")
    w.wsock, w.ssock = FakeSocket(), FakeSocket()
    w._welcomed = True  # (a worker reports to the daemon that welcomed it)
    yield w
    w._journal.close()


def task(w: Worker, task_id: int) -> None:
    """The daemon sends a task: it waits for a thread."""
    w._on_task(Task.from_item({"id": task_id, "attempt": 1, "name": "add", "args": {"a": 1, "b": 2}}))


def finish(w: Worker) -> int:
    """A handler thread runs the next waiting task; the loop drains its outcome."""
    ctx = w._jobs.get_nowait()
    w._report(w._execute(ctx))
    w._drain_events()
    return ctx.id


def fill_journal(w: Worker, room: bool = False) -> None:
    db = w._journal._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {1 << 30 if room else pages}")
    if not room:
        w._journal.ended("", 0, 1, b"x" * 100_000)  # an outcome that needs pages it cannot have


def journaled(w: Worker) -> list[int]:
    return [task_id for _database, task_id, _attempt, _body in w._journal.recover()]


def test_a_worker_that_cannot_journal_takes_no_tasks_until_it_can(worker, caplog):
    caplog.set_level(logging.INFO)
    w = worker
    w._last_heard = w._next_heartbeat = 1e9  # no heartbeats or reconnects in this test
    task(w, 7)
    task(w, 9)  # waits for a thread
    # Given a journal whose disk is full
    fill_journal(w)
    # When a task ends
    assert finish(w) == 7  # raised JournalError, which ended the worker, before
    # Then its outcome still goes to the daemon, and stays in the outbox until acked
    assert w.ssock.take(Cmd.ENDED) and (7, 1) in w.outbox.pending
    # And the worker takes nothing more: a hello without names, the waiting task handed back
    assert [h["names"] for h in w.wsock.take(Cmd.HELLO)] == [[]]
    assert [(h["id"], h["reason"]) for h in w.wsock.take(Cmd.REJECT)] == [
        (9, "worker w1 cannot write its journal")
    ]
    task(w, 8)  # one already on its way
    assert [h["id"] for h in w.wsock.take(Cmd.REJECT)] == [8] and 8 not in w._running
    assert header(w._hello_message())["names"] == []  # after a reconnect too
    # And its log says why
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"worker w1: cannot write the journal {w._journal.path}: database or disk is full; taking no tasks "
        f"until it can be written (trying every {JOURNAL_RETRY:g}s); results in hand are sent without it, "
        "tasks not started go back to the daemon"
    ]
    # When its time to try again has not come: nothing is tried
    retry_at = w.outbox.retry_at
    w._timers(retry_at - JOURNAL_RETRY / 2)
    assert w.outbox.retry_at == retry_at
    # When it tries again, with the disk still full: it waits on, and says nothing more
    w._timers(retry_at)
    assert w.outbox.trouble is not None and w.outbox.retry_at == retry_at + JOURNAL_RETRY
    assert (
        w.wsock.take(Cmd.HELLO) == [] and len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    )
    # When there is room again, the next try writes what it holds, and it takes tasks again
    fill_journal(w, room=True)
    w._timers(retry_at + JOURNAL_RETRY)
    assert w.outbox.trouble is None
    assert sorted(journaled(w)) == [0, 7]  # the outcome it held is journaled after all
    assert [h["names"] for h in w.wsock.take(Cmd.HELLO)] == [["add"]]
    task(w, 10)
    assert finish(w) == 10 and 10 in journaled(w) and w.wsock.take(Cmd.REJECT) == []
    assert any("journal written again" in r.getMessage() for r in caplog.records)


def test_an_outcome_acked_before_the_journal_came_back_is_not_kept(worker):
    w = worker
    w._last_heard = w._next_heartbeat = 1e9
    task(w, 7)
    fill_journal(w)
    finish(w)
    assert w.outbox.trouble is not None
    # The daemon committed and acked it while the journal could not be written
    w.outbox.pending.pop((7, 1))
    w._journal.acked("", 7, 1, w.outbox.retry_at)
    fill_journal(w, room=True)
    w._timers(w.outbox.retry_at)
    assert w.outbox.trouble is None and journaled(w) == [0]


def test_a_worker_whose_journal_fills_up_is_sent_nothing_until_it_has_room(tmp_path, monkeypatch):
    """The story with a real daemon and worker (threads of this process, real sockets)."""
    monkeypatch.setattr(outbox_module, "JOURNAL_RETRY", 0.2)
    settings = Settings(db=f"sqlite:///{tmp_path / 'm.db'}", client_port=0, worker_port=0, status_port=0)
    daemon = Daemon(settings)
    daemon.open()
    handlers = {"add": lambda task, a, b: a + b, "big": lambda task, n: "x" * n}
    w = Worker(
        handlers=handlers, journal=tmp_path / "w.journal", worker_id="w1", concurrency=1,
        worker_port=daemon.ports["worker"], status_port=daemon.ports["status"],
    )  # fmt: skip
    threads = [threading.Thread(target=daemon.run), threading.Thread(target=w.run)]
    for t in threads:
        t.start()
    m = Martinet.connect(f"tcp://127.0.0.1:{daemon.ports['client']}", 10)
    try:
        wait_for(lambda: m.ping()["workers"] == 1, what="the worker")
        # Given a worker whose journal has no room for a large result
        pages = w._journal._db.execute("PRAGMA page_count").fetchone()[0]
        w._journal._db.execute(f"PRAGMA max_page_count = {pages}")
        # When its handler returns one: the result arrives all the same
        assert len(m.wait(m.execute("big", {"n": 100_000}), timeout=10)) == 100_000
        # And the daemon sends it nothing more: it said hello with no task names
        wait_for(lambda: daemon.peers.get("w1").names == set(), what="a hello without names")
        waiting = m.execute("add", {"a": 2, "b": 2})
        assert m.get(waiting)["status"] == "queued"
        # When its journal has room again, it takes the task at its next try
        w._journal._db.execute("PRAGMA max_page_count = 1073741823")
        assert m.wait(waiting, timeout=10) == 4
        assert w.worker_id == "w1" and threads[1].is_alive()  # it never exited
    finally:
        m.close()
        w.stop()
        threads[1].join(10)
        daemon.stop()
        threads[0].join(10)
