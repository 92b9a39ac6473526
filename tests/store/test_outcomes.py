"""Ending attempts: success, failure and retries, fencing by attempt and worker, cancellation.

No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

import pytest

from martinet.messages import Held
from martinet.models import Attempt
from martinet.present import attempt_infos, maybe_task_info
from martinet.store import iso
from tests.store.support import (
    LEASE,
    NOW,
    claim_one,
    row,
    submit,
)

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
    task = maybe_task_info(store.get_task(task_id))
    assert task["status"] == "succeeded"
    assert task["result"] == {"sum": 3}
    assert task["progress"] == 1.0
    assert task["worker"] is None
    assert task["finished_at"] == iso(NOW + 2)
    assert attempt_infos(store.attempts(task_id)) == [
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


def test_a_batch_of_ends_writes_each_attempts_row_with_its_own_error(store):
    """One end_attempts call for successes, a failure and a release (the attempt rows then
    carry error columns, NULL for the successes), and for successes alone."""
    from martinet.store import Outcome

    ids = [submit(store) for _ in range(5)]
    with store.atomic():
        claimed = store.claim("w1", ["add"], 5, NOW, LEASE)
        store.start([(t["id"], t["attempt"], "w1") for t in claimed[:4]], NOW + 1)
    boom = {"type": "ValueError", "message": "boom", "traceback": "Traceback ..."}
    with store.atomic():
        infos = store.end_attempts(
            [
                Outcome(ids[0], 1, "w1", "succeeded", result=1),
                Outcome(ids[1], 1, "w1", "failed", error=boom),
                Outcome(ids[2], 1, "w1", "released", error={"type": "Release", "message": "later"}),
                Outcome(ids[3], 1, "w1", "succeeded", result=None),
            ],
            NOW + 2,
        )
        alone = store.end_attempts([Outcome(ids[4], 1, "w1", "succeeded", result="x")], NOW + 3)
    assert [i["status"] for i in [*infos, *alone]] == [
        "succeeded",
        "failed",
        "queued",
        "succeeded",
        "succeeded",
    ]
    rows = {a.task_id: a for a in Attempt.select()}
    assert [(rows[t].outcome, rows[t].worker, rows[t].started_at, rows[t].ended_at) for t in ids] == [
        ("succeeded", "w1", NOW + 1, NOW + 2),
        ("failed", "w1", NOW + 1, NOW + 2),
        ("released", "w1", NOW + 1, NOW + 2),
        ("succeeded", "w1", NOW + 1, NOW + 2),
        ("succeeded", "w1", None, NOW + 3),  # (never reported started)
    ]
    assert [(rows[t].error_type, rows[t].error_message, rows[t].error_traceback) for t in ids] == [
        (None, None, None),
        ("ValueError", "boom", "Traceback ..."),
        ("Release", "later", None),
        (None, None, None),
        (None, None, None),
    ]


@pytest.mark.parametrize(
    "attempt, worker",
    [(2, "w1"), (0, "w1"), (1, "w2")],
    ids=["newer-attempt", "older-attempt", "other-worker"],
)
def test_complete_and_fail_are_fenced_by_attempt_and_worker(store, attempt, worker):
    task_id = submit(store)
    claim_one(store)
    before = maybe_task_info(store.get_task(task_id))
    assert store.complete(task_id, attempt, worker, "late", NOW + 1) is None
    assert store.fail(task_id, attempt, worker, {"type": "E"}, NOW + 1) is None
    assert store.fail(task_id, attempt, worker, {"type": "E"}, NOW + 1, final=True) is None
    assert not store.progress(task_id, attempt, worker, 0.5, "x", NOW + 1)
    assert maybe_task_info(store.get_task(task_id)) == before
    assert Attempt.select().count() == 0


def test_results_for_a_task_that_is_not_running_change_nothing(store):
    task_id = submit(store)
    claim_one(store)
    assert store.complete(task_id, 1, "w1", 1, NOW + 1) is not None
    after = maybe_task_info(store.get_task(task_id))
    assert store.complete(task_id, 1, "w1", 2, NOW + 2) is None
    assert store.fail(task_id, 1, "w1", {"type": "E"}, NOW + 2) is None
    assert maybe_task_info(store.get_task(task_id)) == after
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
    task = maybe_task_info(store.get_task(task_id))
    assert (task["status"], task["run_at"], task["worker"]) == ("failed", iso(NOW + 43), None)
    assert task["error"] == error
    assert task["finished_at"] is None
    assert store.claim("w1", ["add"], 1, NOW + 2, LEASE) == []  # failed waits for its time

    store.promote_due(NOW + 43)
    assert claim_one(store, now=NOW + 43)["attempt"] == 2
    info = store.fail(task_id, 2, "w1", {"type": "KeyError", "message": "k"}, NOW + 44, retry_in=1)
    assert info["status"] == "dead"
    task = maybe_task_info(store.get_task(task_id))
    assert task["status"] == "dead"
    assert task["finished_at"] == iso(NOW + 44)
    assert task["error"]["type"] == "KeyError"
    assert [
        (a["attempt"], a["outcome"], a["error"]["type"]) for a in attempt_infos(store.attempts(task_id))
    ] == [
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
    assert maybe_task_info(store.get_task(task_id))["cancel_requested"] is True
    assert row(task_id).status == "running"
    if ending == "complete":
        info = store.complete(task_id, 1, "w1", "done anyway", NOW + 2)
    else:
        info = store.fail(task_id, 1, "w1", {"type": "Cancelled"}, NOW + 2)
    assert (info["status"], info["outcome"]) == ("cancelled", "cancelled")
    assert row(task_id).status == "cancelled"
    assert row(task_id).finished_at == NOW + 2
    assert [a["outcome"] for a in attempt_infos(store.attempts(task_id))] == ["cancelled"]


# ---- a success for an attempt declared lost --------------------------------------


def test_a_success_for_an_attempt_declared_lost_is_kept(store):
    """The daemon lost its worker (it paused, the network was slow), yet the attempt ran
    on: its success, from that worker, for that attempt, is the truth."""
    task_id = submit(store)
    claim_one(store)
    store.release_worker("w1", NOW + 1, "silent for 3.1s")
    assert row(task_id).status == "failed"
    info = store.complete(task_id, 1, "w1", {"sum": 3}, NOW + 2)
    assert (info["status"], info["outcome"], info["late"]) == ("succeeded", "succeeded", True)
    task = maybe_task_info(store.get_task(task_id))
    assert (task["status"], task["result"], task["error"], task["reason"]) == (
        "succeeded",
        {"sum": 3},
        None,
        None,
    )
    assert [(a["attempt"], a["outcome"]) for a in attempt_infos(store.attempts(task_id))] == [
        (1, "succeeded")
    ]
    assert store.complete(task_id, 1, "w1", {"sum": 3}, NOW + 3) is None  # once


def test_a_task_stalled_by_losses_takes_its_late_success(store):
    store.poison_after = 1
    task_id = submit(store)
    claim_one(store)
    store.release_worker("w1", NOW + 1, "silent")
    assert row(task_id).status == "stalled"
    assert store.complete(task_id, 1, "w1", 7, NOW + 2)["status"] == "succeeded"


def test_a_late_success_is_fenced_by_worker_and_attempt(store):
    task_id = submit(store)
    claim_one(store)
    store.release_worker("w1", NOW + 1, "silent")
    assert store.complete(task_id, 1, "w2", 1, NOW + 2) is None  # not the worker that ran it
    store.promote_due(NOW + 1000)
    claim_one(store, worker="w2", now=NOW + 1000)  # attempt 2 runs
    assert store.complete(task_id, 1, "w1", 1, NOW + 1001) is None
    assert row(task_id).status == "running"


def test_an_interrupted_attempt_takes_no_late_success(store):
    task_id = submit(store)
    claim_one(store)
    store.release_worker("w1", NOW + 1, "worker shut down", outcome="interrupted")
    assert store.complete(task_id, 1, "w1", 1, NOW + 2) is None
    assert row(task_id).status == "queued"


def test_a_worker_coming_back_readopts_a_task_stalled_by_its_losses(store):
    store.poison_after = 1
    task_id = submit(store)
    claim_one(store)
    store.release_worker("w1", NOW + 1, "silent")
    assert store.readopt("w1", [Held(task_id, 1)], NOW + 2, LEASE) == [task_id]
    assert (row(task_id).status, row(task_id).worker) == ("running", "w1")


def test_a_late_failure_tells_the_truth_and_cannot_be_readopted(store):
    """A failure for an attempt declared lost: the task stays as the loss left it, its
    attempt row and last error say what happened, and a hello that still lists the
    attempt (sent before the ack came back) cannot make it run for ever."""
    task_id = submit(store)
    claim_one(store)
    store.release_worker("w1", NOW + 1, "silent")
    info = store.fail(task_id, 1, "w1", {"type": "ValueError", "message": "bad"}, NOW + 2)
    assert (info["status"], info["late"]) == ("failed", True)
    assert maybe_task_info(store.get_task(task_id))["error"]["type"] == "ValueError"
    assert [(a["attempt"], a["outcome"]) for a in attempt_infos(store.attempts(task_id))] == [(1, "failed")]
    assert store.readopt("w1", [Held(task_id, 1)], NOW + 3, LEASE) == []
