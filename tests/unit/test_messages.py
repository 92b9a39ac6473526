"""Typed messages (martinet.messages): each round trips, says what is wrong with a bad
header, tolerates added and missing keys, and writes the very bytes earlier versions
wrote (the golden frames below were captured from the code paths of the version before
typed messages: the worker's loop, the daemon's hello, claim, flush and replies)."""

from __future__ import annotations

import json

import pytest

from martinet import messages, protocol
from martinet.errors import BadInput, BadTime, MartinetError, ProtocolError, TaskNotFound
from martinet.messages import (
    Ack,
    Bye,
    Cancel,
    Ended,
    Events,
    Heartbeat,
    Held,
    Hello,
    HelloAgain,
    Outcome,
    OutcomeKind,
    Progress,
    Reject,
    Reply,
    Request,
    Started,
    Task,
    Tasks,
    Welcome,
)
from martinet.protocol import Cmd

P = b"MRTN\x02"
NAMES = ("again", "again0", "boom", "fail", "ok", "prog", "rel", "rel0")
ERROR = {"type": "ValueError", "message": "bad", "traceback": "Traceback ...\nValueError: bad\n"}


def outcome(kind: OutcomeKind, task_id: int = 1, **fields) -> Outcome:
    return Outcome(task_id, 2, "w1", kind, database="D1", **fields)


# ---- golden frames: the wire is what it was ------------------------------------------

GOLDEN = [
    (
        Hello("w1", NAMES, 22, threads=2, queues=("a", "b")),
        P + b'\x10{"worker_id":"w1","names":["again","again0","boom","fail","ok","prog","rel","rel0"],'
        b'"capacity":22,"threads":2,"version":2,"starts":true,"running":[],"kept":[],"queues":["a","b"],'
        b'"limits":{}}',
    ),
    (
        Hello(
            "w1",
            NAMES,
            22,
            threads=2,
            queues=("a", "b"),
            running=(Held(11, 1, True, "D1"),),
            kept=(Held(12, 3, database="D2"),),
        ),  # fmt: skip
        P + b'\x10{"worker_id":"w1","names":["again","again0","boom","fail","ok","prog","rel","rel0"],'
        b'"capacity":22,"threads":2,"version":2,"starts":true,"running":[{"id":11,"attempt":1,'
        b'"started":true,"database":"D1"}],"kept":[{"id":12,"attempt":3,"database":"D2"}],'
        b'"queues":["a","b"],"limits":{}}',
    ),
    (
        Welcome("E", "DB", 1.0, 3, 30.0, 2, 1048576, 2162688),
        P + b'\x11{"epoch":"E","database":"DB","heartbeat_interval":1.0,"liveness":3,"lease":30.0,'
        b'"version":2,"max_payload":1048576,"max_message":2162688}',
    ),
    (
        Tasks((Task(1, 1, "add", {"a": 1}, "q", 5.0),)),
        P + b'\x12{"tasks":[{"id":1,"name":"add","queue":"q","args":{"a":1},"attempt":1,"timeout":5.0}]}',
    ),
    (
        Tasks((Task(2, 1, "add", {}, "default", None, {1: None}, 0.25),)),
        P + b'\x12{"tasks":[{"id":2,"name":"add","queue":"default","args":{},"attempt":1,"timeout":null,'
        b'"parents":{"1":null},"start_in":0.25}]}',
    ),
    (HelloAgain("E"), P + b'\x15{"epoch":"E"}'),
    (Ack(((1, 1), (2, 3))), P + b'#{"acks":[[1,1],[2,3]]}'),
    (Cancel(5), P + b'\x17{"id":5}'),
    (
        Reject(10, 1, "nope", "worker w1 has no handler for 'nope'"),
        P + b'\x14{"id":10,"attempt":1,"name":"nope","reason":"worker w1 has no handler for \'nope\'"}',
    ),
    (
        Reject(11, 2, "add", "worker w1 has no free slot", passing=True),
        P + b'\x14{"id":11,"attempt":2,"name":"add","reason":"worker w1 has no free slot","passing":true}',
    ),
    (Heartbeat(()), P + b'\x13{"running":[]}'),
    (Heartbeat(), P + b"\x13{}"),  # the daemon's
    (Bye(), P + b"\x16{}"),
    (
        Started("w1", ((1, 2), (2, 2))),
        P + b'%{"worker_id":"w1","started":[[1,2],[2,2]]}',
    ),
    (
        Progress(8, 2, "prog", 0.5, "half", "w1"),
        P + b' {"id":8,"attempt":2,"name":"prog","progress":0.5,"message":"half","worker_id":"w1"}',
    ),
    (Reply("r2", True, {"id": 2, "created": True}), P + b'\x02{"id":2,"created":true,"ok":true,"rid":"r2"}'),
    (
        Reply.refusing("r3", BadInput("unknown request 'nope'")),
        P + b'\x02{"ok":false,"error":{"type":"BadInput","message":"unknown request \'nope\'"},"rid":"r3"}',
    ),
    (  # a wait's answer, as the daemon always wrote it: rid and ok first
        Reply("r4", True, {"done": True, "item": {"id": 1}}, rid_first=True),
        P + b'\x02{"rid":"r4","ok":true,"done":true,"item":{"id":1}}',
    ),
    (  # the refusal of an unreadable request, or of a turn that failed
        Reply("r5", False, error={"type": "StoreError", "message": "m"}, rid_first=True),
        P + b'\x02{"rid":"r5","ok":false,"error":{"type":"StoreError","message":"m"}}',
    ),
    (
        Request("execute", {"name": "add", "args": {}, "request_id": "x"}, "x"),
        P + b'\x01{"op":"execute","rid":"x","name":"add","args":{},"request_id":"x"}',
    ),
]


