"""Shaping work as the daemon decides it: priority, schedules declared at every start,
dependencies refused or cancelled. In process, with the clock the test sets
(tests/core.py); what needs handlers through the API, against an embedded daemon and
worker threads at the end; what needs several processes, tests/e2e/test_shaping.py."""

from __future__ import annotations

import pytest

import martinet
from tests.core import Core
from tests.harness import wait_for

HOUR = 3600.0


def every(core: Core, seconds: float, args: dict, key: str) -> dict:
    """A schedule declared as `Martinet.every` sends it: the interval in seconds, the zone."""
    return core.request("every", name="echo", args=args, every=seconds, timezone="UTC", key=key)


def get(core: Core, ref: int | str) -> dict:
    return core.request("get", id=ref)["item"]


def test_higher_priority_runs_first_and_equal_priorities_keep_their_order(db_url, make_core):
    core = make_core(db_url)
    low = [core.submit("clock") for _ in range(3)]
    high = [core.submit("clock", priority=10) for _ in range(3)]
    urgent = core.submit("clock", priority=1000)  # "push to the front"
    core.hello("w1", ["clock"], capacity=1)
    began = []
    for _ in range(7):
        ((row,),) = core.claim().values()
        began.append(row["id"])
        core.succeed(row["id"])
        core.now += 0.01
    assert began == [urgent, *high, *low]


def test_a_key_holds_one_unfinished_task(db_url, make_core):
    core = make_core(db_url)

    def execute(key: str, **fields) -> tuple[int, bool]:
        reply = core.request("execute", name="add", args={"a": 1, "b": 1}, key=key, **fields)
        return reply["id"], reply.get("created", True)

    first, created = execute("avatar-7")
    again, again_created = execute("avatar-7")
    assert (again, created, again_created) == (first, True, False)
    assert (
        get(core, "avatar-7")["id"] == first
        and core.request("show", id="avatar-7")["item"]["key"] == "avatar-7"
    )
    core.hello("w1", ["add"])
    assert [row["id"] for row in core.claim()["w1"]] == [first]
    assert core.succeed(first)["status"] == "succeeded"
    later, later_created = execute("avatar-7")  # the first one ended: the key is free
    assert later_created and later != first
    core.claim()
    assert core.succeed(later)["status"] == "succeeded"
    ever, _ = execute("once-only", unique="always")
    core.claim()
    core.succeed(ever)
    assert execute("once-only", unique="always")[1] is False
    cancel_me, _ = execute("cancel-me", run_at=core.now + HOUR)  # scheduled "in 1 hour"
    assert core.request("revoke", id=cancel_me)["status"] == "cancelled"
    assert execute("cancel-me")[1]


def test_a_schedule_declared_at_every_start_exists_once(db_url, make_core):
    core = make_core(db_url)
    first = every(core, HOUR, {"v": 1}, key="hourly-sync")
    sid = first["id"]
    due = get(core, sid)["next_due"]
    core.now += 60
    again = every(core, HOUR, {"v": 2}, key="hourly-sync")  # the next application start
    assert (again["id"], again.get("created", True), first.get("created", True)) == (sid, False, True)
    info = get(core, sid)
    assert (info["args"], info["next_due"]) == ({"v": 2}, due)  # updated in place, its phase kept
    moved = every(core, 30 * 60, {"v": 2}, key="hourly-sync")
    assert moved["id"] == sid and get(core, sid)["every"] == "30 minutes"
    assert len(core.request("schedules")["items"]) == 1
    assert get(core, "hourly-sync")["id"] == sid
    core.request("revoke", id=sid)
    assert every(core, HOUR, {}, key="hourly-sync").get("created", True)  # a removed schedule frees its key


def test_after_an_unknown_task_is_refused_and_writes_nothing(sqlite_url, make_core):
    core = make_core(sqlite_url)
    error = core.refusal("execute", name="echo", args={}, after=[12345])
    assert error["type"] == "TaskNotFound" and "after names unknown task" in error["message"]
    for bad, message in (
        ({"after": "x"}, "after must be a list of task ids"),
        ({"unique": "sometimes", "key": "k"}, "unique must be 'active' or 'always'"),
        ({"priority": 1.5}, "priority must be an integer"),
    ):
        error = core.refusal("execute", name="echo", args={}, **bad)
        assert error["type"] == "BadInput" and message in error["message"], bad
    assert core.request("list")["items"] == []


def test_revoking_a_parent_cancels_what_waits_on_it(sqlite_url, make_core):
    core = make_core(sqlite_url)
    parent = core.submit("add", run_at=core.now + HOUR)  # scheduled "in 1 hour"
    child = core.submit("parents", after=[parent])
    assert core.request("revoke", id=parent)["status"] == "cancelled"
    assert get(core, child)["status"] == "cancelled"
    waited = core.request("wait", id=child, wait_for=5)  # answered at once: `wait` raises TaskFailed
    assert waited["done"] and waited["item"]["status"] == "cancelled"


# ---- through the API: an embedded daemon and worker threads (tests/live.py) ---------------


def test_dependencies_wait_pass_results_and_cancel_down_the_chain(make_live, db_url):
    live = make_live(db_url)
    m = live.m
    good = m.execute("add", {"a": 1, "b": 2})
    bad = m.execute({"name": "boom", "max_attempts": 1})
    child = m.execute("parents", {}, after=[good])
    both = m.execute("parents", {}, after=[good, bad])
    grandchild = m.execute("parents", {}, after=[both])
    assert m.get(child)["status"] == "waiting"
    assert m.show(both)["waiting"] == f"waiting for task(s) {good}, {bad} to succeed"
    live.worker()
    assert m.wait(child, timeout=10) == {str(good): 3}
    with pytest.raises(martinet.TaskFailed, match="cancelled"):
        m.wait(both, timeout=10)
    assert m.get(both)["reason"] == f"task {bad} it waited on ended dead"
    assert m.get(grandchild)["status"] == "cancelled"
    assert m.get(grandchild)["reason"] == f"task {both} it waited on ended cancelled"
    late = m.execute("parents", {}, after=[good])  # its parent already succeeded: runs at once
    assert m.wait(late, timeout=10) == {str(good): 3}


def test_release_gives_a_task_back_without_spending_attempts(make_live, db_url, tmp_path):
    live = make_live(db_url, max_releases=3)
    live.worker()
    m = live.m
    tid = m.execute({"name": "picky", "max_attempts": 1}, {"marker": str(tmp_path / "a"), "accept_on": 3})
    assert m.wait(tid, timeout=10) == "accepted"  # though max_attempts is 1
    info = m.show(tid)
    assert (info["releases"], info["attempt"], info["error"]) == (2, 3, None)
    assert [a["outcome"] for a in info["attempts"]] == ["released", "released", "succeeded"]
    assert info["attempts"][0]["error"]["message"] == "no GPU free"
    later = m.execute("picky", {"marker": str(tmp_path / "b"), "accept_on": 2, "delay": 60})
    wait_for(lambda: m.get(later)["status"] == "scheduled", timeout=10, what="the delayed release")
    assert m.get(later)["reason"] == "released: no GPU free"
    stubborn = m.execute("picky", {"marker": str(tmp_path / "c"), "accept_on": 100})
    wait_for(
        lambda: m.get(stubborn)["status"] == "stalled", timeout=10, what="the stall after too many releases"
    )
    assert m.get(stubborn)["reason"].startswith("stalled: released 4 times (more than max_releases=3)")
