"""Leases: renewal, expiry (the reaper), a worker gone, a worker back (readopt).

No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

from martinet.messages import Held
from martinet.models import Attempt
from martinet.present import attempt_infos
from tests.store.support import (
    LEASE,
    NOW,
    claim_one,
    row,
    submit,
)

# ---- leases -------------------------------------------------------------------


def test_renew_leases_extends_only_listed_workers_with_half_the_lease_gone(store):
    mine = submit(store, name="a")
    theirs = submit(store, name="b")
    claim_one(store, worker="w1", name="a")
    claim_one(store, worker="w2", name="b")
    store.renew_leases([], NOW + 20, LEASE)
    store.renew_leases(["w1"], NOW + 10, LEASE)  # 20 s of 30 left: not yet
    assert row(mine).lease_expires == NOW + LEASE
    store.renew_leases(["w1", "ghost"], NOW + 16, LEASE)  # 14 s left: renew
    assert row(mine).lease_expires == NOW + 16 + LEASE
    assert row(theirs).lease_expires == NOW + LEASE
    queued = submit(store, name="c")
    store.renew_leases(["w1", "w2"], NOW + 29, LEASE)  # only w2's; queued untouched
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
    (attempt,) = attempt_infos(store.attempts(task_id))
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
    assert [a["outcome"] for a in attempt_infos(store.attempts(task_id))] == ["cancelled"]


def test_release_worker_ends_only_that_workers_attempts(store):
    a1 = submit(store, name="a")
    a2 = submit(store, name="a", max_attempts=1)
    b = submit(store, name="b")
    store.claim("w1", ["a"], 2, NOW, LEASE)
    claim_one(store, worker="w2", name="b")
    assert [i["id"] for i in store.release_worker("w1", NOW + 1, "worker went silent")] == [a1, a2]
    assert (row(a1).status, row(a2).status, row(b).status) == ("failed", "dead", "running")
    lost = attempt_infos(store.attempts(a1))[0]
    assert (lost["outcome"], lost["error"]["type"]) == ("lost", "WorkerLost")
    assert "worker went silent" in lost["error"]["message"]
    assert [i["id"] for i in store.release_worker("w1", NOW + 2, "again")] == []
    assert [i["id"] for i in store.release_worker("nobody", NOW + 2, "x")] == []


def test_readopt_gives_a_lease_back_by_id_and_attempt(store):
    task_id = submit(store)
    claim_one(store, worker="w1")
    assert store.readopt("w1", [Held(task_id, 2)], NOW + 5, LEASE) == []
    assert store.readopt("w1", [Held(999, 1)], NOW + 5, LEASE) == []
    assert row(task_id).lease_expires == NOW + LEASE
    assert store.readopt("w1", [Held(task_id, 1)], NOW + 5, LEASE) == [task_id]
    r = row(task_id)
    assert (r.status, r.worker, r.attempt, r.lease_expires) == ("running", "w1", 1, NOW + 5 + LEASE)
    assert store.complete(task_id, 1, "w1", "ok", NOW + 6)["status"] == "succeeded"
    assert store.readopt("w1", [Held(task_id, 1)], NOW + 7, LEASE) == []  # finished
    assert row(task_id).status == "succeeded"


def test_readopt_retakes_a_task_whose_lease_was_reaped(store):
    """The daemon restarted and reaped the lease; the worker comes back still running it."""
    task_id = submit(store)
    claim_one(store, worker="w1")
    store.reap_expired(NOW + 100)
    assert row(task_id).status == "failed"
    assert store.readopt("w9", [Held(task_id, 1)], NOW + 101, LEASE) == [task_id]
    r = row(task_id)
    assert (r.status, r.worker, r.attempt) == ("running", "w9", 1)
    assert store.complete(task_id, 1, "w9", "late but fine", NOW + 102)["status"] == "succeeded"


def test_readopt_never_reopens_an_attempt_its_worker_ended(store):
    """The outcome was committed but its ack lost: a worker (restarted from its journal)
    reports the task again; the attempt stays ended and the outcome sent again is fenced."""
    task_id = submit(store)
    claim_one(store, worker="w1")
    assert store.fail(task_id, 1, "w1", {"type": "E", "message": "x"}, NOW + 1)["status"] == "failed"
    assert store.readopt("w1", [Held(task_id, 1)], NOW + 2, LEASE) == []
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