@pytest.mark.parametrize(
    "message, frame", GOLDEN, ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else ""
)
def test_each_message_writes_the_frame_earlier_versions_wrote(message, frame):
    assert message.encode() == [frame]


# Each kind of outcome as the worker's loop wrote it in an ENDED message: a success, a
# failure, a Retry with and without a delay, a Fail, a Release with and without one, a
# success returning None, and a task cancelled before it started (a null result).
ENDED_ITEMS = [
    (outcome(OutcomeKind.SUCCEEDED, result={"x": 1, "s": "é✓"}),
     b'{"id":1,"attempt":2,"result":{"x":1,"s":"\\u00e9\\u2713"},"ok":true,"database":"D1"}'),
    (outcome(OutcomeKind.FAILED, error=ERROR),
     b'{"id":1,"attempt":2,"error":{"type":"ValueError","message":"bad","traceback":"Traceback ...\\n'
     b'ValueError: bad\\n"},"ok":false,"database":"D1"}'),
    (outcome(OutcomeKind.FAILED, error={"type": "Retry"}, retry_in=7, retry=True),
     b'{"id":1,"attempt":2,"error":{"type":"Retry"},"retry_in":7,"ok":false,"database":"D1"}'),
    (outcome(OutcomeKind.FAILED, error={"type": "Retry"}, retry=True),
     b'{"id":1,"attempt":2,"error":{"type":"Retry"},"retry_in":null,"ok":false,"database":"D1"}'),
    (outcome(OutcomeKind.FAILED, error={"type": "Fail"}, final=True),
     b'{"id":1,"attempt":2,"error":{"type":"Fail"},"final":true,"ok":false,"database":"D1"}'),
    (outcome(OutcomeKind.RELEASED, error={"type": "Release", "message": "busy"}, retry_in=3),
     b'{"id":1,"attempt":2,"error":{"type":"Release","message":"busy"},"release":true,"retry_in":3,'
     b'"ok":false,"database":"D1"}'),
    (outcome(OutcomeKind.RELEASED, error={"type": "Release", "message": "released"}),
     b'{"id":1,"attempt":2,"error":{"type":"Release","message":"released"},"release":true,"retry_in":null,'
     b'"ok":false,"database":"D1"}'),
    (outcome(OutcomeKind.SUCCEEDED), b'{"id":1,"attempt":2,"result":null,"ok":true,"database":"D1"}'),
    (outcome(OutcomeKind.CANCELLED), b'{"id":1,"attempt":2,"result":null,"ok":true,"database":"D1"}'),
    (Outcome(1, 2, "w1", OutcomeKind.SUCCEEDED, result=3), b'{"id":1,"attempt":2,"result":3,"ok":true}'),
]  # fmt: skip


