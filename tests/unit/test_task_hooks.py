"""before_task and after_task: a framework's housekeeping around every attempt a worker
runs (Django closes its old connections there), in the handler's thread."""

from __future__ import annotations

import threading

import pytest

import martinet
from martinet import registry


@pytest.fixture
def hooks():
    before, after = list(registry.BEFORE), list(registry.AFTER)
    yield
    registry.BEFORE[:], registry.AFTER[:] = before, after


def test_hooks_run_around_every_attempt_in_the_handlers_thread(hooks, make_martinet_harness):
    seen: list[tuple] = []

    @martinet.task("hooked.work")
    def work(task, fail=False):
        seen.append(("handler", task.id, threading.get_ident()))
        if fail:
            raise ValueError("no")
        return "done"

    @martinet.before_task
    def before(task):
        seen.append(("before", task.id, threading.get_ident()))

    @martinet.after_task
    def after(task, outcome):
        seen.append(("after", task.id, outcome))

    h = make_martinet_harness(handlers=["hooked.work"])
    ok = h.m.execute("hooked.work")
    bad = h.m.execute({"name": "hooked.work", "max_attempts": 1}, {"fail": True})
    h.drain()
    for task_id, outcome in ((ok, "succeeded"), (bad, "failed")):
        mine = [s for s in seen if s[1] == task_id]
        assert [s[0] for s in mine] == ["before", "handler", "after"] and mine[2][2] == outcome
        assert mine[0][2] == mine[1][2]  # the same thread as its handler


def test_a_before_hook_that_raises_fails_the_attempt_and_an_after_hook_cannot(hooks, make_martinet_harness):
    @martinet.task("hooked.never")
    def never(task):
        raise AssertionError("not called")

    @martinet.before_task
    def refuse(task):
        raise RuntimeError("database unreachable")

    called = threading.Event()

    @martinet.after_task
    def broken(task, outcome):
        called.set()
        raise KeyError("ignored")

    h = make_martinet_harness(handlers=["hooked.never"])
    tid = h.m.execute({"name": "hooked.never", "max_attempts": 1})
    (ended,) = h.drain()
    assert ended["id"] == tid and ended["status"] == "dead"
    assert ended["error"]["type"] == "RuntimeError" and ended["error"]["message"] == "database unreachable"
    assert called.wait(5)  # it ran, and what it raised changed nothing


def test_a_slow_after_hook_holds_up_no_outcome(hooks, make_martinet_harness):
    """After hooks run once the outcome is reported: housekeeping that takes its time
    (a database connection closing) delays no task's end and fails none at its time limit."""
    go_on = threading.Event()

    @martinet.task("hooked.quick")
    def quick(task):
        return "done"

    @martinet.after_task
    def slow(task, outcome):
        go_on.wait(10)

    h = make_martinet_harness(handlers=["hooked.quick"])
    try:
        tid = h.m.execute({"name": "hooked.quick", "time_limit": 0.2})
        (ended,) = h.drain()  # while the hook still waits
        assert ended["id"] == tid and ended["status"] == "succeeded" and ended["result"] == "done"
    finally:
        go_on.set()
