"""The server's core decides without sockets: hello, claims, outcomes, lost workers, timers,
limits and re-adoption, each a turn with an explicit `now` and what it would send
(tests/core.py), in milliseconds. A turn whose commit fails changes nothing it decided."""

from __future__ import annotations

from martinet.protocol import Cmd
from tests.unit.test_failed_commit import done, tasks_sent


def hello(worker_id: str = "w1", ident: bytes = b"w1", **fields) -> tuple[bytes, Cmd, dict]:
    return ident, Cmd.HELLO, {"worker_id": worker_id, "names": ["t"], "capacity": 4, **fields}


def sent_to(sent: list, cmd: Cmd) -> list[tuple[bytes, dict]]:
    return [(ident, h) for _role, ident, c, h in sent if c is cmd]


def test_a_hello_is_welcomed_and_a_stranger_asked_to_say_hello(db_url, make_core):
    core = make_core(db_url)
    sent = core.turn(worker=[hello()])
    ((ident, welcome),) = sent_to(sent, Cmd.WELCOME)
    assert ident == b"w1" and welcome["database"] == core.server.database_id
    assert welcome["epoch"] == core.server.epoch and core.server.peers.get("w1").capacity == 4
    # A heartbeat from a connection that said no hello gets "say hello again"
    sent = core.turn(worker=[(b"stranger", Cmd.HEARTBEAT, {})])
    assert sent_to(sent, Cmd.HELLO_AGAIN) == [(b"stranger", {"epoch": core.server.epoch})]


def test_an_outcome_frees_the_slot_a_claim_of_the_same_turn_takes(db_url, make_core):
    core = make_core(db_url)
    core.request("set_queue", name="one", concurrency=1)
    core.turn(worker=[hello()])
    a, b = core.submit("t", queue="one"), core.submit("t", queue="one")
    assert tasks_sent(core.turn()) == [a]
    sent = core.turn(status=[done(a)])
    assert sent_to(sent, Cmd.ACK) == [(b"status", {"acks": [[a, 1]]})] and tasks_sent(sent) == [b]


def test_a_hello_in_a_failed_turn_is_asked_again_and_leaves_the_worker_as_it_was(db_url, make_core):
    core = make_core(db_url)
    core.turn(worker=[hello()])
    a = core.submit("t", max_attempts=1)  # not retried: a retry's jitter may make it due at once
    assert tasks_sent(core.turn()) == [a]
    # When the worker comes back on a new connection, holding nothing, in a turn that fails
    session = core.server.peers.get("w1").session  # (what a reconnecting worker proves itself with)
    sent = core.turn(worker=[hello(ident=b"w1-new", session=session)], fail=True)
    # Then it is not welcomed but asked to say hello again; its old picture stands
    assert sent_to(sent, Cmd.WELCOME) == [] and [i for i, _h in sent_to(sent, Cmd.HELLO_AGAIN)] == [b"w1-new"]
    peer = core.server.peers.get("w1")
    assert peer.ident == b"w1" and peer.inflight == {a} and core.server.peers.owner(a) is peer
    assert core.store.get_task(a).status == "leased"
    # When it says hello again: welcomed, and the attempt it came back without is lost
    sent = core.turn(worker=[hello(ident=b"w1-new", session=session)])
    assert [i for i, _h in sent_to(sent, Cmd.WELCOME)] == [b"w1-new"]
    assert [(t.attempt, t.outcome) for t in core.store.attempts(a)] == [(1, "lost")]
    assert core.server.peers.get("w1").inflight == set()


def test_a_worker_lost_in_a_failed_turn_is_lost_again_in_the_next(db_url, make_core):
    core = make_core(db_url, heartbeat_interval=0.2)
    core.turn(worker=[hello()])
    a = core.submit("t")
    assert tasks_sent(core.turn()) == [a]
    core.now += 5  # silent for far longer than its liveness
    core.turn(heard=False, fail=True)
    assert core.server.peers.get("w1").inflight == {a} and core.store.get_task(a).status == "leased"
    core.turn(heard=False)  # the tick comes again at once
    assert core.server.peers.get("w1") is None
    assert [(t.attempt, t.outcome) for t in core.store.attempts(a)] == [(1, "lost")]


def test_a_worker_back_on_a_new_connection_keeps_what_it_still_runs(db_url, make_core):
    core = make_core(db_url)
    core.turn(worker=[hello()])
    a = core.submit("t")
    b = core.submit("t", max_attempts=1)  # not retried: a retry's jitter may make it due at once
    assert tasks_sent(core.turn()) == [a, b]
    core.turn(status=[(Cmd.STARTED, {"worker_id": "w1", "started": [[a, 1], [b, 1]]})])
    # When it reconnects saying it still runs A (B died with its old process)
    core.now += 1  # (MySQL counts changed rows only: a readopt in the claim's instant changes none)
    session = core.server.peers.get("w1").session
    running = [{"id": a, "attempt": 1, "started": True}]
    sent = core.turn(worker=[hello(ident=b"w1-new", running=running, session=session)])
    # Then A stays its own; B's attempt is lost, and its slot is free
    assert core.store.get_task(a).status == "running" and core.server.peers.owner(a).ident == b"w1-new"
    assert [(t.attempt, t.outcome) for t in core.store.attempts(b)] == [(1, "lost")]
    assert core.server.peers.get("w1").inflight == {a} and sent_to(sent, Cmd.WELCOME)


