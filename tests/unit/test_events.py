"""Events: recorded in the turn's transaction, pushed in order, replayed after a gap,
pruned after keep_events; hooks, `martinet watch`, malformed messages, bad input.

Store and hub tests, in process: time passed in as numbers, on every backend. The
hooks, catch-up and malformed messages through the API, against an embedded daemon
(tests/live.py), at the end. `martinet watch` as a process and restarts: tests/e2e/test_events.py.
"""

from __future__ import annotations

import json
import re
import threading

import pytest
import zmq

import martinet
from martinet import cli, protocol
from martinet.protocol import Cmd
from martinet.retention import Retention
from martinet.server.events import (
    CATCH_UP_PAGE,
    FULL_BACKOFF,
    MALFORMED_LOGGED_PER_SECOND,
    MALFORMED_PER_SECOND,
    EventHub,
)
from martinet.store import Store, open_database
from tests.harness import wait_for

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = 86400.0


@pytest.fixture
def store(db_url):
    db = open_database(db_url)
    yield Store(db)
    db.close()


def event(task_id: int | None, kind: str, name: str | None = "job", **body) -> dict:
    return {"event": kind, "id": task_id, "name": name, **body}


def record(store: Store, at: float, *events: dict) -> list[int]:
    with store.atomic():
        return [event_id for event_id, _body in EventHub().record(store, list(events), at)]


def table(db, after: int = 0) -> list[tuple]:
    """(id, kind, task_id, body) of the events kept after `after`, by id."""
    sql = f"SELECT id, kind, task_id, body FROM event WHERE id > {db.param} ORDER BY id"
    return [(r[0], r[1], r[2], json.loads(r[3])) for r in db.execute_sql(sql, (after,)).fetchall()]


class Seen:
    """A hook that keeps what it gets, and lets a test await it (bounded)."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self._cond = threading.Condition()

    def __call__(self, e: dict) -> None:
        with self._cond:
            self.items.append(e)
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = 20.0, what: str = "events") -> list[dict]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {self.items}")
            return list(self.items)

    def count(self, kind: str, **fields) -> int:
        return sum(
            1 for e in self.items if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())
        )


class FakeSocket:
    """A client socket whose queue is full `full` times, then takes everything."""

    def __init__(self, full: int = 0) -> None:
        self.full = full
        self.sent: list[list[bytes]] = []

    def __call__(self, ident: bytes, frames: list[bytes]) -> str:
        """The hub's send (events.Send), as the loop gives it over a socket."""
        if self.full:
            self.full -= 1
            return "full"
        self.sent.append([ident, *frames])
        return "sent"

    def events(self) -> list[dict]:
        out = []
        for frames in self.sent:
            cmd, h = protocol.decode(frames[1:])
            assert cmd is Cmd.EVENT
            out.extend(h["events"])
        return out


def test_events_are_numbered_in_commit_order_and_replayed_after_an_id(store):
    first = record(store, NOW, event(1, "progress", progress=0.5), event(1, "succeeded", result=3))
    second = record(store, NOW + 1, event(2, "failed", error={"type": "E"}))
    many = record(store, NOW + 2, *[event(3, "progress", progress=i / 7000) for i in range(7000)])
    assert first[1] == first[0] + 1 and second[0] > first[1]
    assert many == list(range(many[0], many[0] + 7000)) and many[0] > second[0]
    rows = table(store.db)
    assert [r[0] for r in rows] == [*first, *second, *many]  # the ids returned are the rows' ids
    assert [r[1] for r in rows[:3]] == ["progress", "succeeded", "failed"]
    assert rows[1][3] == {"event": "succeeded", "id": 1, "name": "job", "result": 3}
    page = store.events_after(first[0], 2)
    assert [(i, at) for i, at, _body in page] == [(first[1], NOW), (second[0], NOW + 1)]
    assert store.event_bounds() == (first[0], many[-1])


def test_every_body_is_kept_as_written_whether_its_ids_are_read_or_not(store):
    """On PostgreSQL a turn's bodies travel as one JSON array, or as a text array when one
    of them is not JSON to PostgreSQL (NaN, Infinity) or may not be to some version (an
    escaped surrogate): either way each body is kept to the character, in order."""
    from martinet.server.events import _body

    plain = [event(1, "succeeded", result='it\'s "quoted" \\ 100% {a,b} \n ☃'), event(2, "progress", progress=0.5),
             event(None, "malformed", name=None, why="no id")]  # fmt: skip
    odd = [event(3, "succeeded", result=float("nan")), event(4, "succeeded", result=[float("inf")]),
           event(5, "succeeded", result="😀"), event(6, "succeeded", name="Infinity and NaN in a name")]  # fmt: skip
    for events in (plain, odd, [*plain, *odd]):
        for ids in (True, False):
            hub = EventHub()
            with store.atomic():
                numbered = hub.record(store, events, NOW, ids=ids)
            sql = f"SELECT id, task_id, name, kind, at, body FROM event ORDER BY id DESC LIMIT {len(events)}"
            rows = list(reversed(store.db.execute_sql(sql).fetchall()))
            assert [r[5] for r in rows] == [_body(e) for e in events]
            assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
                (e["id"], e["name"], e["event"], NOW) for e in events
            ]
            assert numbered == ([(r[0], r[5]) for r in rows] if ids else [])