@pytest.mark.parametrize("message, body", ENDED_ITEMS)
def test_each_kind_of_outcome_writes_the_item_earlier_workers_wrote(message, body):
    assert message.body() == body


def test_an_ended_message_carries_the_starts_before_its_outcomes():
    bodies = [o.body() for o, _ in ENDED_ITEMS[:2]]
    assert messages.ended("w1", bodies, [[1, 2], [2, 2]]) == [
        P + b'${"worker_id":"w1","started":[[1,2],[2,2]],"ended":[' + b",".join(bodies) + b"]}"
    ]
    assert messages.ended("w1", bodies[:1]) == [P + b'${"worker_id":"w1","ended":[' + bodies[0] + b"]}"]


def test_an_ended_message_carries_its_handlers_pace_and_a_hello_how_deep_its_prefetch_may_go():
    frames = messages.ended("w1", [], None, None, 0.000123456)
    assert frames == [P + b'${"worker_id":"w1","pace":0.000123,"ended":[]}']
    assert Ended.from_header(Cmd.ENDED, protocol.decode(frames)[1]).pace == 0.000123
    for bad in (0, -1.0, True, "0.1", None, 1e9, [0.1]):
        assert messages.pace_of({"pace": bad}) is None, bad
    hello = Hello("w1", ("a",), 33, threads=1, prefetch_max=256)
    header = protocol.decode(hello.encode())[1]
    assert header["prefetch_max"] == 256 and Hello.from_header(header) == hello
    assert hello.most == 257 and Hello("w1", ("a",), 33, threads=1).most == 33
    for bad in (-1, 1.5, True, "256", 10**9):
        assert Hello.from_header({**header, "prefetch_max": bad}).prefetch_max is None, bad


def test_a_batch_request_and_events_write_items_encoded_once():
    items = [protocol.dumps({"name": "a"}), protocol.dumps({"name": "b"})]
    assert Request.batch("execute_many", "r", "tasks", items) == [
        P + b'\x01{"op":"execute_many","rid":"r","tasks":[{"name":"a"},{"name":"b"}]}'
    ]
    events = Events(({"event": "progress", "id": 1}, {"event": "succeeded", "id": 1}))
    assert events.encode() == [
        P + b'\x03{"events":[{"event":"progress","id":1},{"event":"succeeded","id":1}]}'
    ]


# ---- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("message", [m for m, _ in GOLDEN if not isinstance(m, Reply)] + [
    Reply("r2", True, {"id": 2, "created": True}),
    Reply("r3", False, error={"type": "BadInput", "message": "no"}),
    Events(({"event": "progress", "id": 1, "event_id": 4},)),
    Hello("w", ("a",), 1, limits={"a": {"concurrency": 2, "rate": None}}, queues=None),
    Started("w1", ()),
], ids=lambda m: type(m).__name__)  # fmt: skip
def test_each_message_reads_back_as_itself(message):
    assert messages.decode(message.encode()) == message


@pytest.mark.parametrize("message", [o for o, _ in ENDED_ITEMS if o.kind is not OutcomeKind.CANCELLED])
def test_each_outcome_reads_back_as_itself(message):
    ended = messages.decode(messages.ended("w1", [message.body()]))
    assert ended == Ended("w1", (message if message.error is None else _bounded(message),))
    assert messages.decode(message.encode()) == ended  # as its own DONE or FAILED, as old workers sent it


