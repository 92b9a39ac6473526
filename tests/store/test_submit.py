"""Submitting tasks and promoting them when due, on every backend.

No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

import pytest

from martinet.models import Task
from martinet.present import maybe_task_info
from martinet.store import iso, open_database
from tests.store.support import (
    NOW,
    claim_one,
    every_minute,
    row,
    submit,
)

# ---- submit and promotion -----------------------------------------------------


def test_submit_without_run_at_is_queued_now(store):
    task_id = submit(store, args={"x": 1}, username="ann", description="d", queue="q", priority=5)
    info = maybe_task_info(store.get_task(task_id))
    assert info["status"] == "queued"
    assert info["run_at"] == iso(NOW)
    assert info["args"] == {"x": 1}
    assert (info["username"], info["description"], info["queue"], info["priority"]) == ("ann", "d", "q", 5)
    assert info["attempt"] == 0 and info["max_attempts"] == 3


def test_submit_in_the_past_is_queued_and_in_the_future_is_scheduled(store):
    past = submit(store, run_at=NOW - 5)
    future = submit(store, run_at=NOW + 60)
    assert row(past).status == "queued"
    assert row(future).status == "scheduled"
    assert row(future).run_at == NOW + 60


@pytest.mark.parametrize("query, expected", [("", 1), ("?synchronous=full", 2), ("?synchronous=FULL", 2)])
def test_a_sqlite_url_chooses_how_commits_reach_the_disk(tmp_path, query, expected):
    db = open_database(f"sqlite:///{tmp_path}/d.db{query}")  # 1: normal (the default), 2: full
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == expected
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert (tmp_path / "d.db").exists()  # the file is the path, without the query


def test_submit_many_returns_each_rows_id_in_order(store):
    specs = [{"name": "add", "max_attempts": 3, "args": {"i": i}, "run_at": NOW + i % 2} for i in range(2500)]
    results = store.submit_many(specs, NOW)
    assert all(created for _id, created in results) and len({i for i, _ in results}) == 2500
    for i, (task_id, _) in enumerate(results):  # each id is the row made of its spec
        assert maybe_task_info(store.get_task(task_id))["args"] == {"i": i}
    assert [row(results[i][0]).status for i in (0, 1)] == ["queued", "scheduled"]


def test_submit_many_with_mixed_options_keeps_each_ones_and_the_order(store):
    # Rows leave out what they leave NULL, so a batch is written in runs of the same columns
    specs = [
        {
            "name": "add",
            "max_attempts": 3,
            "args": {"i": i},
            **({"timeout": 5.0, "username": "ann"} if i % 3 else {}),
        }
        for i in range(10)
    ]
    ids = [task_id for task_id, _ in store.submit_many(specs, NOW)]
    assert ids == sorted(ids)  # submission order: the dispatch order of equal tasks
    for i, task_id in enumerate(ids):
        info = maybe_task_info(store.get_task(task_id))
        assert info["args"] == {"i": i}
        assert (info["timeout"], info["username"]) == ((5.0, "ann") if i % 3 else (None, None))


def test_submit_many_knows_request_ids_from_before_and_within_the_batch(store):
    ((old, _),) = store.submit_many([{"name": "add", "max_attempts": 3, "request_id": "r0"}], NOW)
    specs = [{"name": "add", "max_attempts": 3, "request_id": rid} for rid in ("r0", "r1", "r1", None, None)]
    results = store.submit_many(specs, NOW)
    assert results[0] == (old, False)
    assert results[1][1] and results[2] == (results[1][0], False)  # a repeat in the batch: the same task
    assert results[3][1] and results[4][1] and results[3][0] != results[4][0]
    assert Task.select().count() == 4


def test_submit_many_with_keys_or_parents_keeps_their_rules(store):
    parent = submit(store)
    specs = [
        {"name": "add", "max_attempts": 3, "key": "k", "unique": "active"},
        {"name": "add", "max_attempts": 3, "key": "k", "unique": "active"},
        {"name": "add", "max_attempts": 3, "after": [parent]},
    ]
    (first, c1), (second, c2), (child, c3) = store.submit_many(specs, NOW)
    assert (c1, c2, c3) == (True, False, True) and first == second
    assert row(child).status == "waiting"


def test_submit_with_known_request_id_returns_the_same_task(store):
    first, created = store.submit({"name": "add", "max_attempts": 3, "request_id": "r-1"}, NOW)
    assert created
    again, created_again = store.submit(
        {"name": "other", "max_attempts": 1, "request_id": "r-1", "args": {"y": 2}}, NOW + 1
    )
    assert (again, created_again) == (first, False)
    assert Task.select().count() == 1
    assert maybe_task_info(store.get_task(first))["name"] == "add"
    other, created = store.submit({"name": "add", "max_attempts": 3, "request_id": "r-2"}, NOW)
    assert created and other != first


def test_promote_due_queues_scheduled_tasks_when_their_time_comes(store):
    soon = submit(store, run_at=NOW + 10, queue="a")
    later = submit(store, run_at=NOW + 20, queue="b")
    also = submit(store, run_at=NOW + 20, queue="b")
    assert store.promote_due(NOW + 9.999) == []
    assert store.promote_due(NOW + 10) == ["a"]  # the queues that got ready tasks
    assert (row(soon).status, row(later).status) == ("queued", "scheduled")
    assert store.promote_due(NOW + 10) == []
    assert store.promote_due(NOW + 30) == ["b"]
    assert row(later).status == row(also).status == "queued"


def test_promote_due_queues_retries_whose_delay_is_over(store):
    task_id = submit(store)
    claim_one(store)
    store.fail(task_id, 1, "w1", {"type": "E", "message": "m"}, NOW, retry_in=5)
    assert store.promote_due(NOW + 4) == []
    assert store.promote_due(NOW + 5) == ["default"]
    assert row(task_id).status == "queued"


def test_a_lead_queues_tasks_due_soon_and_their_claim_says_when_they_are_due(store):
    soon = submit(store, run_at=NOW + 10.01)
    later = submit(store, run_at=NOW + 10.05)
    assert store.next_wakeup(0.02) == NOW + 9.99  # a task's wakeup comes the lead early
    assert store.promote_due(NOW + 9.995, lead=0.02) == ["default"]
    assert (row(soon).status, row(later).status) == ("queued", "scheduled")
    assert row(soon).run_at == NOW + 10.01  # queued ahead, its due time kept
    claimed = store.claim("w1", ["add"], 10, NOW + 9.995, lease=60)
    assert [(t["id"], t["run_at"]) for t in claimed] == [(soon, NOW + 10.01)]
    assert (row(soon).status, row(soon).started_at) == ("leased", None)  # its worker says when it starts
    submit(store, run_at=NOW - 1)
    (due,) = store.claim("w1", ["add"], 10, NOW + 9.995, lease=60)
    assert "run_at" not in due  # already due: nothing to wait for


def test_a_lead_does_not_make_schedules_wake_early(store):
    every_minute(store, first_due=NOW + 50)
    assert store.next_wakeup(0.02) == NOW + 50  # a schedule's runs are made when due


def test_next_wakeup_is_the_earliest_waiting_task_or_schedule(store):
    assert store.next_wakeup() is None
    submit(store)  # queued: already due, not a wakeup
    assert store.next_wakeup() is None
    submit(store, run_at=NOW + 100)
    assert store.next_wakeup() == NOW + 100
    sched = every_minute(store, first_due=NOW + 50)
    assert store.next_wakeup() == NOW + 50
    retry = submit(store, name="r")
    claim_one(store, name="r")
    store.fail(retry, 1, "w1", {"type": "E"}, NOW, retry_in=7)
    assert store.next_wakeup() == NOW + 7
    store.revoke_task(retry, NOW)
    assert store.next_wakeup() == NOW + 50
    store.remove_schedule(sched, NOW)
    assert store.next_wakeup() == NOW + 100


def test_tasks_made_waiting_elsewhere_are_settled_once_looked_at_again(store):
    """An application's transaction (enqueue_in) inserts waiting tasks without marking the
    tasks they wait on (mark_parents=False: it must not lock the daemon's rows), and one
    of those may end before it commits: settle_waiting looks again, as the end would have."""
    running, done, dead = submit(store), submit(store), submit(store)
    claim_one(store)
    claim_one(store, worker="w2")
    claim_one(store, worker="w3")
    store.complete(done, 1, "w2", 1, NOW)
    store.fail(dead, 1, "w3", {"type": "E", "message": "m"}, NOW, final=True)
    waits, ready, doomed, later = (
        store.submit({"name": "add", "max_attempts": 3, "after": after}, NOW, mark_parents=False)[0]
        for after in ([running, done], [done], [running], [done])
    )
    grandchild = store.submit({"name": "add", "max_attempts": 3, "after": [doomed]}, NOW, mark_parents=False)[
        0
    ]
    # what was true when they were inserted: `running` was running, `dead` not yet dead
    Task.update(status="waiting").where(Task.id.in_([ready, doomed, later])).execute()
    Task.update(run_at=NOW + 60).where(Task.id == later).execute()
    assert not row(running).has_dependents and not row(doomed).has_dependents
    Dependency = store.Dependency
    Dependency.update(parent_id=dead).where(Dependency.task_id == doomed).execute()

    settled = store.settle_waiting([waits, ready, doomed, later, grandchild], NOW + 1)
    assert sorted(settled["released"]) == sorted([ready, later])
    assert sorted(settled["cancelled"]) == sorted([doomed, grandchild])
    assert (row(ready).status, row(later).status) == ("queued", "scheduled")
    assert row(doomed).reason == f"task {dead} it waited on ended dead"
    assert row(grandchild).reason == f"task {doomed} it waited on ended cancelled"
    assert row(waits).status == "waiting" and row(running).has_dependents  # its end will settle it
    store.complete(running, 1, "w1", 1, NOW + 2)
    assert row(waits).status == "queued"
    assert store.settle_waiting(None, NOW + 3) == {"released": [], "cancelled": []}
