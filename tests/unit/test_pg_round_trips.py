"""What a turn costs on PostgreSQL, in round trips to the server: a few a turn, not one
a statement (docs/performance.md). Counted at the driver, so a statement added to the
hot path, or one sent apart that could go with another, shows here."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from martinet.protocol import Cmd
from martinet.store import open_database
from martinet.store.pg import PREPARE_AT, REPLAN_FIRST
from martinet.store.tasks import TASK_IDS_AHEAD


class Trips:
    """Every query string the daemon's connection sends (one round trip each), and in
    `as_run` each as the server got it, its parameters in it."""

    def __init__(self, db) -> None:
        self.sent: list[str] = []
        self.as_run: list[str] = []
        conn = db.connection()
        base = conn.cursor_factory or type(conn.cursor())
        sent, as_run = self.sent, self.as_run

        class Counting(base):  # type: ignore[misc, valid-type]
            def execute(self, sql, params=None):
                sent.append(sql)
                as_run.append(self.mogrify(sql, params).decode())
                return super().execute(sql, params)

            def executemany(self, sql, seq):
                seq = list(seq)
                sent.extend([sql] * len(seq))
                return super().executemany(sql, seq)

        conn.cursor_factory = Counting

    def take(self) -> list[str]:
        taken, self.sent[:] = list(self.sent), []
        return taken


@pytest.fixture
def core(pg_url, make_core):
    return make_core(pg_url)


def hello(worker_id: str) -> tuple[bytes, Cmd, dict]:
    return worker_id.encode(), Cmd.HELLO, {"worker_id": worker_id, "names": ["t"], "capacity": 1}


def execute(rid: str, request_id: str | None = None) -> tuple[Cmd, dict]:
    """An execute request; `request_id` as a client sends one (sent again with a retry)."""
    header = {"op": "execute", "rid": rid, "name": "t", "args": {}}
    return Cmd.REQUEST, header if request_id is None else {**header, "request_id": request_id}


@pytest.mark.parametrize("request_id", [False, True], ids=["no request id", "request id"])
def test_an_execute_costs_one_round_trip_and_its_dispatch_none_or_one_more(core, request_id):
    def call(rid: str, queue: str = "default") -> tuple[Cmd, dict]:
        cmd, header = execute(rid, f"req-{rid}" if request_id else None)
        return cmd, {**header, "queue": queue}

    core.turn()  # the first turn's tick (leases, retention, ...) out of the way
    for i in range(PREPARE_AT):  # the insert used often enough on this connection: prepared
        core.turn(client=[call(f"r0-{i}")])
    trips = Trips(core.store.db)
    # An execute with no worker connected: BEGIN, its savepoint, the insert (its id taken
    # ahead), the commit, in one string
    core.turn(client=[call("r1")])
    sent = trips.take()
    assert len(sent) == 1 and "EXECUTE martinet_" in sent[0] and sent[0].endswith("COMMIT"), sent
    # Workers of one thread: PREPARE_AT + 1 take the tasks above (the claims prepared, the
    # queue found empty); the others are idle for the calls below
    core.turn(worker=[hello(f"w{i}") for i in range(2 * PREPARE_AT + 4)])
    trips.take()

    def leased(sent: list[tuple[str, bytes, Cmd, dict]]) -> int:
        (reply,) = [h for sock, _i, _c, h in sent if sock == "client"]
        assert [m for m in sent if m[2] is Cmd.TASK and m[3]["tasks"][0]["id"] == reply["id"]], sent
        assert core.store.get_task(reply["id"]).status == "leased"
        return reply["id"]

    # With an idle worker and nothing else ready: the insert, leased to it as it goes in,
    # with the commit (claims.lease_at_once); no claim
    for i in range(PREPARE_AT):
        leased(core.turn(client=[call(f"r2-{i}")]))
    trips.take()
    turn = core.turn(client=[call("r3")])
    sent = trips.take()
    assert len(sent) == 1 and sent[0].endswith("COMMIT") and "FOR UPDATE" not in sent[0], sent
    assert core.store.get_task(leased(turn)).attempt == 1
    # In a queue no claim has looked at yet: the insert with the claim (read, leased,
    # returned at once), the commit
    trips.take()
    turn = core.turn(client=[call("r4", queue="fresh")])
    assert len(trips.take()) == 2
    leased(turn)


def test_a_request_sent_again_is_the_task_it_made_in_an_earlier_or_the_same_turn(core, caplog):
    """A client sends its execute again when the reply is late: the insert (sent with the
    commit) fails on the known request_id, and the turn is taken again, each write at
    once, where the insert stands back and the first task is the answer. An expected
    event, logged at DEBUG, not as a database's trouble."""
    caplog.set_level(logging.DEBUG, logger="martinet.daemon")
    core.turn()
    (first,) = [h for sock, _i, _c, h in core.turn(client=[execute("a", "req-1")]) if sock == "client"]
    assert first["created"] is True
    sent = core.turn(client=[execute("b", "req-1"), execute("c", "req-2"), execute("d", "req-2")])
    replies = {h["rid"]: h for sock, _i, _c, h in sent if sock == "client"}
    assert (replies["b"]["id"], replies["b"]["created"]) == (first["id"], False)
    assert replies["c"]["created"] is True
    assert (replies["d"]["id"], replies["d"]["created"]) == (replies["c"]["id"], False)
    assert core.store._exec("SELECT COUNT(*) FROM task").fetchone()[0] == 2
    retakes = [r for r in caplog.records if "taking the turn again" in r.getMessage()]
    assert retakes and all(r.levelno == logging.DEBUG for r in retakes)
    assert core.server.db_health.trouble is None


