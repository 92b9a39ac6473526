"""Shaping work as the daemon decides it: priority, schedules declared at every start,
dependencies refused or cancelled. In process, with the clock the test sets
(tests/core.py); what needs handlers or several processes is tests/e2e/test_shaping.py."""

from __future__ import annotations

from tests.core import Core

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