def test_old_events_go_in_batches_and_the_newest_always_stays(store):
    old = record(store, NOW - 2 * DAY, *[event(i, "succeeded") for i in range(5)])
    new = record(store, NOW - 3600, event(10, "succeeded"), event(11, "succeeded"))
    with store.atomic():
        assert store.prune_events(NOW - DAY, limit=2) == (2, True)
        assert store.prune_events(NOW - DAY, limit=2) == (2, True)
        assert store.prune_events(NOW - DAY, limit=2) == (1, False)  # stops at the first recent one
        assert store.prune_events(NOW - DAY, limit=2) == (0, False)
    assert [r[0] for r in table(store.db)] == new
    with store.atomic():  # all old now: the newest stays, so that its id is never handed out again
        assert store.prune_events(NOW + DAY) == (1, False)
    assert [r[0] for r in table(store.db)] == [new[-1]]
    assert not set(old) & {r[0] for r in table(store.db)}


def test_retention_prunes_events_after_keep_events(store):
    # Given events two days old and one a minute old
    record(store, NOW - 2 * DAY, *[event(i, "progress") for i in range(3)])
    recent = record(store, NOW - 60, event(9, "succeeded"))
    # When the daemon's retention step runs with keep_events = 1 day (tasks kept for good)
    retention = Retention(None, None, keep_events=DAY)
    with store.atomic():
        retention.step(store, NOW)
    # Then only the recent one is left, and the next pass waits its interval
    assert [r[0] for r in table(store.db)] == recent
    assert retention.step_events(store, NOW + 1) == 0


def test_subscribe_since_replays_and_says_when_events_were_pruned(store):
    ids = record(store, NOW - 2 * DAY, *[event(i, "succeeded") for i in range(4)])
    ids += record(store, NOW, event(5, "succeeded"))
    with store.atomic():
        store.prune_events(NOW - DAY)
    hub = EventHub()
    assert hub.subscribe(store, b"new", None, NOW) == {"ttl": 30.0, "last": ids[4], "since": ids[4]}
    assert hub.subscribe(store, b"pruned", ids[0], NOW)["gap"] is True
    assert hub.subscribe(store, b"just-in-time", ids[3], NOW)["gap"] is False  # it saw the last pruned one
    ahead = hub.subscribe(store, b"another-history", ids[4] + 100, NOW)
    assert (ahead["gap"], ahead["since"]) == (True, ids[4])  # not our history: from our newest on
    assert hub.subscribe(store, b"new", 0, NOW + 5) == {"ttl": 30.0}  # a renewal changes nothing
    with pytest.raises(martinet.BadInput, match="since must be an event id .*got 'yesterday'"):
        hub.subscribe(store, b"bad", "yesterday", NOW)
    assert b"bad" not in hub.subscribers


def test_a_subscriber_whose_queue_is_full_catches_up_from_the_table(store):
    hub = EventHub()
    with store.atomic():
        hub.subscribe(store, b"s", None, NOW)
        recorded = hub.record(store, [event(1, "progress"), event(1, "succeeded")], NOW)
    sock = FakeSocket(full=1)
    hub.push(sock, recorded, NOW)  # full: nothing sent, nothing lost
    assert sock.sent == [] and hub.next_turn() == NOW + FULL_BACKOFF
    with store.atomic():
        later = hub.record(store, [event(2, "succeeded")], NOW)
    hub.push(sock, later, NOW)  # catching up: the live push waits for the catch-up
    hub.catch_up(store, sock, NOW)  # not before its backoff
    assert sock.sent == []
    hub.catch_up(store, sock, NOW + 1)
    assert [e["event_id"] for e in sock.events()] == [i for i, _ in recorded + later]
    assert hub.next_turn() is None  # live again