def test_two_daemons_taking_task_ids_ahead_never_take_the_same(pg_url, make_core):
    """Each daemon takes its new tasks' ids from the table's sequence, a block at a time:
    blocks of two daemons (and ids the sequence gives other writers) never overlap."""
    one, two = make_core(pg_url), make_core(pg_url)
    made = []
    for i in range(TASK_IDS_AHEAD + 5):
        for name, core in (("one", one), ("two", two)):
            made += [
                h["id"] for sock, _i, _c, h in core.turn(client=[execute(f"{name}{i}")]) if sock == "client"
            ]
    other = one.store._exec("INSERT INTO task (args, queue, priority, attempt, max_attempts, attempt_budget,"
                            " releases, has_parents, has_dependents, cancel_requested, name, status, run_at,"
                            " created_at, updated_at) VALUES ('{}', 'default', 0, 0, 1, 1, 0, false, false,"
                            " false, 'elsewhere', 'queued', 0, 0, 0) RETURNING id", cache=False).fetchone()[0]  # fmt: skip
    assert len(set(made)) == len(made) == 2 * (TASK_IDS_AHEAD + 5) and other not in made
    rows = one.store._exec("SELECT id FROM task WHERE name = 't'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(made)


def test_statements_run_again_and_again_are_prepared_once_a_connection(core):
    db = core.store.db
    core.turn()  # the first turn's tick (leases, retention, ...) out of the way
    trips = Trips(db)

    def prepared_inserts(rid: str) -> int:
        core.turn(client=[execute(rid)])
        return sum("PREPARE martinet_" in s and "INSERT INTO task" in s for s in trips.take())

    # A statement runs as it is until its PREPARE_AT-th use, prepared then, and never again
    assert [prepared_inserts(f"a{i}") for i in range(PREPARE_AT + 2)] == [0] * (PREPARE_AT - 1) + [1, 0, 0]
    # When the connection is made again (the database went away), it is prepared again
    db.close()
    db.connect()
    trips = Trips(db)
    assert [prepared_inserts(f"b{i}") for i in range(PREPARE_AT)] == [0] * (PREPARE_AT - 1) + [1]
    assert [core.store.get_task(i).status for i in range(1, 2 * PREPARE_AT + 3)] == ["queued"] * (
        2 * PREPARE_AT + 2
    )


def test_a_statement_that_cannot_be_prepared_runs_as_it_is_in_the_same_transaction(core):
    db = core.store.db
    with core.store.atomic():
        core.store._exec("INSERT INTO event (kind, at, body) VALUES (?, ?, ?)", ("one", 1.0, "{}"))
        # PostgreSQL cannot tell the type of `$1 IS NULL`: the PREPARE fails in a savepoint
        for _ in range(PREPARE_AT + 1):
            (found,) = core.store._exec("SELECT ? IS NULL", (None,)).fetchone()
            assert found is True
        # and the transaction goes on, the statement remembered as one to run unprepared
        core.store._exec("INSERT INTO event (kind, at, body) VALUES (?, ?, ?)", ("two", 2.0, "{}"))
    assert "SELECT %s IS NULL" in db._unpreparable
    kinds = [r[0] for r in core.store._exec("SELECT kind FROM event ORDER BY at").fetchall()]
    assert kinds == ["one", "two"]


def test_a_turn_of_starts_and_outcomes_costs_one_round_trip_a_kind_of_change(core):
    core.turn(worker=[hello("w1"), hello("w2")])
    tasks = [core.submit("t") for _ in range(2 * PREPARE_AT + 6)]
    core.turn()

    def ended() -> list[tuple[Cmd, dict]]:
        """Each worker's start and outcome of the task it holds."""
        held = [
            (t, core.store.get_task(t).worker) for t in tasks if core.store.get_task(t).status == "leased"
        ]
        assert len({w for _t, w in held}) == 2, held
        return [
            (Cmd.ENDED, {"worker_id": w, "started": [[t, 1]], "ended": [{"id": t, "attempt": 1, "ok": True}]})
            for t, w in held
        ]

    for _ in range(PREPARE_AT):  # the statements used often enough on this connection: prepared
        core.turn(status=ended())
    both = ended()
    trips = Trips(core.store.db)
    # Both workers' starts and outcomes in one turn, and a claim for each worker
    core.turn(status=both)
    sent = trips.take()
    # the held rows not read (this daemon leased them: SqlKit.held); their updates (the
    # starts that came with them included) and their attempt rows, unread, sent with the
    # first of 2 claims; the commit, with the events (no one subscribes: their ids are
    # not read back)
    assert len(sent) == 3 and sent[0].startswith("BEGIN") and sent[-1].endswith("COMMIT"), sent
    assert not any("status = 'running'" in s for s in sent), "a start written on its own"
    assert not any(s.lstrip().startswith(("SAVEPOINT", "RELEASE", "BEGIN")) and ";" not in s for s in sent)


def ended(task_id: int, worker: str = "w1") -> tuple[Cmd, dict]:
    return Cmd.ENDED, {"worker_id": worker, "started": [[task_id, 1]],
                       "ended": [{"id": task_id, "attempt": 1, "ok": True}]}  # fmt: skip


def test_the_end_of_a_task_this_daemon_leased_costs_one_round_trip(core):
    """This daemon keeps the rows of the tasks it leased as a read would find them
    (SqlKit.held): their end is written with no read first, fenced by what may change
    while a task is held, and goes with the commit. Leased as it was inserted, or
    claimed."""
    core.turn(worker=[hello("w1")])
    trips = Trips(core.store.db)
    for i in range(PREPARE_AT + 1):
        (reply,) = [h for sock, _i, _c, h in core.turn(client=[execute(f"r{i}")]) if sock == "client"]
        trips.take()
        core.turn(status=[ended(reply["id"])])
        sent = trips.take()
        assert core.store.get_task(reply["id"]).status == "succeeded"
    assert len(sent) == 1 and sent[0].endswith("COMMIT") and "FOR UPDATE" not in sent[0], sent
    # Claimed: two tasks for one thread, the second claimed in the first's end's turn
    first, second = core.submit("t"), core.submit("t")
    core.turn()
    core.turn(status=[ended(first)])
    trips.take()
    core.turn(status=[ended(second)])
    sent = trips.take()
    assert len(sent) == 1 and "FOR UPDATE" not in sent[0], sent
    assert [core.store.get_task(t).status for t in (first, second)] == ["succeeded", "succeeded"]
    assert core.store.held == {}


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("cancel_requested = true", "cancelled"),  # revoked by another daemon: ends cancelled
        ("has_dependents = true", "succeeded"),  # a task waits on it now: settled as it ends
        ("started_at = 1.0", "succeeded"),  # a start written elsewhere (its time kept)
        ("worker = 'w9', attempt = attempt", "leased"),  # held by another worker now: fenced out
    ],
)
def test_an_end_whose_task_changed_behind_this_daemon_is_written_as_its_row_is_now(
    core, caplog, change, status
):
    """The daemon's own changes keep the rows it kept up to date; a change it did not make
    (another daemon's, an operator's SQL) fails the fence, and the turn is taken again,
    the rows read as they are."""
    core.turn(worker=[hello("w1")])
    (reply,) = [h for sock, _i, _c, h in core.turn(client=[execute("r1")]) if sock == "client"]
    task_id = reply["id"]
    core.store.db.execute_sql(f"UPDATE task SET {change} WHERE id = %s", (task_id,))
    with caplog.at_level(logging.DEBUG, logger="martinet.daemon"):
        sent = core.turn(status=[ended(task_id)])
    assert "held tasks changed since this daemon last wrote them" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert [h["acks"] for sock, _i, _c, h in sent if sock == "status"] == [[[task_id, 1]]]
    task = core.store.get_task(task_id)
    assert task.status == status
    if change.startswith("started_at"):
        assert task.started_at == 1.0


