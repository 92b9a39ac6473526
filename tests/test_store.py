"""The Store state machine on every backend (SQLite, PostgreSQL, MySQL).

No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

import json

import pytest

from martinet.models import Attempt, Schedule, Task
from martinet.retry import RetryPolicy
from martinet.store import Store, iso, open_database

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
LEASE = 30.0
TASK_KEYS = {
    "id",
    "releases",
    "key",
    "unique",
    "timeout",
    "reason",
    "kind",
    "name",
    "username",
    "description",
    "args",
    "queue",
    "priority",
    "status",
    "run_at",
    "attempt",
    "max_attempts",
    "progress",
    "progress_message",
    "result",
    "error",
    "worker",
    "cancel_requested",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "schedule",
    "due_at",
}
SCHEDULE_KEYS = {
    "id",
    "key",
    "until",
    "remaining",
    "misfire",
    "misfire_grace",
    "kind",
    "name",
    "username",
    "description",
    "args",
    "queue",
    "priority",
    "every",
    "recurrence",
    "timezone",
    "status",
    "next_due",
    "last_due",
    "created_at",
}


@pytest.fixture
def db(db_url):
    database = open_database(db_url)
    yield database
    database.close()


@pytest.fixture
def store(db) -> Store:
    return Store(db, RetryPolicy(base=10.0, factor=2.0, cap=300.0))


def submit(store: Store, name: str = "add", now: float = NOW, **spec) -> int:
    spec.setdefault("max_attempts", 3)
    task_id, created = store.submit({"name": name, **spec}, now)
    assert created
    return task_id


def claim_one(store: Store, worker: str = "w1", name: str = "add", now: float = NOW) -> dict:
    rows = store.claim(worker, [name], 1, now, LEASE)
    assert len(rows) == 1
    return rows[0]


def row(task_id: int) -> Task:
    return Task.get_by_id(task_id)


def every_minute(store: Store, first_due: float = NOW, **spec) -> int:
    spec = {"name": "tick", "kind": "interval", "spec": "60", **spec}
    sched_id, created = store.add_schedule(spec, first_due, NOW - 100)
    assert created
    return sched_id


# ---- submit and promotion -----------------------------------------------------


def test_submit_without_run_at_is_queued_now(store):
    task_id = submit(store, args={"x": 1}, username="ann", description="d", queue="q", priority=5)
    info = store.get_task(task_id)
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
        assert store.get_task(task_id)["args"] == {"i": i}
    assert [row(results[i][0]).status for i in (0, 1)] == ["queued", "scheduled"]


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
    assert store.get_task(first)["name"] == "add"
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
        }
    ]
    r = row(task_id)
    assert (r.status, r.attempt, r.worker) == ("running", 1, "w1")
    assert r.lease_expires == NOW + LEASE
    assert r.started_at == NOW
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


def test_unclaim_puts_the_task_back_without_spending_an_attempt(store):
    task_id = submit(store)
    claim_one(store)
    assert not store.unclaim(task_id, 2, NOW + 1)  # wrong attempt
    assert store.unclaim(task_id, 1, NOW + 1)
    r = row(task_id)
    assert (r.status, r.attempt, r.worker, r.lease_expires, r.started_at) == ("queued", 0, None, None, None)
    assert not store.unclaim(task_id, 1, NOW + 2)  # no longer running
    assert claim_one(store, worker="w2")["attempt"] == 1


# ---- outcomes -----------------------------------------------------------------


def test_complete_succeeds_and_writes_an_attempt_row(store):
    task_id = submit(store)
    claim_one(store)
    assert store.progress(task_id, 1, "w1", 0.5, "half", NOW + 1)
    info = store.complete(task_id, 1, "w1", {"sum": 3}, NOW + 2)
    assert info == {
        "id": task_id,
        "name": "add",
        "queue": "default",
        "attempt": 1,
        "status": "succeeded",
        "outcome": "succeeded",
        "result": {"sum": 3},
        "error": None,
        "run_at": None,
        "reason": None,
        "dependents": {"released": [], "cancelled": []},
    }
    task = store.get_task(task_id)
    assert task["status"] == "succeeded"
    assert task["result"] == {"sum": 3}
    assert task["progress"] == 1.0
    assert task["worker"] is None
    assert task["finished_at"] == iso(NOW + 2)
    assert store.attempts(task_id) == [
        {
            "attempt": 1,
            "worker": "w1",
            "started_at": iso(NOW),
            "ended_at": iso(NOW + 2),
            "duration": 2.0,
            "outcome": "succeeded",
            "error": None,
        }
    ]


@pytest.mark.parametrize(
    "attempt, worker",
    [(2, "w1"), (0, "w1"), (1, "w2")],
    ids=["newer-attempt", "older-attempt", "other-worker"],
)
def test_complete_and_fail_are_fenced_by_attempt_and_worker(store, attempt, worker):
    task_id = submit(store)
    claim_one(store)
    before = store.get_task(task_id)
    assert store.complete(task_id, attempt, worker, "late", NOW + 1) is None
    assert store.fail(task_id, attempt, worker, {"type": "E"}, NOW + 1) is None
    assert store.fail(task_id, attempt, worker, {"type": "E"}, NOW + 1, final=True) is None
    assert not store.progress(task_id, attempt, worker, 0.5, "x", NOW + 1)
    assert store.get_task(task_id) == before
    assert Attempt.select().count() == 0


def test_results_for_a_task_that_is_not_running_change_nothing(store):
    task_id = submit(store)
    claim_one(store)
    assert store.complete(task_id, 1, "w1", 1, NOW + 1) is not None
    after = store.get_task(task_id)
    assert store.complete(task_id, 1, "w1", 2, NOW + 2) is None
    assert store.fail(task_id, 1, "w1", {"type": "E"}, NOW + 2) is None
    assert store.get_task(task_id) == after
    assert Attempt.select().count() == 1
    queued = submit(store)
    assert store.complete(queued, 0, "w1", 1, NOW) is None
    assert store.complete(12345, 1, "w1", 1, NOW) is None
    assert row(queued).status == "queued"


def test_fail_retries_after_the_delay_then_dies_when_attempts_are_spent(store):
    task_id = submit(store, max_attempts=2)
    claim_one(store)
    error = {"type": "ValueError", "message": "bad", "traceback": "Traceback ..."}
    info = store.fail(task_id, 1, "w1", error, NOW + 1, retry_in=42)
    assert info["status"] == "failed" and info["outcome"] == "failed"
    assert info["run_at"] == iso(NOW + 43)
    task = store.get_task(task_id)
    assert (task["status"], task["run_at"], task["worker"]) == ("failed", iso(NOW + 43), None)
    assert task["error"] == error
    assert task["finished_at"] is None
    assert store.claim("w1", ["add"], 1, NOW + 2, LEASE) == []  # failed waits for its time

    store.promote_due(NOW + 43)
    assert claim_one(store, now=NOW + 43)["attempt"] == 2
    info = store.fail(task_id, 2, "w1", {"type": "KeyError", "message": "k"}, NOW + 44, retry_in=1)
    assert info["status"] == "dead"
    task = store.get_task(task_id)
    assert task["status"] == "dead"
    assert task["finished_at"] == iso(NOW + 44)
    assert task["error"]["type"] == "KeyError"
    assert [(a["attempt"], a["outcome"], a["error"]["type"]) for a in store.attempts(task_id)] == [
        (1, "failed", "ValueError"),
        (2, "failed", "KeyError"),
    ]
    store.promote_due(NOW + 1000)
    assert row(task_id).status == "dead"


def test_fail_without_retry_in_uses_the_backoff_policy(store):
    task_id = submit(store, max_attempts=5)
    claim_one(store)
    store.fail(task_id, 1, "w1", {"type": "E"}, NOW)
    assert NOW <= row(task_id).run_at <= NOW + 10.0  # base 10 for attempt 1
    store.promote_due(NOW + 10)
    claim_one(store, now=NOW + 10)
    store.fail(task_id, 2, "w1", {"type": "E"}, NOW + 10)
    assert NOW + 10 <= row(task_id).run_at <= NOW + 10 + 20.0


def test_negative_retry_in_means_retry_now(store):
    task_id = submit(store)
    claim_one(store)
    store.fail(task_id, 1, "w1", {"type": "E"}, NOW, retry_in=-5)
    assert row(task_id).run_at == NOW


def test_final_failure_is_dead_at_once(store):
    task_id = submit(store, max_attempts=10)
    claim_one(store)
    info = store.fail(task_id, 1, "w1", {"type": "Fail", "message": "no"}, NOW + 1, retry_in=5, final=True)
    assert info["status"] == "dead"
    assert row(task_id).status == "dead"
    assert row(task_id).finished_at == NOW + 1


@pytest.mark.parametrize("ending", ["complete", "fail"])
def test_a_task_asked_to_stop_ends_cancelled_however_it_ends(store, ending):
    task_id = submit(store)
    claim_one(store)
    assert store.revoke_task(task_id, NOW + 1) == ("cancelling", [])
    assert store.get_task(task_id)["cancel_requested"] is True
    assert row(task_id).status == "running"
    if ending == "complete":
        info = store.complete(task_id, 1, "w1", "done anyway", NOW + 2)
    else:
        info = store.fail(task_id, 1, "w1", {"type": "Cancelled"}, NOW + 2)
    assert (info["status"], info["outcome"]) == ("cancelled", "cancelled")
    assert row(task_id).status == "cancelled"
    assert row(task_id).finished_at == NOW + 2
    assert [a["outcome"] for a in store.attempts(task_id)] == ["cancelled"]


# ---- leases -------------------------------------------------------------------


def test_renew_leases_extends_only_listed_workers_with_half_the_lease_gone(store):
    mine = submit(store, name="a")
    theirs = submit(store, name="b")
    claim_one(store, worker="w1", name="a")
    claim_one(store, worker="w2", name="b")
    assert store.renew_leases([], NOW + 20, LEASE) == 0
    assert store.renew_leases(["w1"], NOW + 10, LEASE) == 0  # 20 s of 30 left: not yet
    assert row(mine).lease_expires == NOW + LEASE
    assert store.renew_leases(["w1", "ghost"], NOW + 16, LEASE) == 1  # 14 s left: renew
    assert row(mine).lease_expires == NOW + 16 + LEASE
    assert row(theirs).lease_expires == NOW + LEASE
    queued = submit(store, name="c")
    assert store.renew_leases(["w1", "w2"], NOW + 29, LEASE) == 1  # only w2's; queued untouched
    assert row(theirs).lease_expires == NOW + 29 + LEASE
    assert row(queued).lease_expires is None


def test_reap_expired_fails_tasks_whose_lease_ran_out(store):
    task_id = submit(store)
    claim_one(store)
    other = submit(store, name="other")
    claim_one(store, name="other", now=NOW + 10)
    assert [i["id"] for i in store.reap_expired(NOW + LEASE)] == []  # expires at NOW + 30: not before
    assert [i["id"] for i in store.reap_expired(NOW + LEASE + 0.5)] == [task_id]
    r = row(task_id)
    assert r.status == "failed"
    assert (r.worker, r.lease_expires) == (None, None)
    assert r.error_type == "WorkerLost"
    assert NOW + LEASE + 0.5 <= r.run_at <= NOW + LEASE + 0.5 + 10.0
    (attempt,) = store.attempts(task_id)
    assert attempt["outcome"] == "lost"
    assert attempt["error"]["type"] == "WorkerLost"
    assert "lease expired" in attempt["error"]["message"] and "w1" in attempt["error"]["message"]
    assert row(other).status == "running"


def test_reap_expired_kills_a_task_whose_attempts_are_spent(store):
    task_id = submit(store, max_attempts=1)
    claim_one(store)
    assert [i["id"] for i in store.reap_expired(NOW + 100)] == [task_id]
    assert row(task_id).status == "dead"
    assert row(task_id).finished_at == NOW + 100


def test_a_lost_task_that_was_asked_to_stop_is_cancelled(store):
    task_id = submit(store)
    claim_one(store)
    store.revoke_task(task_id, NOW + 1)
    assert [i["id"] for i in store.release_worker("w1", NOW + 2, "worker went silent")] == [task_id]
    assert row(task_id).status == "cancelled"
    assert [a["outcome"] for a in store.attempts(task_id)] == ["cancelled"]


def test_release_worker_ends_only_that_workers_attempts(store):
    a1 = submit(store, name="a")
    a2 = submit(store, name="a", max_attempts=1)
    b = submit(store, name="b")
    store.claim("w1", ["a"], 2, NOW, LEASE)
    claim_one(store, worker="w2", name="b")
    assert [i["id"] for i in store.release_worker("w1", NOW + 1, "worker went silent")] == [a1, a2]
    assert (row(a1).status, row(a2).status, row(b).status) == ("failed", "dead", "running")
    lost = store.attempts(a1)[0]
    assert (lost["outcome"], lost["error"]["type"]) == ("lost", "WorkerLost")
    assert "worker went silent" in lost["error"]["message"]
    assert [i["id"] for i in store.release_worker("w1", NOW + 2, "again")] == []
    assert [i["id"] for i in store.release_worker("nobody", NOW + 2, "x")] == []


def test_readopt_gives_a_lease_back_by_id_and_attempt(store):
    task_id = submit(store)
    claim_one(store, worker="w1")
    assert store.readopt("w1", [{"id": task_id, "attempt": 2}], NOW + 5, LEASE) == []
    assert store.readopt("w1", [{"id": 999, "attempt": 1}], NOW + 5, LEASE) == []
    assert row(task_id).lease_expires == NOW + LEASE
    assert store.readopt("w1", [{"id": task_id, "attempt": 1}], NOW + 5, LEASE) == [task_id]
    r = row(task_id)
    assert (r.status, r.worker, r.attempt, r.lease_expires) == ("running", "w1", 1, NOW + 5 + LEASE)
    assert store.complete(task_id, 1, "w1", "ok", NOW + 6)["status"] == "succeeded"
    assert store.readopt("w1", [{"id": task_id, "attempt": 1}], NOW + 7, LEASE) == []  # finished
    assert row(task_id).status == "succeeded"


def test_readopt_retakes_a_task_whose_lease_was_reaped(store):
    """The daemon restarted and reaped the lease; the worker comes back still running it."""
    task_id = submit(store)
    claim_one(store, worker="w1")
    store.reap_expired(NOW + 100)
    assert row(task_id).status == "failed"
    assert store.readopt("w9", [{"id": task_id, "attempt": 1}], NOW + 101, LEASE) == [task_id]
    r = row(task_id)
    assert (r.status, r.worker, r.attempt) == ("running", "w9", 1)
    assert store.complete(task_id, 1, "w9", "late but fine", NOW + 102)["status"] == "succeeded"


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
    assert store.revoke_task(4242, NOW) == ("missing", [])
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
    assert store.get_task(queued)["args"] == {"a": 2}
    assert store.update_task_args(running, {"a": 2}, NOW + 1) == "running"
    assert store.get_task(running)["args"] == {"a": 1}
    assert store.update_task_args(777, {}, NOW) == "missing"
    assert claim_one(store)["args"] == {"a": 2}


# ---- schedules ----------------------------------------------------------------


def test_add_schedule_dedupes_by_request_id(store):
    spec = {"name": "tick", "kind": "interval", "spec": "60", "request_id": "s-1"}
    first, created = store.add_schedule(spec, NOW, NOW)
    assert created
    again, created_again = store.add_schedule({**spec, "spec": "120"}, NOW + 5, NOW)
    assert (again, created_again) == (first, False)
    assert Schedule.select().count() == 1
    assert store.get_schedule(first)["every"] == "60 seconds"


def test_expand_creates_one_run_per_due_time(store):
    sched = every_minute(store, args={"k": "v"}, priority=3, queue="q", username="ann")
    assert store.expand_schedules(NOW - 0.001, 3) == []
    created = store.expand_schedules(NOW, 3)
    assert len(created) == 1
    task = store.get_task(created[0])
    assert task["status"] == "queued"
    assert (task["name"], task["args"], task["priority"], task["queue"]) == ("tick", {"k": "v"}, 3, "q")
    assert task["username"] == "ann"
    assert task["schedule"] == f"s{sched}"
    assert task["due_at"] == iso(NOW)
    assert task["max_attempts"] == 3  # the default, as the schedule names none
    info = store.get_schedule(sched)
    assert (info["last_due"], info["next_due"]) == (iso(NOW), iso(NOW + 60))
    assert store.expand_schedules(NOW, 3) == []
    assert store.expand_schedules(NOW + 59, 3) == []
    assert len(store.expand_schedules(NOW + 60, 3)) == 1
    assert Task.select().count() == 2


def test_expand_uses_the_schedules_own_max_attempts(store):
    every_minute(store, max_attempts=7)
    (task_id,) = store.expand_schedules(NOW, 3)
    assert row(task_id).max_attempts == 7


def test_expand_does_not_drift_when_it_runs_late(store):
    sched = every_minute(store)
    store.expand_schedules(NOW + 7.5, 3)  # fired 7.5 s late
    assert Schedule.get_by_id(sched).next_due == NOW + 60  # not NOW + 67.5
    (late,) = store.expand_schedules(NOW + 60 + 12.25, 3)
    assert row(late).due_at == NOW + 60
    assert row(late).run_at == NOW + 72.25
    assert Schedule.get_by_id(sched).next_due == NOW + 120


def test_expand_collapses_missed_runs_into_one(store):
    sched = every_minute(store)
    # Down for a while: due times NOW, +60, ..., +300 have all passed.
    created = store.expand_schedules(NOW + 330, 3)
    assert len(created) == 1
    assert row(created[0]).due_at == NOW + 300  # the latest missed due time
    s = Schedule.get_by_id(sched)
    assert (s.last_due, s.next_due) == (NOW + 300, NOW + 360)
    assert Task.select().count() == 1


def test_expand_cron_schedule(store):
    # 08:00 UTC on 15 January 2027; the cron fires at minute 0 and 30.
    sched, _ = store.add_schedule(
        {"name": "cron", "kind": "cron", "spec": "0,30 * * * *", "timezone": "UTC"}, NOW, NOW - 1
    )
    (first,) = store.expand_schedules(NOW + 1, 3)
    assert row(first).due_at == NOW
    assert Schedule.get_by_id(sched).next_due == NOW + 1800
    assert store.get_schedule(sched)["every"] == "0,30 * * * *"
    assert store.get_schedule(sched)["recurrence"] == "cron"


def test_two_daemons_expanding_the_same_due_time_create_one_run(db):
    one, two = Store(db), Store(db)
    sched = every_minute(one)
    # Both daemons read the schedule (next_due = NOW); the first one expands it...
    created = one.expand_schedules(NOW, 3)
    assert len(created) == 1
    # ...and the second one, working from what it read before, expands it too.
    Schedule.update(next_due=NOW, last_due=None).where(Schedule.id == sched).execute()
    assert two.expand_schedules(NOW + 0.5, 3) == []
    assert Task.select().count() == 1
    assert [t.id for t in Task.select()] == created
    assert Schedule.get_by_id(sched).next_due == NOW + 60
    # Sequentially, the second daemon sees the advanced schedule and does nothing.
    assert two.expand_schedules(NOW + 1, 3) == []
    assert len(two.expand_schedules(NOW + 60, 3)) == 1
    assert len(one.expand_schedules(NOW + 60, 3)) == 0
    assert Task.select().count() == 2


def test_remove_schedule_stops_its_runs(store):
    sched = every_minute(store)
    keep = every_minute(store, name="keep")
    assert store.remove_schedule(sched, NOW - 1)
    assert not store.remove_schedule(sched, NOW - 1)
    assert not store.remove_schedule(999, NOW - 1)
    info = store.get_schedule(sched)
    assert (info["status"], info["next_due"]) == ("removed", None)
    created = store.expand_schedules(NOW + 600, 3)
    assert [row(t).schedule_id for t in created] == [keep]
    assert [s["id"] for s in store.list_schedules()] == [f"s{keep}"]
    assert [s["id"] for s in store.list_schedules(include_removed=True)] == [f"s{sched}", f"s{keep}"]
    assert store.update_schedule(sched, NOW, args={"a": 1}) == "removed"
    assert store.update_schedule(keep, NOW, args={"a": 1}) == "updated"
    assert store.update_schedule(999, NOW, args={"a": 1}) is None
    assert store.get_schedule(keep)["args"] == {"a": 1}


# ---- reads --------------------------------------------------------------------


def test_task_info_and_schedule_info_shapes(store):
    task_id = submit(store, args={"x": 1})
    task = store.get_task(task_id)
    assert set(task) == TASK_KEYS
    assert task["kind"] == "task" and task["id"] == task_id
    assert task["cancel_requested"] is False
    assert task["error"] is None and task["result"] is None and task["schedule"] is None
    assert task["created_at"] == "2027-01-15T08:00:00.000+00:00"
    assert store.get_task(999) is None

    sched, _ = store.add_schedule(
        {"name": "tick", "kind": "interval", "spec": "90", "args": {"y": 2}, "timezone": "Europe/Paris"},
        NOW + 90,
        NOW,
    )
    info = store.get_schedule(sched)
    assert set(info) == SCHEDULE_KEYS
    assert info["id"] == f"s{sched}" and info["kind"] == "schedule"
    assert (info["every"], info["recurrence"], info["timezone"]) == ("90 seconds", "interval", "Europe/Paris")
    assert (info["status"], info["args"], info["queue"], info["priority"]) == (
        "active",
        {"y": 2},
        "default",
        0,
    )
    assert (info["next_due"], info["last_due"]) == (iso(NOW + 90), None)
    assert store.get_schedule(999) is None


def test_large_and_unicode_payloads_round_trip(store):
    big = {"blob": "x" * 200_000, "nested": [{"i": i} for i in range(1000)], "text": "héllo ✓ 😀"}
    assert len(json.dumps(big)) > 200_000  # far over MySQL's 64 KiB TEXT
    task_id = submit(store, args=big, description="d" * 100_000)
    assert store.get_task(task_id)["args"] == big
    assert row(task_id).description == "d" * 100_000
    (claimed,) = store.claim("w1", ["add"], 1, NOW, LEASE)
    assert claimed["args"] == big
    result = {"out": "y" * 300_000, "emoji": "😀"}
    store.complete(task_id, 1, "w1", result, NOW + 1)
    assert store.get_task(task_id)["result"] == result
    assert store.update_task_args(submit(store), big, NOW) == "updated"
    sched = every_minute(store, args=big)
    assert store.get_schedule(sched)["args"] == big
    (run,) = store.expand_schedules(NOW, 3)
    assert store.get_task(run)["args"] == big


def test_readopt_never_reopens_an_attempt_its_worker_ended(store):
    """The outcome was committed but its ack lost: a worker (restarted from its journal)
    reports the task again; the attempt stays ended and the outcome sent again is fenced."""
    task_id = submit(store)
    claim_one(store, worker="w1")
    assert store.fail(task_id, 1, "w1", {"type": "E", "message": "x"}, NOW + 1)["status"] == "failed"
    assert store.readopt("w1", [{"id": task_id, "attempt": 1}], NOW + 2, LEASE) == []
    assert row(task_id).status == "failed"
    assert store.fail(task_id, 1, "w1", {"type": "E", "message": "x"}, NOW + 3) is None
    assert [a.outcome for a in Attempt.select().where(Attempt.task_id == task_id)] == ["failed"]


def test_release_worker_keeps_what_the_worker_still_reports(store):
    kept, orphan = submit(store), submit(store)
    assert not store.runs_any("w1")
    claim_one(store, worker="w1")
    claim_one(store, worker="w1")
    assert store.runs_any("w1") and not store.runs_any("w2")
    infos = store.release_worker(
        "w1", NOW + 1, "its worker came back without it", keep={(kept, 1), (orphan, 2)}
    )
    assert [(i["id"], i["outcome"]) for i in infos] == [(orphan, "lost")]
    assert (row(kept).status, row(orphan).status) == ("running", "failed")