def test_a_subscriber_far_behind_gets_bounded_pages(store):
    ids = record(store, NOW, *[event(i, "succeeded") for i in range(CATCH_UP_PAGE * 2 + 10)])
    hub = EventHub()
    hub.subscribe(store, b"s", 0, NOW)
    sock = FakeSocket()
    for turn in range(3):
        hub.catch_up(store, sock, NOW)
        assert len(sock.sent) == turn + 1
        assert (hub.next_turn() is None) == (turn == 2)
    assert [e["event_id"] for e in sock.events()] == ids
    assert [len(protocol.decode(f[1:])[1]["events"]) for f in sock.sent] == [CATCH_UP_PAGE, CATCH_UP_PAGE, 10]


def test_an_attempts_end_is_written_as_json_would_write_it():
    from martinet.server.events import _body, attempt_event
    from martinet.states import AttemptOutcome, TaskState

    info = {"id": 7, "name": 'say "hi" ☃', "queue": "default", "attempt": 2, "status": "failed",
            "outcome": "failed", "result": None, "error": {"type": "E", "message": "a\nb", "traceback": None},
            "run_at": "2027-01-15T08:00:01.000+00:00", "reason": None, "dependents": {}}  # fmt: skip
    # The store gives status and outcome as StrEnums: written as their values, like strings
    as_stored = {"status": TaskState.SUCCEEDED, "outcome": AttemptOutcome.SUCCEEDED, "result": None}
    for changes in ({}, {"status": "succeeded", "outcome": "succeeded", "result": {"x": [1.5, None, True]}},
                    as_stored):  # fmt: skip
        event = attempt_event({**info, **changes})
        assert json.loads(_body(event)) == json.loads(json.dumps(dict(event)))
        assert _body(event) == _body(dict(event))  # the template and the general case agree
    assert attempt_event({**info, "status": "queued", "outcome": "released"})["event"] == "released"


def test_malformed_records_are_rate_limited_with_a_count_of_the_rest():
    hub = EventHub()
    made = [hub.malformed("status", "0080000001", "bad signature", 5, NOW + i / 100) for i in range(25)]
    assert sum(1 for e in made if e) == MALFORMED_PER_SECOND
    following = hub.malformed("client", "0080000002", "not JSON", 3, NOW + 1.5)
    assert following["suppressed"] == 25 - MALFORMED_PER_SECOND
    for _ in range(MALFORMED_PER_SECOND + 2):  # a flood that stops: the tick records its count
        hub.malformed("worker", "0080000003", "bad", 1, NOW + 2.1)
    hub.suppressed(NOW + 2.5)  # the same second: not yet
    assert len(hub.pending) == MALFORMED_PER_SECOND * 2 + 1
    hub.suppressed(NOW + 3.2)
    assert hub.pending[-1]["suppressed"] == 2 and len(hub.pending) == MALFORMED_PER_SECOND * 2 + 2
    hub.malformed("worker", "0080000003", "bad", 1, NOW + 4.0)  # the log has a quota of its own
    assert sum(hub.may_log() for _ in range(MALFORMED_LOGGED_PER_SECOND + 5)) == MALFORMED_LOGGED_PER_SECOND


# ---- through the API: an embedded daemon and worker threads (tests/live.py) ---------------


def test_each_hook_fires_with_its_fields_in_order_and_by_name(make_live, db_url):
    live = make_live(db_url)
    live.worker()
    m = live.m
    every, complete_add, progress, retry, dead, error = Seen(), Seen(), Seen(), Seen(), Seen(), Seen()
    m.on("any", every)
    m.on_complete(lambda e: 1 / 0)  # a hook that raises, before the others
    m.on_complete(complete_add, name="add")
    m.on_progress(progress, name="steps")
    m.on_retry(retry)
    m.on_dead(dead)
    m.on_error(error)
    add = m.execute("add", {"a": 1, "b": 2})
    steps = m.execute("steps", {"n": 3})
    flaky = m.execute({"name": "flaky", "max_attempts": 3, "retry_base": 0.05}, {"succeed_on": 2})
    boom = m.execute({"name": "boom", "max_attempts": 1})
    for tid in (add, steps, flaky):
        m.wait(tid, timeout=20)
    with pytest.raises(martinet.TaskFailed):
        m.wait(boom, timeout=20)
    every.wait(lambda items: sum(e["event"] in ("succeeded", "dead") for e in items) == 4, what="4 ends")

    (done,) = complete_add.items  # by name: only add's, although the raising hook came first
    assert (done["id"], done["name"], done["result"], done["attempt"]) == (add, "add", 3, 1)
    assert isinstance(done["event_id"], int) and done["at"].endswith("+00:00")
    assert [(e["id"], e["progress"], e["message"]) for e in progress.items] == [
        (steps, i / 3, f"step {i} of 3") for i in (1, 2, 3)
    ]
    (again,) = retry.items
    assert (again["id"], again["event"], again["attempt"]) == (flaky, "failed", 1)
    assert again["error"]["type"] == "RuntimeError" and again["run_at"]
    (gone,) = dead.items
    assert (gone["id"], gone["error"]["type"], gone["error"]["message"]) == (boom, "ValueError", "kaboom")
    assert [(e["id"], e["status"]) for e in error.items] == [(flaky, "failed"), (boom, "dead")]
    ids = [e["event_id"] for e in every.items]
    assert ids == sorted(set(ids))  # in id order, none twice: so each task's in order too
    assert [e["event"] for e in every.items if e["id"] == flaky] == ["failed", "succeeded"]
    assert every.count("succeeded") == 3  # the raising hook stopped nothing