def test_a_revoke_through_this_daemon_ends_its_task_cancelled_with_no_second_take(core, caplog):
    core.turn(worker=[hello("w1")])
    (reply,) = [h for sock, _i, _c, h in core.turn(client=[execute("r1")]) if sock == "client"]
    core.turn(client=[(Cmd.REQUEST, {"op": "revoke", "rid": "r2", "id": reply["id"]})])
    with caplog.at_level(logging.DEBUG, logger="martinet.daemon"):
        core.turn(status=[ended(reply["id"])])
    assert "taking the turn again" not in caplog.text
    assert core.store.get_task(reply["id"]).status == "cancelled"


def test_a_tick_sends_its_writes_with_its_reads(core):
    """Each heartbeat interval: the leases of busy workers renewed and this daemon's beat
    (writes no one reads) go with the reads of expired leases, overdue tasks and the
    daemons, not on their own."""
    core.turn(worker=[hello("w1")])
    task_id = core.submit("t")
    core.turn()  # leased to w1: a busy worker, whose leases a tick renews
    lease = core.server.settings.lease
    trips = Trips(core.store.db)
    for _ in range(PREPARE_AT + 1):  # (the statements prepared by the last one)
        core.now += lease * 0.6  # past half the lease: renewed, not expired
        core.server.next_tick = core.now
        trips.take()
        core.turn()
    sent = trips.take()  # (retention's reads too, at times)
    renewal = [
        q for q in sent if "lease_expires" in q and "'{\"w1\"}'" in q
    ]  # (the workers, one array literal)
    beat = [q for q in sent if "martinet_" in q and core.server.epoch in q]
    assert len(renewal) == len(beat) == 1, sent
    # each with the next read: the expired leases', and the daemons'
    assert 'FROM "task"' in renewal[0].split("; ", 2)[-1] and 'FROM "daemon"' in beat[0], sent
    (expires,) = core.store._exec("SELECT lease_expires FROM task WHERE id = ?", (task_id,)).fetchone()
    assert expires == core.now + lease
    assert {d["id"]: d["beat_at"] for d in core.store.daemons()}[core.server.epoch] == core.now


