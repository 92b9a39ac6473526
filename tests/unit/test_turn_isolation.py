"""A turn is one transaction, but a bad request or outcome in it costs only itself: its
writes are undone (a savepoint) and the good ones of the same turn stand, on every
backend. On PostgreSQL the savepoints travel with the statements they wrap
(store/pg.py): these stories hold there as they do where each is a statement apart."""

from __future__ import annotations

import dataclasses
import json

import peewee
import pytest

from martinet.protocol import Cmd
from martinet.server import ops


def hello(worker_id: str) -> tuple[bytes, Cmd, dict]:
    return worker_id.encode(), Cmd.HELLO, {"worker_id": worker_id, "names": ["t"], "capacity": 1}


def execute(rid: str) -> tuple[Cmd, dict]:
    return Cmd.REQUEST, {"op": "execute", "rid": rid, "name": "t", "args": {}}


def replies(sent: list) -> dict[str, dict]:
    return {h["rid"]: h for sock, _ident, cmd, h in sent if sock == "client" and cmd == Cmd.REPLY}


def refused_by_the_database(store) -> None:
    """A statement the database refuses (a duplicate key): on PostgreSQL it aborts the
    transaction up to the last savepoint."""
    store._exec(
        "INSERT INTO database_identity (database_id, created_at) SELECT database_id, created_at FROM database_identity"
    )


@pytest.mark.parametrize("failure", ["database", "python"])
def test_a_request_that_fails_after_writing_spoils_none_of_the_others_in_its_turn(
    db_url, make_core, monkeypatch, failure
):
    core = make_core(db_url)

    def writes_then_fails(r):
        ops.execute(dataclasses.replace(r, header={"name": "t", "args": {}}))
        if failure == "database":
            refused_by_the_database(r.core.store)
        raise RuntimeError("a bug of ours, after a write")

    monkeypatch.setitem(ops.OPS, "writes_then_fails", writes_then_fails)
    core.turn(worker=[hello("w1")])
    # Given a turn with good requests on either side of one that writes, then fails
    sent = core.turn(
        client=[execute("a"), (Cmd.REQUEST, {"op": "writes_then_fails", "rid": "bad"}), execute("b")]
    )
    # Then the bad one is refused, its write undone, and the good ones are committed
    answers = replies(sent)
    assert answers["a"]["ok"] and answers["b"]["ok"]
    assert not answers["bad"]["ok"]
    assert answers["bad"]["error"]["type"] == ("BadInput" if failure == "database" else "InternalError")
    ids = [answers[rid]["id"] for rid in ("a", "b")]
    assert [row[0] for row in core.store._exec("SELECT id FROM task ORDER BY id")] == ids
    assert [json.loads(body)["id"] for _id, _at, body in core.store.events_after(0, 100)] == []
    # And the next turn goes on as usual
    assert replies(core.turn(client=[execute("c")]))["c"]["ok"]


def test_an_outcome_the_database_refuses_spoils_none_of_the_others_in_its_turn(
    db_url, make_core, monkeypatch
):
    core = make_core(db_url)
    core.turn(worker=[hello("w1"), hello("w2")])
    good, bad = core.submit("t"), core.submit("t")
    core.turn()  # one to each worker
    workers = {task_id: core.store.get_task(task_id).worker for task_id in (good, bad)}
    settle = core.store._settle_dependents

    def refuses_the_bad_one(row, status, now):
        if row.id == bad:
            refused_by_the_database(core.store)
        return settle(row, status, now)

    monkeypatch.setattr(core.store, "_settle_dependents", refuses_the_bad_one)
    # Given one turn with both workers' starts and outcomes, one of which the database refuses
    status = [
        (
            Cmd.ENDED,
            {"worker_id": workers[t], "started": [[t, 1]], "ended": [{"id": t, "attempt": 1, "ok": True}]},
        )
        for t in (good, bad)
    ]
    sent = core.turn(status=status)
    # Then the good one is written and acknowledged, the bad one neither (its worker sends it again)
    acks = [item for sock, _ident, cmd, h in sent if sock == "status" for item in h["acks"]]
    assert acks == [[good, 1]]
    assert core.store.get_task(good).status == "succeeded"
    assert core.store.get_task(bad).status == "running"  # its start stands: written before the outcomes
    assert [json.loads(body)["id"] for _id, _at, body in core.store.events_after(0, 100)] == [good]
    # And when it comes again, with the database willing, it is written
    monkeypatch.setattr(core.store, "_settle_dependents", settle)
    core.turn(status=status[1:])
    assert core.store.get_task(bad).status == "succeeded"


def test_a_turn_that_writes_nothing_commits_without_a_word_to_the_database(db_url, make_core):
    core = make_core(db_url)
    core.turn()
    assert core.store.db.in_transaction() is False
    with pytest.raises(peewee.IntegrityError):  # the connection is usable, not left mid-transaction
        with core.store.atomic():
            refused_by_the_database(core.store)
    assert replies(core.turn(client=[execute("a")]))["a"]["ok"]


def test_events_recorded_with_the_commit_keep_every_character(db_url, make_core):
    # (with no one subscribed, PostgreSQL sends a turn's events with its COMMIT, bound there)
    core = make_core(db_url)
    core.turn(worker=[hello("w1")])
    task = core.submit("t")
    core.turn()
    message = "50% done, %s %(x)s ' \" \\ ;"
    progress = {"worker_id": "w1", "id": task, "attempt": 1, "progress": 0.5, "message": message, "name": "t"}
    core.turn(status=[(Cmd.PROGRESS, progress)])
    ((_id, _at, body),) = core.store.events_after(0, 100)
    assert json.loads(body)["message"] == message
