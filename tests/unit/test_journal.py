"""The worker's journal: a worker killed and started again sends the results it had, so a
handler that finished is not run again because its result died with it. In process here
(a Worker on a FakeSocket, the daemon's side on tests/core.py); the kill and restart stories
with real processes are in tests/e2e/test_journal.py."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3

import pytest

from martinet import cli, protocol
from martinet.errors import JournalError
from martinet.journal import ACK_DELAY, FORMAT, UNKNOWN, Journal
from martinet.messages import Hello, Task, Welcome
from martinet.present import attempt_infos, maybe_task_info
from martinet.protocol import Cmd
from martinet.server.outbox import Outbox
from martinet.server.outcomes import on_status_batch
from martinet.server.workers import on_hello
from martinet.worker import Worker
from tests.core import Core
from tests.fakes import FakeSocket, header


def journal_rows(path, table: str) -> int:
    db = sqlite3.connect(path)  # WAL: read beside the worker that writes it
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


# ---- refusals: in process, before the worker connects ------------------------------------------


def test_a_journal_in_use_is_refused_naming_its_holder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MARTINET_CONFIG", raising=False)
    path = tmp_path / "w.journal"
    holder = Journal.open(path)
    try:
        assert cli.worker_main(["tests.tasks", "--journal", str(path)]) == 1
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert err == f"martinet-worker: error: journal {path} is in use by another worker (pid {os.getpid()})\n"


def test_a_corrupt_journal_is_refused_with_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MARTINET_CONFIG", raising=False)
    path = tmp_path / "w.journal"
    path.write_bytes(b"this is not a database" * 100)
    assert cli.worker_main(["tests.tasks", "--journal", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"martinet-worker: error: journal {path} cannot be read (file is not a database)")
    assert "move it aside" in err and err.count("\n") == 1
    with pytest.raises(JournalError, match="cannot be read"):  # not "in use": the refusal let go of its lock
        Journal.open(path)


# ---- the journal itself ---------------------------------------------------------------------


def test_outcomes_are_committed_at_once_and_acks_ride_along_later(tmp_path):
    path = tmp_path / "j"
    j = Journal.open(path)
    assert j.claim_worker_id(None, "fresh-1") == "fresh-1"
    j.ended("A", 1, 1, b'{"id": 1}')
    j.ended("A", 2, 1, b'{"id": 2}')
    j.commit(0.0)  # one transaction for the pass
    assert journal_rows(path, "outcome") == 2
    j.acked("A", 1, 1, 10.0)
    j.commit(10.5)  # an ack alone waits...
    assert journal_rows(path, "outcome") == 2
    j.ended("A", 3, 2, b'{"id": 3}')
    j.commit(10.6)  # ...for the next outcome to ride along with
    assert journal_rows(path, "outcome") == 2
    j.acked("A", 2, 1, 11.0)
    j.commit(11.0 + ACK_DELAY)  # or for ACK_DELAY
    assert journal_rows(path, "outcome") == 1
    j.acked("A", 3, 2, 20.0)
    j.close()  # closing writes what is buffered
    j = Journal.open(path)
    assert j.claim_worker_id(None, "fresh-2") == "fresh-1"  # a restart keeps its worker id
    assert j.recover() == [] and j.is_empty()
    j.ended("A", 4, 1, b'{"id": 4}')
    j.commit(0.0)
    j.close()
    j = Journal.open(path)
    assert j.recover() == [("A", 4, 1, b'{"id": 4}')]
    with pytest.raises(
        JournalError, match="holds results of worker 'fresh-1'; start it with --worker-id fresh-1"
    ):
        j.claim_worker_id("other", "fresh-3")
    j.acked("A", 4, 1, 0.0)
    j.commit(0.0, force=True)
    assert j.claim_worker_id("other", "fresh-3") == "other"  # empty: free to take another id
    j.close()


def test_default_journals_live_in_the_state_directory_one_per_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("MARTINET_STATE_DIR", str(tmp_path / "state"))
    host = socket.gethostname()
    here = tmp_path / "state" / "127.0.0.1-8009"  # a folder for each daemon address
    named = Journal.open_default("images/1", "127.0.0.1:8009")
    first, second = Journal.open_default(None, "127.0.0.1:8009"), Journal.open_default(None, "127.0.0.1:8009")
    other = Journal.open_default(None, "127.0.0.1:9009")  # another daemon's workers: other files
    try:
        assert named.path == here / "worker-images_1.journal"
        assert (first.path, second.path) == (
            here / f"worker-{host}-1.journal",
            here / f"worker-{host}-2.journal",
        )
        assert other.path == tmp_path / "state" / "127.0.0.1-9009" / f"worker-{host}-1.journal"
        with pytest.raises(
            JournalError, match=r"worker-images_1.journal is in use by another worker \(pid \d+\)"
        ):
            Journal.open_default("images/1", "127.0.0.1:8009")
    finally:
        for j in (named, first, second, other):
            j.close()
    monkeypatch.delenv("MARTINET_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    j = Journal.open_default(None, "localhost:8009")
    assert j.path == tmp_path / "xdg" / "martinet" / "localhost-8009" / f"worker-{host}-1.journal"
    j.close()


# ---- one journal, one database: outcomes never go to a daemon of another --------------------


def test_the_journal_keeps_each_outcome_with_its_database(tmp_path):
    j = Journal.open(tmp_path / "j")
    assert j.database() is None  # a new journal: no daemon welcomed its worker yet
    j.tie("A")
    j.ended("A", 1, 1, b"a")
    j.ended("B", 1, 1, b"b")  # the same task id and attempt, another database's: another outcome
    j.commit(0.0)
    j.acked("B", 1, 1, 0.0)
    j.commit(0.0, force=True)
    j.tie("B")
    j.close()
    j = Journal.open(tmp_path / "j")
    assert j.recover() == [("A", 1, 1, b"a")] and j.database() == "B"
    j.close()


def test_a_format_1_journal_is_upgraded_and_its_outcomes_are_for_no_known_database(tmp_path):
    # Given a journal written by the martinet before databases had an identity
    path = tmp_path / "old.journal"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE outcome (id INTEGER NOT NULL, attempt INTEGER NOT NULL, body BLOB NOT NULL,"
        " PRIMARY KEY (id, attempt)) WITHOUT ROWID;"
        "INSERT INTO meta VALUES ('format', '1'), ('worker_id', 'w-old');"
        "INSERT INTO outcome VALUES (1, 1, X'7B7D');"
    )
    db.commit()
    db.close()
    # When it is opened: its worker id holds, its outcome is kept as for an UNKNOWN database
    j = Journal.open(path)
    assert j.meta("format") == FORMAT and j.claim_worker_id(None, "fresh") == "w-old"
    assert j.recover() == [(UNKNOWN, 1, 1, b"{}")] and j.database() is None
    j.close()


def boom(task):
    raise RuntimeError("kaboom")


def start_worker(path) -> Worker:
    """A worker on journal `path` whose sockets the test reads; it runs what the test says."""
    w = Worker(handlers={"boom": boom}, journal=path, worker_id="w1")
    w.wsock, w.ssock = FakeSocket(), FakeSocket()
    w._welcomed = True  # (a worker reports to the daemon that welcomed it)
    w._last_heard = w._next_heartbeat = 1e12  # no heartbeats or reconnects
    return w


def welcome(w: Worker, database: str | None) -> None:
    w._on_welcome(
        Welcome.from_header({"epoch": "e", "heartbeat_interval": 1.0, "liveness": 3, "database": database})
    )


def ended(w: Worker) -> list[tuple[int, int, str]]:
    return [
        (e["id"], e["attempt"], e["error"]["message"]) for m in w.ssock.take(Cmd.ENDED) for e in m["ended"]
    ]


def test_a_worker_sends_an_outcome_only_to_a_daemon_of_its_database(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="martinet.worker")
    path = tmp_path / "w1.journal"
    # Given a worker of database A whose task 1 failed, killed before A acknowledged the outcome
    w = start_worker(path)
    welcome(w, "A")
    w._on_task(Task.from_item({"id": 1, "attempt": 1, "name": "boom", "args": {}}))
    w._report(w._execute(w._jobs.get_nowait()))
    w._drain_events()
    assert [m["ended"][0]["database"] for m in w.ssock.take(Cmd.ENDED)] == ["A"]  # marked: B refuses it
    w._journal.close()
    # When it starts again on its journal: its hello says it holds it, for A
    w = start_worker(path)
    assert header(w._hello_message())["running"] == [
        {"id": 1, "attempt": 1, "started": True, "database": "A"}
    ]
    # When the daemon that welcomes it is of database B
    welcome(w, "B")
    # Then the outcome is not sent, and no later hello says it holds it for B (only kept for A)
    assert ended(w) == []
    assert header(w._hello_message())["running"] == []
    assert header(w._hello_message())["kept"] == [{"id": 1, "attempt": 1, "database": "A"}]
    # And the log says why, where it is and what to do, once
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert told == [
        "worker w1: 1 unacknowledged outcome(s) are for tasks of another database (id A) than this "
        f"daemon's (id B): they are kept in the journal {path}, not sent here, where tasks with the same "
        "ids are other tasks. They go to a daemon of that database when this worker talks to one again; "
        f"if that database is gone, stop this worker and delete {path} to drop them"
    ]
    # And B's own task 1 attempt 1 gets its own outcome, beside A's in the journal
    w._on_task(Task.from_item({"id": 1, "attempt": 1, "name": "boom", "args": {}}))
    w._report(w._execute(w._jobs.get_nowait()))
    w._drain_events()
    assert ended(w) == [(1, 1, "kaboom")]
    assert sorted(d for d, *_ in w._journal.recover()) == ["A", "B"]
    w.outbox.pending.pop((1, 1))
    w._journal.acked("B", 1, 1, 0.0)
    w._journal.commit(0.0, force=True)
    welcome(w, "B")  # a daemon of B again: still nothing of A's, said once only
    assert ended(w) == [] and len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    # When a daemon of A welcomes it: the outcome goes to it
    welcome(w, "A")
    assert ended(w) == [(1, 1, "kaboom")]
    w._journal.close()


def test_an_older_daemon_gets_no_outcome_of_a_known_database(tmp_path):
    path = tmp_path / "w1.journal"
    w = start_worker(path)
    welcome(w, "A")
    w._on_task(Task.from_item({"id": 1, "attempt": 1, "name": "boom", "args": {}}))
    w._report(w._execute(w._jobs.get_nowait()))
    w._drain_events()
    w.ssock.take(Cmd.ENDED)
    welcome(w, None)  # a daemon that does not say its database: it may be any
    assert ended(w) == [] and header(w._hello_message())["running"] == []
    w._journal.close()


def test_a_daemon_takes_no_held_attempt_or_outcome_marked_for_another_database(db_url, caplog):
    core = Core(db_url)
    d = core.server
    try:
        me = d.database_id
        # Given task 1 of this database running on w1, attempt 1
        tid = core.submit("boom")
        sent = core.hello("w1", ["boom"]).worker
        assert [r["id"] for r in core.claim()["w1"]] == [tid]
        assert [m.database for _ident, m in sent if isinstance(m, Welcome)] == [me]  # the welcome says which

        session = d.peers.get("w1").session  # (a reconnecting worker proves itself with it)

        def hello(ident: bytes, running=(), kept=()) -> None:
            header = {"worker_id": "w1", "names": ["boom"], "capacity": 4, "running": running, "kept": kept,
                      "session": session}  # fmt: skip
            with core.store.atomic():
                on_hello(d, ident, Hello.from_header(header), Outbox(), core.now)

        def ended(*outcomes: dict) -> Outbox:
            out = Outbox()
            header = {"worker_id": "w1", "ended": list(outcomes), "session": session}
            frames = protocol.encode(Cmd.ENDED, header)
            with core.store.atomic():
                on_status_batch(d, [(b"status", frames)], out, core.now)
            return out

        # When w1 comes back saying it holds task 1 attempt 1, for another database
        hello(b"w1-again", running=[{"id": tid, "attempt": 1, "database": "other"}])
        # Then that is not this task 1: it was not readopted, its attempt is lost
        assert [(a["attempt"], a["outcome"]) for a in attempt_infos(core.store.attempts(tid))] == [
            (1, "lost")
        ]
        # And an outcome for task 1 marked for the other database ends nothing, and is not acked
        core.now += 60
        assert [r["id"] for r in core.claim()["w1"]] == [tid]  # attempt 2 on w1
        failure = {
            "id": tid,
            "attempt": 2,
            "ok": False,
            "error": {"type": "E", "message": "theirs"},
            "final": True,
        }
        out = ended({**failure, "database": "other"})
        assert (
            out.acks == {} and maybe_task_info(core.store.get_task(tid))["status"] == "leased"
        )  # (sent, never started)
        assert "ignored 1 outcome(s) from w1 meant for another database" in caplog.text
        # When w1 comes back once more, keeping aside attempt 2 for this database: readopted
        core.now += 1  # (MySQL counts changed rows only: a readopt in the claim's instant changes none)
        hello(b"w1-third", kept=[{"id": tid, "attempt": 2, "database": me}, {"id": 9, "attempt": 1}])
        assert maybe_task_info(core.store.get_task(tid))["status"] == "leased"
        # And an outcome marked for this database ends it
        out = ended({**failure, "database": me})
        assert (
            out.acks == {b"status": [(tid, 2)]}
            and maybe_task_info(core.store.get_task(tid))["status"] == "dead"
        )
    finally:
        core.close()