def test_a_turn_of_starts_alone_is_one_round_trip(core):
    core.turn(worker=[hello("w1")])
    tasks = [core.submit("t") for _ in range(PREPARE_AT + 2)]
    core.turn()
    trips = Trips(core.store.db)
    for i, task_id in enumerate(tasks):  # (one at a time: the worker has one thread)
        core.turn(status=[(Cmd.STARTED, {"worker_id": "w1", "started": [[task_id, 1]]})])
        sent = trips.take()
        assert core.store.get_task(task_id).status == "running"
        if i >= PREPARE_AT:  # prepared: BEGIN, the start's UPDATE, COMMIT in one string
            assert len(sent) == 1 and sent[0].startswith("BEGIN") and sent[0].endswith("COMMIT"), sent
        core.turn(
            status=[(Cmd.ENDED, {"worker_id": "w1", "ended": [{"id": task_id, "attempt": 1, "ok": True}]})]
        )
        trips.take()


def test_a_write_sent_with_a_later_statement_that_fails_costs_only_itself(core, caplog):
    """An outcome's UPDATE and attempt row go with the next statement. Should the server
    refuse them, the statement that carried them fails, whoever's it is (here a worker's
    hello, whose savepoint would drop that hello alone and go on): the turn is rolled back
    and taken again with each write sent on its own, so the outcome fails alone and is
    not acknowledged (its worker sends it again), and the rest of the turn stands."""
    core.turn(worker=[hello("w1")])
    task_id = core.submit("t")
    core.turn()
    done = (Cmd.ENDED, {"worker_id": "w1", "started": [[task_id, 1]],
                        "ended": [{"id": task_id, "attempt": 1, "ok": True}]})  # fmt: skip
    core.store.db.execute_sql(
        "ALTER TABLE attempt ADD CONSTRAINT refuses_success CHECK (outcome <> 'succeeded')"
    )
    try:
        sent = core.turn(status=[done], worker=[hello("w2")])
        assert not [m for m in sent if m[0] == "status"], sent  # not acknowledged
        assert [h for _s, ident, cmd, h in sent if ident == b"w2" and cmd is Cmd.WELCOME], sent
        assert (
            "a write sent with a later statement failed" in caplog.text and "refuses_success" in caplog.text
        )
        assert core.server.db_health.trouble is None  # a refusal, not the database in trouble
        assert core.store.get_task(task_id).status == "running"  # its start stands
    finally:
        core.store.db.execute_sql("ALTER TABLE attempt DROP CONSTRAINT refuses_success")
    sent = core.turn(status=[done])  # sent again: written, acknowledged
    assert [h["acks"] for sock, _i, _c, h in sent if sock == "status"] == [[[task_id, 1]]]
    assert core.store.get_task(task_id).status == "succeeded"


