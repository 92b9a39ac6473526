"""What a handler hands back reaches the daemon whole or as a clear failure: a result too
large for the wire, long errors, batches of outcomes, the last progress report; and a
worker's capacity and time limits stay as asked (issue 23, items 1-3)."""

from __future__ import annotations

import threading
import time

import pytest

from martinet import protocol
from martinet.messages import Task, Welcome
from martinet.present import maybe_task_info
from martinet.protocol import Cmd
from martinet.validate import MAX_ERROR_MESSAGE, MAX_TRACEBACK
from martinet.worker import TaskContext, Worker
from tests.fakes import header


class FakeSocket:
    """Records what the worker sends, the raw frames too (their size is the point here)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_multipart(self, frames, flags=0) -> None:
        self.frames.append(frames[0])

    def close(self, linger=None) -> None:
        pass

    def take(self, cmd: Cmd) -> list[dict]:
        found = [h for c, h in map(lambda f: protocol.decode([f]), self.frames) if c is cmd]
        self.frames = []
        return found


def make_worker(handlers: dict, **welcome) -> Worker:
    w = Worker(handlers=handlers, worker_id="w1")
    w.wsock, w.ssock = FakeSocket(), FakeSocket()
    w._welcomed = True  # (a worker reports to the daemon that welcomed it)
    w._on_welcome(Welcome.from_header({"epoch": "e1", "heartbeat_interval": 1.0, "liveness": 3, **welcome}))
    return w


def run(w: Worker, *tasks: tuple[int, str, dict]) -> list[dict]:
    """The daemon sends tasks, a handler thread runs each, the loop drains: the outcomes sent."""
    for task_id, name, args in tasks:
        w._on_task(Task.from_item({"id": task_id, "attempt": 1, "name": name, "args": args}))
    for _ in tasks:
        ctx = w._jobs.get_nowait()
        w._pool_step(ctx)
    w._drain_events()
    return [item for h in w.ssock.take(Cmd.ENDED) for item in h["ended"]]


def test_a_result_over_max_payload_fails_its_attempt_saying_its_size_and_the_limit():
    w = make_worker(
        {"big": lambda task, n: "x" * n}, max_payload=1000, max_message=protocol.max_message(1000)
    )
    ok, too_big = run(w, (1, "big", {"n": 990}), (2, "big", {"n": 1000}))
    assert ok["ok"] and ok["result"] == "x" * 990  # 992 bytes as JSON: within
    assert not too_big["ok"] and "final" not in too_big  # retried: max_attempts decides
    assert too_big["error"]["message"].startswith(
        "the handler's result is 1002 bytes as JSON, over the limit of 1000 (max_payload)"
    )
    assert not w._running  # ended, not left running for ever


def test_a_daemon_that_does_not_say_its_limits_gets_the_default_ones():
    w = make_worker({"big": lambda task, n: "x" * n})
    assert (w._max_payload, w._max_message) == (1_048_576, protocol.max_message(1_048_576))
    (outcome,) = run(w, (1, "big", {"n": 1_048_577}))
    assert "over the limit of 1048576 (max_payload)" in outcome["error"]["message"]


def chain_raise(links: int, message: str):
    """A traceback of `links` chained exceptions (Python would collapse deep recursion)."""
    exc = None
    for i in range(links):
        try:
            raise KeyError(i) from exc
        except KeyError as caught:
            exc = caught
    raise ValueError(message) from exc


def test_a_long_error_is_trimmed_saying_so_and_its_traceback_keeps_where_it_was_raised():
    w = make_worker({"deep": lambda task, links, message: chain_raise(links, message)})
    (error,) = [o["error"] for o in run(w, (1, "deep", {"links": 1000, "message": "é" * 50_000}))]
    assert len(error["message"]) == MAX_ERROR_MESSAGE and error["message"].endswith("characters cut]")
    tb = error["traceback"]
    assert len(tb) <= MAX_TRACEBACK
    assert (
        tb.startswith("[")
        and "characters cut from the start of this traceback]\n" in tb.splitlines()[0] + "\n"
    )
    assert tb.endswith("ValueError: " + "é" * 50_000 + "\n")  # the message in full, as Python wrote it
    assert "in chain_raise\n    raise ValueError(message) from exc\n" in tb  # where it was raised


def test_an_error_is_trimmed_to_what_a_message_to_the_daemon_can_carry():
    # Characters outside ASCII take 6 to 12 bytes as JSON: a traceback short in characters
    # can still be long in bytes. With a small max_payload the error still fits.
    w = make_worker({"deep": lambda task, links, message: chain_raise(links, message)}, max_payload=100)
    (outcome,) = run(w, (1, "deep", {"links": 5, "message": "\U0001f600" * 9000}))
    assert len(protocol.dumps(outcome["error"])) <= 16_384
    assert outcome["error"]["type"] == "ValueError"
    assert outcome["error"]["traceback"].rstrip().endswith("\U0001f600")


def test_a_long_progress_message_is_cut_saying_so():
    w = make_worker({})
    sent = []
    ctx = TaskContext(1, 1, "p", {}, lambda m: sent.append(header(m)))
    ctx.progress(0.5, "y" * 5000)
    assert len(sent[0]["message"]) == 1000 and sent[0]["message"].endswith("characters cut]")
    w._close_sockets()


def test_outcomes_too_many_bytes_for_one_message_go_in_several(monkeypatch):
    limit = 50_000
    w = make_worker({"big": lambda task, n: "x" * n}, max_payload=40_000, max_message=limit)
    outcomes = run(w, *[(i, "big", {"n": 30_000}) for i in range(1, 5)])
    assert sorted(o["id"] for o in outcomes) == [1, 2, 3, 4] and all(o["ok"] for o in outcomes)
    w._send_outcomes(list(w.outbox.pending.values()))  # and sent again (not acknowledged): the same way
    assert len(w.ssock.frames) == 4 and max(len(f) for f in w.ssock.frames) <= limit


def test_an_outcome_no_message_can_carry_is_sent_as_a_failure_and_never_again_as_it_was():
    w = make_worker({"big": lambda task, n: "x" * n})
    (first,) = run(w, (1, "big", {"n": 300_000}))
    assert first["ok"]
    w._on_welcome(
        Welcome.from_header(
            {"epoch": "e2", "max_payload": 100_000, "max_message": protocol.max_message(100_000)}
        )
    )
    (again,) = [item for h in w.ssock.take(Cmd.ENDED) for item in h["ended"]]
    assert not again["ok"] and "over the limit of" in again["error"]["message"]
    assert len(w.outbox.pending[(1, 1)].body) < 1000  # what goes again, should it have to, is the failure


# ---- capacity and time limits --------------------------------------------------------------


def test_a_thread_abandoned_at_its_time_limit_ends_when_its_call_returns():
    release = threading.Event()
    started = threading.Event()

    def stuck(task):
        started.set()
        release.wait()  # blocked in C: the interruption cannot land

    w = make_worker({"stuck": stuck, "add": lambda task, a, b: a + b}, max_payload=1000)
    w.options.concurrency = 1
    w._start_thread()
    w._on_task(Task.from_item({"id": 1, "attempt": 1, "name": "stuck", "args": {}, "timeout": 0.01}))
    assert started.wait(5)
    now = time.monotonic() + 1
    w._enforce_timecheck_limits(now)  # interrupted (in vain)
    w._enforce_timecheck_limits(now + w.options.timeout_grace)  # abandoned, a new thread started
    w._drain_events()
    (timed_out,) = [item for h in w.ssock.take(Cmd.ENDED) for item in h["ended"]]
    assert timed_out["error"]["type"] == "TaskTimeout"
    old, new = w._threads
    release.set()
    old.join(5)
    assert not old.is_alive() and new.is_alive()  # capacity: one thread, as asked
    w._on_task(Task.from_item({"id": 2, "attempt": 1, "name": "add", "args": {"a": 1, "b": 2}}))
    deadline = time.monotonic() + 5
    while not w.ssock.frames and time.monotonic() < deadline:
        w._drain_events()
        time.sleep(0.005)
    assert [o["result"] for h in w.ssock.take(Cmd.ENDED) for o in h["ended"]] == [3]


def test_a_handler_that_returns_as_it_is_abandoned_keeps_its_outcome_and_its_thread():
    w = make_worker({"add": lambda task, a, b: a + b})
    w._on_task(
        Task.from_item({"id": 1, "attempt": 1, "name": "add", "args": {"a": 1, "b": 2}, "timeout": 0.01})
    )
    ctx = w._jobs.get_nowait()
    w._pool_step(ctx)  # returned: its outcome waits in the queue for the loop
    now = time.monotonic() + 1
    w._enforce_timecheck_limits(now)
    w._enforce_timecheck_limits(now + w.options.timeout_grace)  # too late to abandon it
    assert w._threads == [] and not ctx._abandoned
    w._drain_events()
    assert [o["result"] for h in w.ssock.take(Cmd.ENDED) for o in h["ended"]] == [3]


def test_the_loop_waits_no_longer_than_the_next_time_limit_and_a_start_wakes_it():
    w = make_worker({"add": lambda task, a, b: a + b})
    now = time.monotonic()
    w._next_heartbeat = now + 1.0
    assert w._poll_timeout(now) == 0.5
    w._on_task(
        Task.from_item({"id": 1, "attempt": 1, "name": "add", "args": {"a": 1, "b": 2}, "timeout": 0.03})
    )
    assert w._start_check is not None  # it looks for the task's start soon (test_worker_threads)
    w._start_check = None
    ctx = w._running[1]
    ctx._deadline = now + 0.03  # as the handler's thread sets it when it starts
    assert w._poll_timeout(now) == pytest.approx(0.03)
    ctx._deadline, ctx._abandon_at = None, now + 0.01
    assert w._poll_timeout(now) == pytest.approx(0.01)
    ctx._abandon_at = None
    import os

    os.set_blocking(w._wake_r, False)
    while True:  # empty the pipe
        try:
            os.read(w._wake_r, 65536)
        except BlockingIOError:
            break
    w._pool_step(w._jobs.get_nowait())
    assert os.read(w._wake_r, 65536)  # the start of a limited handler woke the loop


# ---- the daemon: the last progress report ---------------------------------------------------


def test_progress_in_the_turn_of_the_outcome_is_stored_before_it(db_url, make_core):
    core = make_core(db_url)
    core.hello("w1", ["steps"])
    ids = [core.submit("steps"), core.submit("steps")]
    core.claim()
    progress = [
        {"id": i, "attempt": 1, "name": "steps", "progress": p, "message": f"step {p}", "worker_id": "w1"}
        for i in ids
        for p in (0.5, 1.0)
    ]
    ended = [
        {"id": ids[0], "attempt": 1, "ok": True, "result": 3},
        {"id": ids[1], "attempt": 1, "ok": False, "error": {"type": "ValueError", "message": "x" * 10}},
    ]
    out = core.status(
        *[(Cmd.PROGRESS, p) for p in progress[:3]],
        (Cmd.ENDED, {"worker_id": "w1", "ended": ended[:1]}),
        (Cmd.PROGRESS, progress[3]),
        (Cmd.ENDED, {"worker_id": "w1", "ended": ended[1:]}),
    )
    kinds = [(e["event"], e["id"], e.get("progress")) for e in out.events]
    assert kinds == [
        ("progress", ids[0], 1.0),  # coalesced within the turn: the latest, never lost
        ("progress", ids[1], 1.0),
        ("succeeded", ids[0], None),
        ("failed", ids[1], None),
    ]
    for task_id in ids:
        row = maybe_task_info(core.store.get_task(task_id))
        assert (row["progress"], row["progress_message"]) == (1.0, "step 1.0")


def test_a_traceback_too_long_from_an_older_worker_keeps_its_end(db_url, make_core):
    core = make_core(db_url)
    core.hello("w1", ["boom"])
    task_id = core.submit("boom", max_attempts=1)
    core.claim()
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 20_000 + "ValueError: here"
    error = {"type": "ValueError", "message": "m", "traceback": tb}
    core.status((Cmd.ENDED, {"worker_id": "w1", "ended": [{"id": task_id, "attempt": 1, "ok": False,
                                                             "error": error}]}))  # fmt: skip
    row = maybe_task_info(core.store.get_task(task_id))
    assert row["status"] == "dead"
    stored = row["error"]["traceback"]
    assert len(stored) <= MAX_TRACEBACK and stored.endswith("ValueError: here")
    assert stored.startswith("[") and "characters cut from the start" in stored.splitlines()[0]


def test_a_result_over_max_payload_from_a_worker_that_does_not_check_is_a_failure(db_url, make_core):
    core = make_core(db_url, max_payload=1000)
    core.hello("w1", ["big"])
    ids = [core.submit("big", max_attempts=1), core.submit("big", max_attempts=1)]
    core.claim()
    ended = [
        {"id": ids[0], "attempt": 1, "ok": True, "result": "x" * 998},  # 1000 bytes as JSON
        {"id": ids[1], "attempt": 1, "ok": True, "result": "x" * 999},
    ]
    core.status((Cmd.ENDED, {"worker_id": "w1", "ended": ended}))
    ok, over = (maybe_task_info(core.store.get_task(i)) for i in ids)
    assert (ok["status"], ok["result"]) == ("succeeded", "x" * 998)
    assert over["status"] == "dead" and over["result"] is None
    assert (
        over["error"]["message"]
        == "the handler's result is 1001 bytes as JSON, over the limit of 1000 (max_payload)"
    )


def test_a_result_is_stored_as_json_dumps_writes_it():
    """store.rows.result_text writes None and numbers itself, the rest through json.dumps."""
    import json

    from martinet.store.rows import result_text

    values = [None, 0, -5, 2**70, 1.5, -0.0, 1e300, 1796633208.3481057, float("nan"), float("inf"),
              True, False, "s☃", {"a": [1, None]}, [1, "x"]]  # fmt: skip
    assert [result_text(v) for v in values] == [json.dumps(v) for v in values]