def _bounded(o: Outcome) -> Outcome:
    """What the reader makes of an error: its three keys, cleaned (a release: type and reason)."""
    if o.kind is OutcomeKind.RELEASED:
        return o
    error = {"type": o.error.get("type"), "message": o.error.get("message") or "",
             "traceback": o.error.get("traceback")}  # fmt: skip
    return Outcome(
        o.task_id, o.attempt, o.worker, o.kind, o.result, error, o.retry_in, o.final, o.retry, o.database
    )


def test_a_cancel_travels_as_a_success_with_no_result_and_reads_as_one():
    (read,) = Ended.from_header(Cmd.ENDED, {"worker_id": "w1", "ended": [json.loads(
        outcome(OutcomeKind.CANCELLED, result="ignored").body())]}).outcomes  # fmt: skip
    assert (read.kind, read.result) == (OutcomeKind.SUCCEEDED, None)  # the store ends it cancelled


# ---- checks: each says what is wrong --------------------------------------------------------


@pytest.mark.parametrize(
    "cmd, header, message",
    [
        (Cmd.HELLO, {"worker_id": "w", "names": ["a"], "capacity": 0}, "a hello without a valid worker_id"),
        (Cmd.HELLO, {"worker_id": "", "names": ["a"], "capacity": 1}, "a hello without a valid worker_id"),
        (Cmd.HELLO, {"worker_id": "w", "names": "a", "capacity": 1}, "a hello without a valid worker_id"),
        (Cmd.HELLO, {"worker_id": "w", "names": ["a" * 201], "capacity": 1}, "names and capacity"),
        (Cmd.REJECT, {"id": "1", "attempt": 1}, "a REJECT without a valid id and attempt"),
        (Cmd.CANCEL, {"id": None}, "a CANCEL without a valid id"),
        (Cmd.PROGRESS, {"id": 1, "attempt": 1}, "a PROGRESS without a valid worker_id"),
        (
            Cmd.PROGRESS,
            {"worker_id": "w", "id": -1, "attempt": 1},
            "a PROGRESS without a valid id and attempt",
        ),
        (Cmd.STARTED, {"worker_id": "w", "started": "x"}, "a STARTED without a valid worker_id"),
        (Cmd.ENDED, {"ended": []}, "a ENDED without a valid worker_id"),
        (Cmd.ENDED, {"worker_id": "w", "ended": {}}, "a ENDED without a valid worker_id"),
        (Cmd.DONE, {"worker_id": 7, "id": 1, "attempt": 1}, "a DONE without a valid worker_id"),
        (Cmd.ACK, {"acks": None}, "an ACK without a list of acks"),
        (Cmd.REPLY, {"ok": True}, "a REPLY without a request id"),
    ],
)
def test_a_header_without_what_its_command_needs_says_what_is_missing(cmd, header, message):
    with pytest.raises(ProtocolError, match=message):
        messages.decode(protocol.encode(cmd, header))


def test_a_request_whose_op_is_not_a_name_is_refused_as_bad_input():
    with pytest.raises(BadInput, match=r"unknown request \['execute'\]"):
        messages.decode(protocol.encode(Cmd.REQUEST, {"op": ["execute"], "rid": "r"}))


def test_frames_that_do_not_decode_are_protocol_errors_carrying_the_bytes():
    with pytest.raises(ProtocolError, match="bad signature") as caught:
        messages.decode([b"nope"])
    assert caught.value.raw == [b"nope"]


def test_items_that_cannot_be_read_are_left_out_and_counted():
    tasks = Tasks.from_header({"tasks": [{"id": 1, "attempt": 1, "name": "a"}, {"id": "x"}, "junk"]})
    assert [t.task_id for t in tasks.tasks] == [1] and tasks.dropped == 2
    ended = Ended.from_header(
        Cmd.ENDED, {"worker_id": "w", "ended": [{"id": 1, "attempt": 1, "ok": True}, {}]}
    )
    assert [o.task_id for o in ended.outcomes] == [1] and ended.dropped == 1
    started = Started.from_header({"worker_id": "w", "started": [[1, 1], [1], ["a", 1], [2, 2]]})
    assert started.started == ((1, 1), (2, 2))