def test_through_a_pooled_url_nothing_is_prepared(pg_url, make_core):
    """A transaction-mode pooler keeps no session state: `postgresql+pool://` is the URL
    for it (docs/performance.md)."""
    core = make_core(pg_url.replace("postgresql://", "postgresql+pool://", 1))
    core.turn()
    trips = Trips(core.store.db)
    for i in range(PREPARE_AT + 2):
        core.turn(client=[execute(f"p{i}")])
    sent = trips.take()
    assert sent and not any("PREPARE" in s or "EXECUTE martinet_" in s for s in sent)
    assert [core.store.get_task(i).status for i in range(1, PREPARE_AT + 3)] == ["queued"] * (PREPARE_AT + 2)


def test_a_prepared_statement_keeps_its_literal_percent_signs(core):
    # (psycopg2 reads a query for placeholders: a literal % is written %%, and stays one %)
    got = [core.store._exec("SELECT 'a%%' || ?", ("b",)).fetchone()[0] for _ in range(PREPARE_AT + 2)]
    assert got == ["a%b"] * (PREPARE_AT + 2)
    assert "SELECT 'a%%' || %s" in core.store.db._session.prepared


def test_a_thread_has_its_own_connection_its_own_prepared_statements_and_transactions(core):
    """An embedded daemon opens its database in the caller's thread and runs its loop in
    another: that thread's first transaction connects it, and what the first thread
    prepared is unknown on its connection."""
    store = core.store
    for _ in range(PREPARE_AT + 1):  # prepared on this thread's connection
        assert store._exec("SELECT ? + 1", (1,)).fetchone() == (2,)

    def first_turn_of_another_thread() -> list[int]:
        with store.atomic():  # its BEGIN waits for the first statement, which connects
            got = [store._exec("SELECT ? + 1", (i,)).fetchone()[0] for i in range(PREPARE_AT + 1)]
            store._exec("INSERT INTO event (kind, at, body) VALUES (?, ?, ?)", ("there", 1.0, "{}"))
        store.close()
        return got

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(first_turn_of_another_thread).result(timeout=30) == list(range(1, PREPARE_AT + 2))
    assert [r[0] for r in store._exec("SELECT kind FROM event").fetchall()] == ["there"]


