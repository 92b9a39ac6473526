"""Leased, then running: a claimed task waits in its worker's prefetch (leased) until a
handler starts it (start: running, started_at). Leases, fencing and reaping treat both
alike. And a worker that comes back to an attempt the daemon reaped leaves one attempt row.

No processes, no sockets, no sleeps: time is passed in as `now`.
"""

from __future__ import annotations

from martinet.messages import Held
from martinet.present import attempt_infos, maybe_task_info, task_page
from martinet.query import Search
from tests.store.support import LEASE, NOW, claim_one, row, submit


def test_a_claimed_task_is_leased_until_a_handler_starts_it(store):
    task_id = submit(store)
    claim_one(store, start=False)
    info = maybe_task_info(store.get_task(task_id))
    assert (info["status"], info["worker"], info["started_at"]) == ("leased", "w1", None)
    # Fenced as an outcome is: another attempt, another worker, change nothing
    store.start([(task_id, 2, "w1"), (task_id, 1, "w2"), (999, 1, "w1")], NOW + 1)
    assert row(task_id).status == "leased"
    # When its handler starts, it is running from then
    store.start([(task_id, 1, "w1")], NOW + 2)
    r = row(task_id)
    assert (r.status, r.started_at, r.lease_expires) == ("running", NOW + 2, NOW + LEASE)
    store.start([(task_id, 1, "w1")], NOW + 3)  # a start counts once
    assert row(task_id).started_at == NOW + 2
    # Its attempt's duration counts from the start, not the claim
    store.complete(task_id, 1, "w1", "ok", NOW + 5)
    (attempt,) = attempt_infos(store.attempts(task_id))
    assert attempt["duration"] == 3.0
    store.start([(task_id, 1, "w1")], NOW + 6)  # ended: no start changes it
    assert row(task_id).status == "succeeded"


def test_progress_or_an_outcome_before_the_start_report_implies_the_start(store):
    a, b = submit(store), submit(store)
    store.claim("w1", ["add"], 2, NOW, LEASE)
    assert store.progress(a, 1, "w1", 0.5, "half", NOW + 1)
    assert (row(a).status, row(a).started_at) == ("running", NOW + 1)
    assert not store.progress(a, 1, "w2", 0.6, None, NOW + 2)  # fenced by worker
    store.start([(a, 1, "w1")], NOW + 3)  # the late report changes nothing
    assert row(a).started_at == NOW + 1
    # An outcome of a leased attempt ends it: its start is unknown, so says its attempt row
    assert store.complete(b, 1, "w1", "ok", NOW + 4)["status"] == "succeeded"
    (attempt,) = attempt_infos(store.attempts(b))
    assert (attempt["outcome"], attempt["started_at"], attempt["duration"]) == ("succeeded", None, None)


def test_a_leased_task_holds_its_lease_like_a_running_one(store):
    renewed, reaped, gone, revoked, given_back = (submit(store, name=n) for n in "abcde")
    claim_one(store, worker="w1", name="a", start=False)
    claim_one(store, worker="w2", name="b", start=False)
    claim_one(store, worker="w3", name="c", start=False)
    claim_one(store, worker="w1", name="d", start=False)
    claim_one(store, worker="w1", name="e", start=False)
    # Counted where users look: search and counts by status, and the limits' running counts
    assert store.count_tasks(Search()) == {"leased": 5}
    found, _ = task_page(store.search_tasks(Search(statuses=("leased",)), 10))
    assert {t["id"] for t in found} == {renewed, reaped, gone, revoked, given_back}
    assert task_page(store.search_tasks(Search(statuses=("running",)), 10))[0] == []
    assert sum(count for _q, _n, count in store.lanes_state(NOW, 60)["running"]) == 5
    assert {name for _q, name, _at in store.lanes_state(NOW + 1, 60)["recent"]} == set("abcde")
    # Renewed by its worker's traffic; reaped when its lease runs out; lost with its worker
    assert store.runs_any("w3") and not store.runs_any("w4")
    assert [i["id"] for i in store.release_worker("w3", NOW + 2, "silent")] == [gone]
    store.renew_leases(["w1"], NOW + 16, LEASE)
    assert [i["id"] for i in store.reap_expired(NOW + LEASE + 1)] == [reaped]
    assert (row(reaped).status, row(gone).status) == ("failed", "failed")
    assert [a["started_at"] for a in attempt_infos(store.attempts(gone))] == [None]  # it never started
    # Asked to stop, it is cancelled however its attempt ends; given back, no attempt spent
    assert store.revoke_task(revoked, NOW + 3) == ("cancelling", [])
    assert store.complete(revoked, 1, "w1", None, NOW + 4)["status"] == "cancelled"
    assert store.unclaim(given_back, 1, NOW + 5) == ("default", "e")
    assert (row(given_back).status, row(given_back).attempt) == ("queued", 0)
    assert row(renewed).status == "leased"


def test_a_reaped_attempt_its_worker_still_runs_leaves_one_attempt_row(store):
    """The daemon was down longer than a lease: on restart the reaper ended the attempt
    lost; then the worker's hello readopted it, and its outcome ended it. One attempt,
    one row, the truth: not a lost row and a succeeded row with the same number."""
    task_id = submit(store)
    claim_one(store, worker="w1", now=NOW)  # started at NOW
    assert [i["id"] for i in store.reap_expired(NOW + 100)] == [task_id]
    assert [a["outcome"] for a in attempt_infos(store.attempts(task_id))] == ["lost"]
    assert store.readopt("w1", [Held(task_id, 1, True)], NOW + 101, LEASE) == [task_id]
    info = maybe_task_info(store.get_task(task_id))
    assert (info["status"], info["error"], info["worker"]) == ("running", None, "w1")  # the loss is undone
    assert row(task_id).started_at == NOW  # its real start, kept
    assert store.complete(task_id, 1, "w1", "ok", NOW + 102)["status"] == "succeeded"
    assert [(a["attempt"], a["outcome"], a["duration"]) for a in attempt_infos(store.attempts(task_id))] == [
        (1, "succeeded", 102.0)
    ]


def test_a_reaped_attempt_comes_back_leased_unless_its_handler_started(store):
    waiting, started = submit(store), submit(store)
    store.claim("w1", ["add"], 2, NOW, LEASE)
    store.reap_expired(NOW + 100)
    held = [Held(waiting, 1), Held(started, 1, True)]
    assert store.readopt("w1", held, NOW + 101, LEASE) == [waiting, started]
    assert (row(waiting).status, row(waiting).started_at) == ("leased", None)
    assert (row(started).status, row(started).started_at) == ("running", NOW + 101)  # its report was lost
    assert attempt_infos(store.attempts(waiting)) == [] and attempt_infos(store.attempts(started)) == []
    # A task still held by its worker keeps its state, or starts if the worker says so
    assert store.readopt("w1", [Held(waiting, 1, True)], NOW + 102, LEASE) == [waiting]
    assert (row(waiting).status, row(waiting).started_at) == ("running", NOW + 102)