def test_outcomes_are_bounded_as_the_store_keeps_them():
    item = {"id": 1, "attempt": 1, "ok": False, "retry_in": 1e30, "release": False,
            "error": {"type": "T" * 300, "message": "m\x00" * 6000, "traceback": "t" * 200_000}}  # fmt: skip
    (o,) = Ended.from_header(Cmd.ENDED, {"worker_id": "w", "ended": [item]}).outcomes
    assert o.kind is OutcomeKind.FAILED and o.retry_in == 366 * 86400.0 and o.retry
    assert (
        len(o.error["type"]) == 255 and "\x00" not in o.error["message"] and len(o.error["message"]) == 6000
    )
    assert len(o.error["traceback"]) <= 100_000 and o.error["traceback"].endswith("t")
    released = Outcome.from_item({"id": 1, "attempt": 1, "release": True, "retry_in": -5, "error": {}}, "w")
    assert (released.kind, released.error, released.retry_in) == (
        OutcomeKind.RELEASED, {"type": "Release", "message": "released"}, 0.0)  # fmt: skip
    nan = Outcome.from_item({"id": 1, "attempt": 1, "retry_in": float("nan")}, "w")
    assert (nan.retry_in, nan.error) == (None, {"type": "Error", "message": "", "traceback": None})


def test_a_result_over_max_payload_reads_as_the_failure_a_worker_would_have_sent():
    item = {"id": 3, "attempt": 1, "ok": True, "result": "x" * 100}
    assert Outcome.from_item(item, "w", max_payload=1000).kind is OutcomeKind.SUCCEEDED
    failed = Outcome.from_item(item, "w", max_payload=50)
    assert failed.kind is OutcomeKind.FAILED and failed.error == {
        "type": "ValueError",
        "message": "the handler's result is 102 bytes as JSON, over the limit of 50 (max_payload)",
        "traceback": None,
    }


def test_progress_is_bounded_as_the_daemon_keeps_it():
    p = Progress.from_header({"worker_id": "w", "id": 1, "attempt": 1, "progress": float("inf"),
                              "message": "m" * 2000, "name": 5})  # fmt: skip
    assert (p.progress, len(p.message), p.name) == (None, 1000, None)


def test_a_refusal_is_raised_as_the_error_the_daemon_named():
    for error, cls in [("BadTime", BadTime), ("TaskNotFound", TaskNotFound), ("Whatever", MartinetError)]:
        reply = Reply.from_header({"rid": "r", "ok": False, "error": {"type": error, "message": "why"}})
        with pytest.raises(cls, match="why"):
            reply.unwrap()
    assert str(Reply("r", False).refusal()) == "the daemon refused the request"


# ---- tolerance: added keys ignored, missing ones defaulted ----------------------------------


def test_added_keys_are_ignored_and_missing_ones_defaulted():
    hello = Hello.from_header({"worker_id": "w", "names": [], "capacity": 1, "new": {"x": 1}})
    assert hello == Hello("w", (), 1, version=0, starts=False)  # an old worker's hello: no starts
    welcome = Welcome.from_header({"epoch": "e", "future": True})
    assert welcome == Welcome("e", None, version=0)
    assert Welcome.from_header(
        {"epoch": 7, "database": "", "heartbeat_interval": "2", "max_payload": 0}
    ) == Welcome("7", None, version=0)
    task = Task.from_item({"id": 1, "attempt": 2, "name": "a", "args": [1], "timeout": "5", "extra": 1})
    assert task == Task(1, 2, "a", {})
    assert Task.from_item({"id": 1, "attempt": 2}).name == ""  # refused by the worker: no handler
    assert Reject.from_header({"id": 1, "attempt": 1}) == Reject(1, 1, None, "")
    assert Heartbeat.from_header({"running": [1, "x", 2]}) == Heartbeat((1, 2))
    assert Events.from_header({"event": "progress", "id": 1}).events == ({"event": "progress", "id": 1},)
    assert Request.from_header({"op": "ping"}) == Request("ping", {}, "")
    assert Reply.from_header({"rid": "r", "ok": True, "x": 1}).unwrap() == {"x": 1, "ok": True, "rid": "r"}
    held = Held.read_all(
        [{"id": 1, "attempt": 1, "database": 5}, {"id": 1}, {"id": 2, "attempt": 1, "started": "y"}]
    )
    assert held == (Held(1, 1, None, "5"), Held(2, 1, None, ""))