def test_a_delayed_task_is_leased_just_before_it_is_due_and_says_when_to_start(db_url, make_core):
    core = make_core(db_url)
    core.turn(worker=[hello()])
    due = core.now + 10
    a = core.submit("t", run_at=due)
    assert tasks_sent(core.turn()) == []
    core.now = due - 0.01  # within the timer's lead
    ((_ident, message),) = sent_to(core.turn(), Cmd.TASK)
    assert [row["id"] for row in message["tasks"]] == [a]
    assert abs(message["tasks"][0]["start_in"] - 0.01) < 1e-6
    assert message["tasks"][0]["run_at"] == due  # (the worker's clock may say it sooner)


def test_a_time_limit_is_enforced_once_committed_and_its_cancel_sent_then(db_url, make_core):
    core = make_core(db_url, time_limit_grace=0.5)
    core.turn(worker=[hello(capacity=1)])
    a = core.submit("t", timeout=1.0, max_attempts=5)
    assert tasks_sent(core.turn()) == [a]
    core.turn(status=[(Cmd.STARTED, {"worker_id": "w1", "started": [[a, 1]]})])
    core.now += 1.6  # past the limit and its grace
    core.server.next_tick = core.now
    assert sent_to(core.turn(fail=True), Cmd.CANCEL) == []
    assert core.store.get_task(a).status == "running" and core.server.peers.get("w1").stuck == set()
    assert sent_to(core.turn(), Cmd.CANCEL) == [(b"w1", {"id": a})]
    assert core.store.get_task(a).status == "failed" and core.server.peers.get("w1").stuck == {a}


def test_a_revoke_in_a_failed_turn_sends_no_cancel_and_the_client_learns_why(db_url, make_core):
    core = make_core(db_url)
    core.turn(worker=[hello()])
    a = core.submit("t")
    assert tasks_sent(core.turn()) == [a]
    sent = core.turn(client=[(Cmd.REQUEST, {"op": "revoke", "id": a, "rid": "r1"})], fail=True)
    assert sent_to(sent, Cmd.CANCEL) == []
    ((_ident, reply),) = sent_to(sent, Cmd.REPLY)
    assert reply["rid"] == "r1" and reply["error"]["type"] == "StoreError"
    sent = core.turn(client=[(Cmd.REQUEST, {"op": "revoke", "id": a, "rid": "r2"})])
    assert sent_to(sent, Cmd.CANCEL) == [(b"w1", {"id": a})]


def test_a_wait_in_a_failed_turn_is_forgotten(db_url, make_core):
    core = make_core(db_url)
    a = core.submit("t")
    core.turn(client=[(Cmd.REQUEST, {"op": "wait", "id": a, "rid": "r1", "wait_for": 5})], fail=True)
    assert core.server.waiters == {}
    core.turn(client=[(Cmd.REQUEST, {"op": "wait", "id": a, "rid": "r2", "wait_for": 5})])
    assert [w[1] for w in core.server.waiters[a]] == ["r2"]


def test_a_limit_set_in_a_failed_turn_is_not_kept(db_url, make_core):
    core = make_core(db_url)
    request = {"op": "set_limit", "name": "t", "concurrency": 1, "rid": "r"}
    core.turn(client=[(Cmd.REQUEST, request)], fail=True)
    assert "t" not in core.server.lanes.names
    core.turn(client=[(Cmd.REQUEST, request)])
    assert core.server.lanes.names["t"].concurrency == 1


def test_claimed_rows_leave_as_the_task_items_the_daemon_always_sent():
    """A claim's rows (Store.claim: run_at while still ahead, parents by id) leave as TASK
    items (messages.Tasks.of_rows, the daemon's fast path): the bytes of Task.item, and of
    the dicts the daemon sent before messages (start_in from when it was sent, then run_at
    while it is ahead, parents' ids as strings)."""
    from martinet import protocol
    from martinet.messages import Task, Tasks

    rows = [
        {"id": 1, "name": "add", "queue": "q", "args": {"a": 1}, "attempt": 1, "timeout": 5.0},
        {"id": 2, "name": "add", "queue": "default", "args": {}, "attempt": 3, "timeout": None,
         "run_at": 100.25, "parents": {1: [1, None]}},
        {"id": 3, "name": "add", "queue": "default", "args": {}, "attempt": 1, "timeout": None, "run_at": 99.0},
    ]  # fmt: skip
    frame = (
        protocol.PREFIX + bytes([Cmd.TASK])
        + b'{"tasks":[{"id":1,"name":"add","queue":"q","args":{"a":1},"attempt":1,"timeout":5.0},'
        b'{"id":2,"name":"add","queue":"default","args":{},"attempt":3,"timeout":null,'
        b'"parents":{"1":[1,null]},"start_in":0.25,"run_at":100.25},'
        b'{"id":3,"name":"add","queue":"default","args":{},"attempt":1,"timeout":null}]}'
    )  # fmt: skip
    tasks = (
        Task(1, 1, "add", {"a": 1}, "q", 5.0),
        Task(2, 3, "add", {}, "default", None, {1: [1, None]}, 0.25, 100.25),
        Task(3, 1, "add", {}, "default"),
    )
    assert Tasks(tasks).encode() == [frame]
    assert Tasks.of_rows(rows, 100.0) == [frame]


