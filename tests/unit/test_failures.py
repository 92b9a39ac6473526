"""Failures are retried, explained and actionable: dead letters, retry backoff, stalls, as
the daemon decides them. In process, with the clock the test sets (tests/core.py); a failing
handler is its worker's ENDED. Time limits in handlers, poison and restarts with real
workers are tests/e2e/test_failures.py."""

from __future__ import annotations

from datetime import datetime

from martinet.protocol import Cmd
from tests.core import Core


def fail(core: Core, task_id: int, message: str = "kaboom") -> None:
    """The attempt the task is on fails, as its worker reports a handler's exception."""
    task = core.request("get", id=task_id)["item"]
    error = {"type": "RuntimeError", "message": message}
    item = {"id": task_id, "attempt": task["attempt"], "ok": False, "error": error}
    core.status((Cmd.ENDED, {"worker_id": task["worker"], "ended": [item]}))


def run_once(core: Core, task_id: int) -> None:
    """Turns until the task is claimed (its retry due, the clock a second on each time)."""
    for _ in range(60):
        if any(row["id"] == task_id for rows in core.claim().values() for row in rows):
            return
        core.now += 1.0
    raise AssertionError(f"task {task_id} was never claimed")


def get(core: Core, task_id: int) -> dict:
    return core.request("get", id=task_id)["item"]


def test_dead_task_is_found_and_retried_with_a_fresh_set_of_attempts(sqlite_url, make_core):
    core = make_core(sqlite_url)
    core.hello("w1", ["flaky"])
    tid = core.submit("flaky", max_attempts=2, retry_base=0.01)
    for _ in range(2):  # a handler that succeeds on its third attempt
        run_once(core, tid)
        fail(core, tid)
    assert get(core, tid)["status"] == "dead"
    assert [t["id"] for t in core.request("list", status="dead")["items"]] == [tid]
    core.request("retry", id=tid)
    run_once(core, tid)
    assert core.succeed(tid, attempt=3)["status"] == "succeeded"  # attempt numbers keep counting
    info = core.request("show", id=tid)["item"]
    assert (info["attempt"], info["max_attempts"]) == (3, 4)
    assert [a["outcome"] for a in info["attempts"]] == ["failed", "failed", "succeeded"]
    error = core.refusal("retry", id=tid)
    assert error["type"] == "BadInput"
    assert "only a dead, stalled, cancelled or failed task can be retried" in error["message"]


def test_per_task_backoff_bounds_the_retry_delay(sqlite_url, make_core):
    core = make_core(sqlite_url)
    core.hello("w1", ["boom"])
    tid = core.submit("boom", max_attempts=3, retry_base=600, retry_cap=900)
    run_once(core, tid)
    fail(core, tid)
    info = get(core, tid)
    assert info["status"] == "failed"
    delay = (
        datetime.fromisoformat(info["run_at"]).timestamp()
        - datetime.fromisoformat(info["updated_at"]).timestamp()
    )
    assert 0 <= delay <= 600
    assert "retry at" in core.request("show", id=tid)["item"]["waiting"]


def test_stalled_task_is_held_until_retried(sqlite_url, make_core):
    core = make_core(sqlite_url)
    tid = core.submit("add")
    core.request("stall", id=tid, reason="waiting for the vendor to fix their API")
    core.hello("w1", ["add"])
    shown = core.request("show", id=tid)["item"]
    assert shown["status"] == "stalled"
    assert shown["waiting"].startswith("waiting for the vendor to fix their API; held until")
    core.now += 0.5
    assert core.claim() == {}  # not dispatched, though a worker is free
    core.request("retry", id=tid)
    run_once(core, tid)
    assert core.succeed(tid)["status"] == "succeeded"
    error = core.refusal("stall", id=tid)
    assert error["type"] == "BadInput"
    assert "only a scheduled, queued or failed task can be stalled" in error["message"]
