"""What a turn costs on SQLite, in statements: an execute is its INSERT between BEGIN and
COMMIT, with no savepoint and no lookup of its request id (SqlKit.skipping_savepoints,
Tasks._submit_plain); and what a request that fails after it wrote costs instead: its
turn, taken again with savepoints, so that it alone is undone. Counted with SQLite's
own trace of the statements it runs."""

from __future__ import annotations

import logging

import pytest

from martinet.errors import BadInput
from martinet.protocol import Cmd
from martinet.server import ops


class Statements:
    """Every statement the daemon's SQLite connection runs, as SQLite traces it."""

    def __init__(self, db) -> None:
        self.run: list[str] = []
        db.connection().set_trace_callback(self.run.append)

    def take(self) -> list[str]:
        taken, self.run[:] = [s.split(" ", 1)[0].upper() for s in self.run], []
        return taken


def execute(rid: str, **fields) -> tuple[Cmd, dict]:
    return Cmd.REQUEST, {"op": "execute", "rid": rid, "name": "t", "args": {}, **fields}


def replies(sent) -> dict:
    return {h["rid"]: h for sock, _ident, _cmd, h in sent if sock == "client"}


@pytest.fixture
def core(sqlite_url, make_core):
    core = make_core(sqlite_url)
    core.turn()  # the first turn's tick (leases, retention, ...) out of the way
    return core


@pytest.mark.parametrize("request_id", [None, "req-1"], ids=["no request id", "request id"])
def test_an_execute_is_its_insert_between_begin_and_commit(core, request_id):
    statements = Statements(core.store.db)
    sent = core.turn(client=[execute("r1", request_id=request_id)])
    assert statements.take() == ["BEGIN", "INSERT", "COMMIT"]
    first = replies(sent)["r1"]
    assert first["ok"] and first["created"]
    if request_id is not None:  # sent again: the task it made, nothing inserted
        again = replies(core.turn(client=[execute("r2", request_id=request_id)]))["r2"]
        assert (again["id"], again["created"]) == (first["id"], False)
        assert "SELECT" in statements.take()
    statements.take()
    assert names(core) == ["t"]


def names(core) -> list[str]:
    return [name for (name,) in core.store.db.execute_sql("SELECT name FROM task ORDER BY id").fetchall()]


def test_a_request_that_fails_after_it_wrote_is_undone_alone_and_its_turn_taken_again(
    core, monkeypatch, caplog
):
    def write_then_fail(r: ops.Request) -> None:
        r.core.store.submit({"name": "spoiled", "args": {}, "max_attempts": 1}, r.now)
        raise BadInput("refused after a write")

    monkeypatch.setitem(ops.OPS, "write_then_fail", write_then_fail)
    statements = Statements(core.store.db)
    with caplog.at_level(logging.DEBUG, logger="martinet.daemon"):
        sent = core.turn(
            client=[execute("a"), (Cmd.REQUEST, {"op": "write_then_fail", "rid": "bad"}), execute("b")]
        )
    got = replies(sent)
    assert got["a"]["ok"] and got["b"]["ok"]
    assert not got["bad"]["ok"] and got["bad"]["error"]["message"] == "refused after a write"
    run = statements.take()
    assert names(core) == ["t", "t"]  # the spoiled task is gone; the others' stand
    assert "taking the turn again" in caplog.text
    # Once without savepoints (rolled back), then with one for each request
    assert run.count("BEGIN") == 2 and run.count("ROLLBACK") == 2 and run.count("COMMIT") == 1, run
    assert run.count("SAVEPOINT") == 3, run


def test_a_request_that_fails_before_it_wrote_costs_no_second_take(core, caplog):
    statements = Statements(core.store.db)
    with caplog.at_level(logging.DEBUG, logger="martinet.daemon"):
        sent = core.turn(client=[execute("a"), execute("bad", max_attempts="many"), execute("b")])
    got = replies(sent)
    assert got["a"]["ok"] and got["b"]["ok"] and not got["bad"]["ok"]
    assert "taking the turn again" not in caplog.text
    assert statements.take() == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