def ended(worker_id: str, started: list, *outcomes: tuple[int, bool]) -> tuple[Cmd, dict]:
    """An ENDED from `worker_id`: the starts it carries, and (id, ok) outcomes of attempt 1."""
    items = [
        {"id": t, "attempt": 1, "ok": ok, **({} if ok else {"error": {"message": "no"}})}
        for t, ok in outcomes
    ]
    return Cmd.ENDED, {"worker_id": worker_id, "started": started, "ended": items}


def test_a_start_that_comes_with_its_outcome_is_written_by_the_outcomes_update(
    db_url, make_core, monkeypatch
):
    core = make_core(db_url)
    core.turn(worker=[hello()])
    a, b = core.submit("t"), core.submit("t")
    assert tasks_sent(core.turn()) == [a, b]
    core.now += 2
    written: list = []  # the starts written on their own
    start = core.server.store.start
    monkeypatch.setattr(
        core.server.store, "start", lambda starts, now: (written.extend(starts), start(starts, now))[1]
    )
    # When one ENDED says both started, and that A ended (B runs on)
    core.turn(status=[ended("w1", [[a, 1], [b, 1]], (a, True))])
    # Then only B's start was written on its own: A's went with its end
    assert written == [(b, 1, "w1")]
    # And A ran from that turn (its task row and its attempt row say so) and B is running
    ran = core.store.get_task(a)
    assert ran.status == "succeeded" and ran.started_at == core.now
    assert [(t.started_at, t.ended_at, t.outcome) for t in core.store.attempts(a)] == [
        (core.now, core.now, "succeeded")
    ]
    running = core.store.get_task(b)
    assert running.status == "running" and running.started_at == core.now


def test_a_start_with_an_outcome_from_another_worker_is_fenced_as_its_own(db_url, make_core):
    core = make_core(db_url)
    core.turn(worker=[hello()])
    a = core.submit("t")
    assert tasks_sent(core.turn()) == [a]
    # When a stranger says it started A and ended it: neither is written, nor acknowledged
    sent = core.turn(status=[ended("w9", [[a, 1]], (a, True))])
    assert core.store.get_task(a).status == "leased" and core.store.get_task(a).started_at is None
    assert sent_to(sent, Cmd.ACK) == []
    # Nor when it names A's holder without the session the holder's welcome gave it
    forged = {**ended("w1", [[a, 1]], (a, True))[1], "session": "0" * 32}
    sent = core.turn(status=[(Cmd.ENDED, forged)])
    assert core.store.get_task(a).status == "leased" and sent_to(sent, Cmd.ACK) == []
    # And its holder's own report still ends it, in the same turn as one whose session is
    # not even ASCII (refused, as a forgery, not compared)
    garbled = {**ended("w1", [[a, 1]], (a, True))[1], "session": "é" * 32}
    core.turn(status=[(Cmd.ENDED, garbled), ended("w1", [[a, 1]], (a, False))])
    assert [(t.started_at, t.outcome) for t in core.store.attempts(a)] == [(core.now, "failed")]


def test_outcomes_taken_one_by_one_still_write_the_starts_that_came_with_them(db_url, make_core, monkeypatch):
    core = make_core(db_url)
    core.turn(worker=[hello()])
    a, b = core.submit("t"), core.submit("t")
    assert tasks_sent(core.turn()) == [a, b]
    store = core.server.store
    together = store.end_attempts

    def not_together(outcomes, now, started=()):
        if len(outcomes) > 1:
            raise RuntimeError("a bug of ours, with these two together")
        return together(outcomes, now, started)

    monkeypatch.setattr(store, "end_attempts", not_together)
    core.now += 1
    sent = core.turn(status=[ended("w1", [[a, 1], [b, 1]], (a, True), (b, False))])
    assert sorted(map(tuple, sent_to(sent, Cmd.ACK)[0][1]["acks"])) == [(a, 1), (b, 1)]
    assert [(t.started_at, t.outcome) for t in core.store.attempts(a)] == [(core.now, "succeeded")]
    assert [(t.started_at, t.outcome) for t in core.store.attempts(b)] == [(core.now, "failed")]