def test_a_client_back_from_a_gap_gets_exactly_the_events_it_missed(make_live, db_url):
    live = make_live(db_url)
    live.worker()
    m = live.m
    seen = Seen()
    m.on("any", seen)
    first = m.execute("add", {"a": 1, "b": 1})
    seen.wait(lambda items: any(e["id"] == first for e in items), what="the first task's event")
    # Given a client that stops listening
    m.stop_listening()
    last = m.last_event_id
    had = len(seen.items)
    # When tasks finish meanwhile, and it listens again from where it stopped
    missed = [m.execute("steps", {"n": 2}), m.execute("add", {"a": 2, "b": 2})]
    for tid in missed:
        m.wait(tid, timeout=20)
    db = open_database(db_url)
    try:
        wait_for(lambda: len(table(db, last)) == 4, what="the missed events in the table")
        expected = table(db, last)
    finally:
        db.close()
    m.listen()
    sentinel = m.execute("add", {"a": 0, "b": 0})
    items = seen.wait(lambda items: any(e["id"] == sentinel for e in items), what="the sentinel")
    # Then it gets exactly the missed ones, in order, then the live ones
    back = items[had:]
    assert [(e["event_id"], e["event"], e["id"]) for e in back[:-1]] == [r[:3] for r in expected]
    assert sorted(e["event"] for e in back[:-1]) == ["progress", "progress", "succeeded", "succeeded"]
    assert back[-1]["id"] == sentinel and back[-1]["event_id"] > expected[-1][0]


def test_malformed_messages_are_recorded_with_why_where_and_size(make_live, db_url):
    live = make_live(db_url)
    m = live.m
    seen = Seen()
    m.on_malformed(seen)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(f"tcp://127.0.0.1:{live.m.ports['status']}")
        sock.send(b"hello")
        (bad,) = seen.wait(lambda items: items, what="the malformed event")
        assert (bad["socket"], bad["size"]) == ("status", 5)
        assert "bad signature" in bad["why"] and re.fullmatch("[0-9a-f]+", bad["peer"])
        # A flood: recorded a few a second, the rest counted
        for _ in range(300):
            sock.send(b"garbage!")
        sock.close()
    finally:
        ctx.term()
    db = open_database(db_url)
    try:

        def accounted() -> list[tuple]:
            rows = [r for r in table(db) if r[1] == "malformed"]
            # each row is one message (but a count of its own), plus those it counts
            total = sum((r[3]["size"] is not None) + r[3].get("suppressed", 0) for r in rows)
            return rows if total == 301 else []

        rows = wait_for(accounted, timeout=15, what="every malformed message recorded or counted")
    finally:
        db.close()
    assert len(rows) < 60
    assert m.ping()["workers"] == 0  # and the daemon still answers


def test_bad_hooks_and_subscriptions_get_clear_errors_and_change_nothing(make_live, sqlite_url, capsys):
    live = make_live(sqlite_url)
    m = live.m
    with pytest.raises(martinet.BadInput, match="unknown event 'compleet'; hooks take one of: complete, "):
        m.on("compleet", print)
    with pytest.raises(martinet.BadInput, match="a hook must be callable, not int"):
        m.on("complete", 42)
    with pytest.raises(martinet.BadInput, match="malformed events belong to no task"):
        m.on("malformed", print, name="resize")
    with pytest.raises(martinet.BadInput, match="since must be an event id .*got -1"):
        m.listen(since=-1)
    with pytest.raises(martinet.BadInput, match="since must be an event id .*got 'last week'"):
        m.client.request("subscribe", {"since": "last week"})
    assert m._hooks == [] and m._listener is None  # nothing changed
    code = cli.main(["watch", "--status", "sucess", "--url", live.url])
    assert code == 1 and "unknown status 'sucess' for watch; events are progress," in capsys.readouterr().err
