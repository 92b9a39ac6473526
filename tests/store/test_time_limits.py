"""Time limits the daemon enforces itself (overdue, time_out), and readopt's bounds.

A worker that takes tasks and never answers would keep them for ever: its heartbeats
renew their leases. The store finds the attempts past their timeout plus a grace and
ends them as timed out. No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

from martinet.messages import Held
from martinet.models import Attempt
from martinet.present import attempt_infos
from tests.store.support import LEASE, NOW, claim_one, row, submit

GRACE = 10.0


def overdue_ids(store, now: float, limit: int = 100, after=None) -> list[int]:
    return [r["id"] for r in store.overdue(now, GRACE, limit, after)]


def test_overdue_finds_running_attempts_past_their_timeout_and_grace(store):
    # Given running tasks with and without a time limit, and one that is only queued
    quick = submit(store, timeout=5.0)
    slow = submit(store, timeout=60.0)
    unlimited = submit(store)
    for _ in range(3):
        claim_one(store)
    submit(store, timeout=1.0)  # queued: never overdue
    # Then only those whose timeout and grace have passed since they started are overdue
    assert overdue_ids(store, NOW + 5 + GRACE) == []  # at the very limit: not yet
    assert overdue_ids(store, NOW + 5 + GRACE + 0.1) == [quick]
    assert overdue_ids(store, NOW + 60 + GRACE + 0.1) == [quick, slow]
    assert overdue_ids(store, NOW + 10**9) == [quick, slow]  # no timeout: never
    (first,) = store.overdue(NOW + 16, GRACE, 10)
    assert first == {"id": quick, "attempt": 1, "worker": "w1", "status": "running", "started_at": NOW,
                     "timeout": 5.0}  # fmt: skip
    assert row(unlimited).status == "running"


def test_overdue_counts_from_a_delayed_tasks_due_time(store):
    # A task leased ahead of its run_at starts then (its worker waits, then says so): so does its limit
    task_id = submit(store, timeout=5.0, run_at=NOW + 2)
    store.promote_due(NOW + 2, lead=2.0)
    claim_one(store, start=False)
    store.start([(task_id, 1, "w1")], NOW + 2)
    assert overdue_ids(store, NOW + 5 + GRACE + 1) == []
    assert overdue_ids(store, NOW + 2 + 5 + GRACE + 0.1) == [task_id]


def test_overdue_counts_a_leased_attempt_from_its_claim_and_says_it_is_leased(store):
    # Leased (no handler on it yet): the daemon judges it (Daemon._time_limits), from the claim on
    task_id = submit(store, timeout=5.0)
    claim_one(store, start=False, now=NOW + 1)
    assert overdue_ids(store, NOW + 1 + 5 + GRACE) == []
    (found,) = store.overdue(NOW + 1 + 5 + GRACE + 0.1, GRACE, 10)
    assert (found["id"], found["status"], found["started_at"]) == (task_id, "leased", NOW + 1)
    # And a leased attempt times out as a running one does
    assert store.time_out(task_id, 1, NOW + 30, "too late")["status"] == "failed"


def test_overdue_comes_in_bounded_batches_ordered_by_start(store):
    ids = [submit(store, timeout=1.0) for _ in range(5)]
    for i in range(5):
        claim_one(store, now=NOW + i)
    later = NOW + 100
    first = store.overdue(later, GRACE, 2)
    assert [r["id"] for r in first] == ids[:2]
    after = (first[-1]["started_at"], first[-1]["id"])
    assert overdue_ids(store, later, 2, after) == ids[2:4]
    assert overdue_ids(store, later, 2, (NOW + 3, ids[3])) == ids[4:]
    # Equal start times are told apart by id
    more = [submit(store, timeout=1.0) for _ in range(2)]
    store.claim("w2", ["add"], 2, NOW + 10, LEASE)
    assert overdue_ids(store, later, 10, (NOW + 10, more[0])) == [more[1]]


def test_time_out_ends_the_attempt_as_failed_and_retries_it_with_backoff(store):
    task_id = submit(store, timeout=5.0)
    claim_one(store, worker="stuck")
    info = store.time_out(task_id, 1, NOW + 20, "no answer within the task's time limit")
    assert (info["id"], info["status"], info["outcome"], info["attempt"]) == (task_id, "failed", "failed", 1)
    assert info["error"]["type"] == "TaskTimeout"
    r = row(task_id)
    assert (r.status, r.worker, r.lease_expires) == ("failed", None, None)
    assert NOW + 20 <= r.run_at <= NOW + 20 + 10.0  # the store's backoff (base 10 s)
    assert r.error_type == "TaskTimeout" and "stuck" in r.error_message
    (attempt,) = attempt_infos(store.attempts(task_id))
    assert (attempt["outcome"], attempt["worker"]) == ("failed", "stuck")
    assert attempt["error"]["type"] == "TaskTimeout"
    assert "no answer within the task's time limit" in attempt["error"]["message"]
    # Fenced: once ended it ends no more, and its worker's late answer is fenced out
    assert store.time_out(task_id, 1, NOW + 21, "again") is None
    assert store.complete(task_id, 1, "stuck", "late", NOW + 22) is None
    assert overdue_ids(store, NOW + 100) == []
    # Nor may the worker that held it take it back with a hello
    assert store.readopt("stuck", [Held(task_id, 1)], NOW + 23, LEASE) == []
    assert row(task_id).status == "failed"
    # It runs again elsewhere, as attempt 2
    store.promote_due(NOW + 40)
    assert claim_one(store, worker="healthy", now=NOW + 40)["attempt"] == 2
    assert store.complete(task_id, 2, "healthy", "ok", NOW + 41)["status"] == "succeeded"


def test_time_out_of_the_last_attempt_is_dead(store):
    task_id = submit(store, timeout=5.0, max_attempts=1)
    claim_one(store)
    assert store.time_out(task_id, 1, NOW + 20, "too late")["status"] == "dead"
    assert row(task_id).finished_at == NOW + 20


def test_time_out_of_a_task_asked_to_stop_cancels_it(store):
    task_id = submit(store, timeout=5.0)
    claim_one(store)
    store.revoke_task(task_id, NOW + 1)
    assert store.time_out(task_id, 1, NOW + 20, "too late")["status"] == "cancelled"


def test_time_out_is_fenced_by_attempt(store):
    task_id = submit(store, timeout=5.0)
    claim_one(store)
    assert store.time_out(task_id, 2, NOW + 20, "not this attempt") is None
    assert row(task_id).status == "running"
    assert Attempt.select().where(Attempt.task_id == task_id).count() == 0


def test_readopt_takes_back_no_more_than_its_limit_in_the_order_given(store):
    ids = [submit(store) for _ in range(5)]
    store.claim("w1", ["add"], 5, NOW, LEASE)
    store.reap_expired(NOW + 100)  # the daemon restarted: all five lost
    held = [Held(i, 1) for i in [999, *reversed(ids)]]
    assert store.readopt("w1", held, NOW + 101, LEASE, limit=2) == [ids[4], ids[3]]
    assert [row(i).status for i in ids] == ["failed"] * 3 + ["leased"] * 2  # no handler had started them
    assert store.readopt("w1", held, NOW + 101, LEASE, limit=0) == []


def test_readopt_never_takes_a_task_running_on_another_worker(store):
    task_id = submit(store)
    claim_one(store, worker="w1")
    assert store.readopt("liar", [Held(task_id, 1)], NOW + 1, LEASE) == []
    assert (row(task_id).worker, row(task_id).lease_expires) == ("w1", NOW + LEASE)