def test_no_statement_run_again_and_again_finds_tasks_by_id_through_a_status_index(core):
    """A prepared statement keeps one generic plan, made without its parameters. From the
    table's statistics (a few leased rows) that plan may find `id = ANY(?) AND status IN
    (...)` through task_status_created, which holds an entry for every claim made since
    the last vacuum: in a drain of 20,000, 1.2-1.7 ms a statement against 0.1 by the
    primary key. Every hot statement's generic plan must stay on the key."""
    core.turn(worker=[hello("w1"), hello("w2")])
    tasks = [core.submit("t") for _ in range(8 * PREPARE_AT)]
    core.turn()
    for i in range(2 * PREPARE_AT):  # starts on their own, then outcomes: each prepared
        held = [
            (t, core.store.get_task(t).worker) for t in tasks if core.store.get_task(t).status == "leased"
        ]
        core.turn(status=[(Cmd.STARTED, {"worker_id": w, "started": [[t, 1]]}) for t, w in held])
        if i % 2:  # ended as read (FOR UPDATE), as another daemon's tasks are; else as kept
            core.store.held.clear()
        core.turn(status=[(Cmd.ENDED, {"worker_id": w, "ended": [{"id": t, "attempt": 1, "ok": True}]})
                          for t, w in held])  # fmt: skip
    db = core.store.db
    prepared = dict(db._session.prepared)
    assert any("FOR UPDATE" in sql for sql in prepared) and any("running" in sql for sql in prepared)
    assert any("WITH changed AS (UPDATE task" in sql for sql in prepared)
    # A table of finished tasks and a few leased ones, as statistics say it is in a drain
    columns = [c for c in core.store.Task._meta.columns if c not in ("id", "request_id", "status")]
    listed = ", ".join(f'"{c}"' for c in columns)
    db.execute_sql(
        f"INSERT INTO task (request_id, status, {listed}) SELECT 'old-' || n, 'succeeded', {listed}"
        f" FROM task, generate_series(1, 5000) AS n WHERE id = {tasks[0]}"
    )
    db.execute_sql("ANALYZE task")
    db.execute_sql("SET plan_cache_mode = force_generic_plan")
    try:
        for sql, statement in prepared.items():
            args = f"({', '.join(['NULL'] * statement.count)})" if statement.count else ""
            plan = "\n".join(
                r[0] for r in db.execute_sql(f"EXPLAIN EXECUTE {statement.name}{args}").fetchall()
            )
            if "task_status_created" in plan:
                pytest.fail(f"{sql}\nis planned as\n{plan}")
    finally:
        db.execute_sql("RESET plan_cache_mode")


