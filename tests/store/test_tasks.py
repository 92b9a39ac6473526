"""Operator actions on tasks (revoke, update) and what reads return, on every backend.

No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

import json

import pytest

from martinet.errors import BadInput, TaskNotFound
from martinet.models import Task
from martinet.present import maybe_schedule_info, maybe_task_info
from martinet.store import iso
from tests.store.support import (
    LEASE,
    NOW,
    SCHEDULE_KEYS,
    TASK_KEYS,
    claim_one,
    every_minute,
    row,
    submit,
)

# ---- operator actions ---------------------------------------------------------


def test_revoke_task_on_waiting_running_finished_and_missing(store):
    scheduled = submit(store, run_at=NOW + 60)
    queued = submit(store)
    running = submit(store, name="long")
    claim_one(store, name="long")
    assert store.revoke_task(scheduled, NOW + 1) == ("cancelled", [])
    assert store.revoke_task(queued, NOW + 1) == ("cancelled", [])
    for task_id in (scheduled, queued):
        assert (row(task_id).status, row(task_id).finished_at) == ("cancelled", NOW + 1)
    assert store.revoke_task(running, NOW + 1) == ("cancelling", [])
    r = row(running)
    assert (r.status, bool(r.cancel_requested)) == ("running", True)
    assert store.revoke_task(queued, NOW + 2) == ("cancelled", [])  # already: reports its status
    assert row(queued).finished_at == NOW + 1
    with pytest.raises(TaskNotFound, match="no task with id 4242"):
        store.revoke_task(4242, NOW)
    store.promote_due(NOW + 100)
    assert row(scheduled).status == "cancelled"
    assert store.claim("w1", ["add"], 5, NOW + 100, LEASE) == []


def test_revoke_a_failed_task_waiting_for_its_retry(store):
    task_id = submit(store)
    claim_one(store)
    store.fail(task_id, 1, "w1", {"type": "E"}, NOW, retry_in=10)
    assert store.revoke_task(task_id, NOW + 1) == ("cancelled", [])
    store.promote_due(NOW + 20)
    assert row(task_id).status == "cancelled"


def test_update_task_args_only_while_waiting(store):
    queued = submit(store, args={"a": 1})
    running = submit(store, name="long", args={"a": 1})
    claim_one(store, name="long")
    assert store.update_task_args(queued, {"a": 2}, NOW + 1) == "updated"
    assert maybe_task_info(store.get_task(queued))["args"] == {"a": 2}
    with pytest.raises(BadInput, match=f"task {running} is running;"):
        store.update_task_args(running, {"a": 2}, NOW + 1)
    assert maybe_task_info(store.get_task(running))["args"] == {"a": 1}
    with pytest.raises(TaskNotFound, match="no task with id 777"):
        store.update_task_args(777, {}, NOW)
    assert claim_one(store)["args"] == {"a": 2}


# ---- reads --------------------------------------------------------------------


def test_task_info_and_schedule_info_shapes(store):
    task_id = submit(store, args={"x": 1})
    task = maybe_task_info(store.get_task(task_id))
    assert set(task) == TASK_KEYS
    assert task["kind"] == "task" and task["id"] == task_id
    assert task["cancel_requested"] is False
    assert task["error"] is None and task["result"] is None and task["schedule"] is None
    assert task["created_at"] == "2027-01-15T08:00:00.000+00:00"
    assert maybe_task_info(store.get_task(999)) is None

    sched, _ = store.add_schedule(
        {"name": "tick", "kind": "interval", "spec": "90", "args": {"y": 2}, "timezone": "Europe/Paris"},
        NOW + 90,
        NOW,
    )
    info = maybe_schedule_info(store.get_schedule(sched))
    assert set(info) == SCHEDULE_KEYS
    assert info["id"] == f"s{sched}" and info["kind"] == "schedule"
    assert (info["every"], info["recurrence"], info["timezone"]) == (
        "1 minute 30 seconds",
        "interval",
        "Europe/Paris",
    )
    assert (info["status"], info["args"], info["queue"], info["priority"]) == (
        "active",
        {"y": 2},
        "default",
        0,
    )
    assert (info["next_due"], info["last_due"]) == (iso(NOW + 90), None)
    assert maybe_schedule_info(store.get_schedule(999)) is None


def test_large_and_unicode_payloads_round_trip(store):
    big = {"blob": "x" * 200_000, "nested": [{"i": i} for i in range(1000)], "text": "héllo ✓ 😀"}
    assert len(json.dumps(big)) > 200_000  # far over MySQL's 64 KiB TEXT
    task_id = submit(store, args=big, description="d" * 100_000)
    assert maybe_task_info(store.get_task(task_id))["args"] == big
    assert row(task_id).description == "d" * 100_000
    (claimed,) = store.claim("w1", ["add"], 1, NOW, LEASE)
    assert claimed["args"] == big
    result = {"out": "y" * 300_000, "emoji": "😀"}
    store.complete(task_id, 1, "w1", result, NOW + 1)
    assert maybe_task_info(store.get_task(task_id))["result"] == result
    assert store.update_task_args(submit(store), big, NOW) == "updated"
    sched = every_minute(store, args=big)
    assert maybe_schedule_info(store.get_schedule(sched))["args"] == big
    (run,) = store.expand_schedules(NOW, 3)
    assert maybe_task_info(store.get_task(run))["args"] == big


# ---- transactions ----------------------------------------------------------------


def test_savepoints_inside_a_transaction_undo_only_their_own_work(store):
    """As the daemon nests them: a turn, a request in it, and a step inside that request."""
    with store.atomic():
        kept = submit(store, request_id="kept")
        with pytest.raises(ValueError), store.atomic():
            submit(store, request_id="undone")
            raise ValueError("this request fails")
        with store.atomic():
            inner_kept = submit(store, request_id="inner-kept")
            with pytest.raises(ValueError), store.atomic():
                submit(store, request_id="inner-undone")
                raise ValueError("this step fails")
            with store.atomic():  # the same depth again, after a rollback there
                deep = submit(store, request_id="deep")
        assert store.savepoints == 0
    ids = {r.request_id: r.id for r in Task.select(Task.request_id, Task.id)}
    assert ids == {"kept": kept, "inner-kept": inner_kept, "deep": deep}

    with pytest.raises(ValueError), store.atomic():  # and the transaction as a whole
        submit(store, request_id="all-undone")
        with store.atomic():
            submit(store, request_id="all-undone-inner")
        raise ValueError("the turn fails")
    assert Task.select().count() == 3 and store.savepoints == 0
