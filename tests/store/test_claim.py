"""Claiming queued tasks: order, names, limits, leases; and giving a claim back.

No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

from tests.store.support import (
    LEASE,
    NOW,
    claim_one,
    row,
    submit,
)

# ---- claim --------------------------------------------------------------------


def test_claim_orders_by_priority_then_run_at_then_id(store):
    a = submit(store, priority=0, run_at=NOW - 30)
    b = submit(store, priority=5, run_at=NOW - 10)
    c = submit(store, priority=5, run_at=NOW - 20)
    d = submit(store, priority=0, run_at=NOW - 30)
    e = submit(store, priority=-1, run_at=NOW - 99)
    f = submit(store, priority=5, run_at=NOW - 10)
    rows = store.claim("w1", ["add"], 10, NOW, LEASE)
    assert [r["id"] for r in rows] == [c, b, f, a, d, e]


def test_claim_leases_tasks_and_counts_the_attempt(store):
    task_id = submit(store, args={"x": [1, 2]}, max_attempts=4)
    rows = store.claim("w1", ["add"], 5, NOW, LEASE)
    assert rows == [
        {
            "id": task_id,
            "name": "add",
            "queue": "default",
            "args": {"x": [1, 2]},
            "attempt": 1,
            "timeout": None,
            "due": NOW,  # when it was due (submitted at NOW, to run at once)
        }
    ]
    r = row(task_id)
    assert (r.status, r.attempt, r.worker) == ("leased", 1, "w1")  # no handler on it yet
    assert r.lease_expires == NOW + LEASE
    assert r.started_at is None
    assert store.claim("w2", ["add"], 5, NOW, LEASE) == []  # not claimed twice


def test_claim_filters_by_name_and_respects_limit(store):
    adds = [submit(store, name="add") for _ in range(3)]
    mul = submit(store, name="mul")
    submit(store, name="add", run_at=NOW + 60)  # scheduled: not claimable yet
    assert store.claim("w1", [], 5, NOW, LEASE) == []
    assert store.claim("w1", ["add"], 0, NOW, LEASE) == []
    first = store.claim("w1", ["add"], 2, NOW, LEASE)
    assert [r["id"] for r in first] == adds[:2]
    with store.atomic():  # as the daemon does it
        rest = store.claim("w2", iter(["add", "nope"]), 5, NOW, LEASE)
    assert [r["id"] for r in rest] == adds[2:]
    assert row(mul).status == "queued"
    assert [r["id"] for r in store.claim("w3", ["mul", "add"], 5, NOW, LEASE)] == [mul]


def test_a_claim_says_whether_it_left_a_ready_task_behind(store):
    """It reads one past its limit (locked, not leased): a claim that takes exactly what
    is ready says so, and the daemon need not claim again to find the queue empty."""
    tasks = [submit(store) for _ in range(3)]
    with store.atomic():
        first = store.claim("w1", ["add"], 2, NOW, LEASE)
    assert ([r["id"] for r in first], first.more) == (tasks[:2], True)
    assert row(tasks[2]).status == "queued"  # the one read past the limit stays queued
    with store.atomic():
        last = store.claim("w2", ["add"], 1, NOW, LEASE)
    assert ([r["id"] for r in last], last.more) == (tasks[2:], False)
    with store.atomic():
        none = store.claim("w2", ["add"], 1, NOW, LEASE)
    assert (none, none.more) == ([], False)


def test_unclaim_puts_the_task_back_without_spending_an_attempt(store):
    task_id = submit(store)
    claim_one(store)
    assert not store.unclaim(task_id, 2, NOW + 1)  # wrong attempt
    assert store.unclaim(task_id, 1, NOW + 1)
    r = row(task_id)
    assert (r.status, r.attempt, r.worker, r.lease_expires, r.started_at) == ("queued", 0, None, None, None)
    assert not store.unclaim(task_id, 1, NOW + 2)  # no longer running
    assert claim_one(store, worker="w2")["attempt"] == 1