# ---- the store takes messages.Outcome as it takes its own ---------------------------------


def test_outcome_has_the_fields_of_the_stores_outcome_in_its_order():
    from martinet.store import Outcome as StoreOutcome

    assert Outcome._fields[: len(StoreOutcome._fields)] == StoreOutcome._fields
    o = Outcome(1, 2, "w", OutcomeKind.FAILED, None, {"type": "E"}, 3.0, True)
    assert tuple(getattr(o, f) for f in StoreOutcome._fields) == tuple(
        StoreOutcome(1, 2, "w", "failed", None, {"type": "E"}, 3.0, True)
    )
    assert OutcomeKind.RELEASED == "released" and f"{OutcomeKind.SUCCEEDED}" == "succeeded"


def test_the_daemon_and_messages_read_outcomes_alike():
    """The daemon reads its outcomes with messages.Outcome (server/outcomes.py): on every
    shape of item it reads what the daemon's own reader (server/incoming.outcome, gone)
    read, field by field (the store's eight)."""
    items = [
        {"id": 1, "attempt": 1, "ok": True, "result": [1, {"a": None}]},
        {"id": 1, "attempt": 1, "ok": True},
        {"id": 1, "attempt": 1, "ok": False, "error": ERROR, "retry_in": 5},
        {"id": 1, "attempt": 1, "ok": False, "error": "text", "final": 1},
        {"id": 1, "attempt": 1, "ok": False, "error": {"type": None, "message": None}, "retry_in": "x"},
        {
            "id": 1,
            "attempt": 1,
            "ok": False,
            "release": True,
            "error": {"message": "m" * 2000},
            "retry_in": 1e12,
        },
        {"id": 1, "attempt": 1, "ok": False, "release": True},
    ]
    error = {"type": "Error", "message": "", "traceback": None}
    release = {"type": "Release", "message": "m" * 1000}
    theirs = [
        (1, 1, "w", "succeeded", [1, {"a": None}], None, None, False),
        (1, 1, "w", "succeeded", None, None, None, False),
        (1, 1, "w", "failed", None, ERROR, 5.0, False),
        (1, 1, "w", "failed", None, error, None, True),
        (1, 1, "w", "failed", None, error, None, False),
        (1, 1, "w", "released", None, release, 366 * 86400.0, False),
        (1, 1, "w", "released", None, {"type": "Release", "message": "released"}, None, False),
    ]
    for item, expected in zip(items, theirs, strict=True):
        assert tuple(Outcome.from_item(item, "w"))[:8] == expected, item


def test_a_hello_carries_its_processs_incarnation_and_a_bad_one_is_none():
    hello = Hello("w1", ("a",), 4, incarnation="0f" * 16)
    header = protocol.decode(hello.encode())[1]
    assert header["incarnation"] == "0f" * 16 and Hello.from_header(header) == hello
    assert "incarnation" not in protocol.decode(Hello("w1", ("a",), 4).encode())[1]  # (as older workers send)
    for bad in ("", "x" * 65, 7, None, "é", "a\nb"):
        assert Hello.from_header({**header, "incarnation": bad}).incarnation is None, bad