def test_a_plan_made_on_a_small_table_is_made_again_as_its_statement_is_used(pg_url):
    """PostgreSQL keeps the generic plan it made at a prepared statement's sixth run until
    the next ANALYZE of its tables: made while a new database's table is small, it reads
    the whole table for a few ids, and did so as the table grew (13 ms a batch's request
    ids at 20,000 tasks, in bench.py's store scenario). The statement is prepared again
    as its uses grow."""
    db = open_database(pg_url)
    db.execute_sql(
        "CREATE TABLE plan_probe (id bigint PRIMARY KEY, note text) WITH (autovacuum_enabled = false)"
    )
    ids = list(range(1, 21))
    sql = f"SELECT id FROM plan_probe WHERE id IN ({', '.join(['%s'] * len(ids))})"  # (as a batch's request ids)

    def run(times: int) -> None:
        for _ in range(times):
            assert len(db.execute_prepared(sql, ids).fetchall()) <= len(ids)

    def plan() -> str:
        name = db._session.prepared[sql].name
        db.execute_sql("SET plan_cache_mode = force_generic_plan")  # the plan its runs use, not a fresh one
        try:
            explain = f"EXPLAIN EXECUTE {name}({', '.join(['%s'] * len(ids))})"
            return "\n".join(r[0] for r in db.execute_sql(explain, ids).fetchall())
        finally:
            db.execute_sql("RESET plan_cache_mode")

    try:
        db.execute_sql("INSERT INTO plan_probe SELECT n, 'x' FROM generate_series(1, 5) AS n")
        db.execute_sql("ANALYZE plan_probe")  # as autovacuum does a new table's, soon after its first rows
        run(PREPARE_AT + 6)  # prepared, and run often enough for PostgreSQL to keep a plan
        assert "Seq Scan" in plan()  # right for a page of rows
        db.execute_sql(
            "INSERT INTO plan_probe SELECT n, repeat('x', 200) FROM generate_series(6, 50000) AS n"
        )
        assert "Seq Scan" in plan()  # kept as the table grew: no one analyzed it
        old = db._session.prepared[sql].name
        with db.atomic():  # (as in a turn: the PREPARE in a savepoint of its own)
            run(REPLAN_FIRST + 6)
        assert "Seq Scan" not in plan() and "plan_probe_pkey" in plan()
        names = {r[0] for r in db.execute_sql("SELECT name FROM pg_prepared_statements").fetchall()}
        assert db._session.prepared[sql].name in names and old not in names  # the old one dropped
        assert (
            sorted(r[0] for r in db.execute_prepared(sql, [7, 49_999, *ids[2:]]).fetchall())
            == [*ids[2:], 49_999]
            and 7 in ids[2:]
        )
    finally:
        db.execute_sql("DROP TABLE plan_probe")
        db.close()


def test_a_bulk_submits_request_ids_are_looked_up_against_a_planned_list_as_the_table_grows(core):
    """execute_many looks its request ids up, 500 a query, never prepared: the plan
    PostgreSQL keeps for a prepared statement compares each row of the table with each
    of the 500 parameters in turn, where a plan made for the ids hashes them once (or
    takes the index, on a table large enough). Prepared, a batch of 1,000 took 78 ms
    with no tasks before it and 1,176 ms with 19,000, on a table not analyzed yet."""
    trips = Trips(core.store.db)
    batches = 24  # 12,000 tasks: prepared, its plan was the one for parameters from the 19th
    for batch in range(batches):  # the table grows from empty, batch by batch
        core.turn(
            client=[(Cmd.REQUEST, {"op": "execute_many", "rid": f"m{batch}",
                                   "tasks": [{"name": "t", "args": {}, "request_id": f"b{batch}-{i}"}
                                             for i in range(500)]})]
        )  # fmt: skip
    last = f"'b{batches - 1}-0'"  # the last batch's first request id
    lookups = [q for sent in trips.as_run for q in sent.split("; ") if last in q and "INSERT" not in q]
    assert len(lookups) == 1, lookups
    # The plan of the lookup as the daemon ran it: for its ids, not for parameters
    plan = [line for (line,) in core.store._exec(f"EXPLAIN {lookups[0]}", cache=False).fetchall()]
    assert not any("$1" in line for line in plan), plan
