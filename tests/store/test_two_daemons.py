"""Two daemons on one database, each with its own connection (as when several share a
PostgreSQL): what the store (martinet/store/) promises holds across connections, not only within one.

SQLite has one writer at a time (BEGIN IMMEDIATE): there a second daemon's write
waits for the first one's commit, so the interleavings below that need two open
write transactions run one after the other instead.
"""

from __future__ import annotations

import pytest

from martinet.messages.worker_socket import Held
from martinet.models import Attempt, Task
from martinet.present import maybe_task_info
from tests.store.support import LEASE, NOW, every_minute, submit


def test_claim_never_hands_one_task_to_two_workers(store, other):
    ids = [submit(store) for _ in range(10)]
    # Given one daemon claiming in a transaction it has not committed yet
    with store.atomic():
        mine = store.claim("w1", ["add"], 4, NOW, LEASE)
        if store.locks_rows:  # When the other claims meanwhile (FOR UPDATE SKIP LOCKED)
            with other.atomic():
                theirs = other.claim("w2", ["add"], 10, NOW, LEASE)
    if not store.locks_rows:  # (SQLite: the other's claim waits for the commit)
        with other.atomic():
            theirs = other.claim("w2", ["add"], 10, NOW, LEASE)
    # Then no task went to both, and what is left is claimed once, later
    with store.atomic():
        rest = store.claim("w1", ["add"], 10, NOW, LEASE)
    mine_ids, theirs_ids, rest_ids = ({r["id"] for r in rows} for rows in (mine, theirs, rest))
    assert len(mine_ids) == 4 and not mine_ids & theirs_ids and not rest_ids & (mine_ids | theirs_ids)
    assert mine_ids | theirs_ids | rest_ids == set(ids)
    assert {(t.status, t.attempt) for t in Task.select()} == {("leased", 1)}
    workers = {t.id: t.worker for t in Task.select()}
    assert all(workers[i] == "w2" for i in theirs_ids) and all(workers[i] == "w1" for i in mine_ids)


def test_a_request_id_is_known_to_every_connection(store, other):
    task_id = submit(store, request_id="r-1")
    assert other.submit({"name": "add", "request_id": "r-1", "max_attempts": 3}, NOW) == (task_id, False)
    assert other.submit_many([{"name": "add", "request_id": "r-1", "max_attempts": 3}], NOW) == [
        (task_id, False)
    ]
    assert Task.select().count() == 1


def test_a_key_taken_on_another_connection_meanwhile_returns_its_holder(store, other, monkeypatch):
    # Given the second daemon reads that key "k" is free, in its turn's transaction...
    with other.atomic():
        free = other._exec("SELECT id FROM task WHERE unique_key = ?", ("k",)).fetchone()
        assert free is None
        if not store.locks_rows:  # (SQLite: one writer; the first daemon's turn came first)
            holder = None
        else:  # ...when the first daemon submits with that key and commits
            with store.atomic():
                holder = submit(store, key="k")
        # Then the second daemon's submit, deciding on the stale read, returns the holder
        real = other._exec

        def stale(sql, params=(), cache=True):
            if sql.startswith("SELECT id FROM task WHERE unique_key"):
                return real("SELECT id FROM task WHERE 1 = 0")
            return real(sql, params, cache)

        if holder is not None:
            monkeypatch.setattr(other, "_exec", stale)
            assert other.submit({"name": "add", "key": "k", "max_attempts": 3}, NOW) == (holder, False)
    if holder is None:
        holder = submit(store, key="k")
        assert other.submit({"name": "add", "key": "k", "max_attempts": 3}, NOW) == (holder, False)
    assert [t.id for t in Task.select()] == [holder]


def test_one_run_per_schedule_and_due_time_across_daemons(store, other):
    sched = every_minute(store)
    with store.atomic():
        first = store.expand_schedules(NOW, 3)
    with other.atomic():
        assert other.expand_schedules(NOW, 3) == []  # the same due time: the row was advanced
        second = other.expand_schedules(NOW + 60, 3)
    with store.atomic():
        assert store.expand_schedules(NOW + 60, 3) == []
    assert len(first) == len(second) == 1
    assert sorted(t.due_at for t in Task.select().where(Task.schedule_id == sched)) == [NOW, NOW + 60]


def test_leases_are_reaped_by_a_restarted_daemon(store, other):
    # Given a task leased to a worker by a daemon that then died
    task_id = submit(store)
    with store.atomic():
        store.claim("w1", ["add"], 1, NOW, LEASE)
    store.close()
    # When the next daemon (a new connection) reaps: not before the lease ends, then once
    assert other.reap_expired(NOW + LEASE - 1) == []
    with other.atomic():
        (lost,) = other.reap_expired(NOW + LEASE + 1)
    assert (lost["id"], lost["outcome"], lost["status"]) == (task_id, "lost", "failed")
    assert other.reap_expired(NOW + LEASE + 2) == []
    assert [(a.attempt, a.outcome) for a in Attempt.select()] == [(1, "lost")]


@pytest.mark.parametrize("late", ["complete", "fail", "progress"])
def test_a_late_answer_from_a_lost_attempt_changes_nothing(store, other, late):
    # Given attempt 1 lost by w1 (its lease reaped), and attempt 2 running on w2
    task_id = submit(store)
    store.claim("w1", ["add"], 1, NOW, LEASE)
    store.reap_expired(NOW + LEASE + 1)
    store.promote_due(NOW + 1000)
    (second,) = other.claim("w2", ["add"], 1, NOW + 1000, LEASE)
    assert second["attempt"] == 2
    before = Task.get_by_id(task_id).__data__
    # When w1's answer for attempt 1 arrives at last (at either daemon)
    for daemon in (store, other):
        if late == "complete":
            assert daemon.complete(task_id, 1, "w1", "old", NOW + 1001) is None
        elif late == "fail":
            assert daemon.fail(task_id, 1, "w1", {"type": "E", "message": "old"}, NOW + 1001) is None
        else:
            assert daemon.progress(task_id, 1, "w1", 0.5, "old", NOW + 1001) is False
    # Then attempt 2 is untouched, and its own answer counts, once
    assert Task.get_by_id(task_id).__data__ == before
    assert other.complete(task_id, 2, "w2", "new", NOW + 1002)["status"] == "succeeded"
    assert store.complete(task_id, 2, "w2", "again", NOW + 1003) is None  # a resend after a reconnect
    assert maybe_task_info(store.get_task(task_id))["result"] == "new"
    assert [(a.attempt, a.outcome) for a in Attempt.select().order_by(Attempt.attempt)] == [
        (1, "lost"),
        (2, "succeeded"),
    ]


def test_a_worker_that_moved_to_another_daemon_is_lost_only_by_the_one_it_is_with(store, other):
    """Each claim and adoption names its daemon (task.daemon): the daemon a worker left
    ends none of the attempts the worker's new daemon adopted."""
    store.daemon_id, other.daemon_id = "A", "B"
    first, second = submit(store), submit(store)
    claimed = store.claim("w", ["add"], 2, NOW, LEASE)
    assert [Task.get_by_id(r["id"]).daemon for r in claimed] == ["A", "A"]
    # The worker moves to B with the first task only (the second it had not started)
    assert other.readopt("w", [Held(first, 1, True)], NOW + 1, LEASE) == [first]
    assert Task.get_by_id(first).daemon == "B"
    # A hears no more from it: it loses what it still leased to it, not what B holds
    lost = store.release_worker("w", NOW + 5, "silent")
    assert [info["id"] for info in lost] == [second]
    assert Task.get_by_id(first).status == "running" and Task.get_by_id(first).worker == "w"
    # and B loses it when the worker goes silent there
    assert [info["id"] for info in other.release_worker("w", NOW + 9, "silent")] == [first]


def test_events_are_numbered_in_commit_order_across_daemons(pg_url):
    """PostgreSQL: a daemon records events only once the one before it has committed its
    own (EVENTS_LOCK), so a reader after an id never skips one committed later.
    (SQLite and MySQL serve one daemon: its events are in order.)"""
    import threading

    from martinet.store import EventRows, Store, open_database

    store, other = Store(open_database(pg_url)), Store(open_database(pg_url))
    row = EventRows([None], [None], ["malformed"], ["{}"])
    done: list[int] = []
    try:
        with store.atomic():
            (mine,) = store.record_events(row, NOW)  # numbered, not committed yet
            thread = threading.Thread(target=lambda: done.extend(_record_on(other, row)))
            thread.start()
            waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            for _ in range(1000):  # the other daemon waits for the lock (bounded: 10 s)
                if store.db.execute_sql(waiting).fetchone()[0]:
                    break
                thread.join(0.01)
            else:
                raise AssertionError("the other daemon's events did not wait for this one's commit")
            assert not done
        thread.join(10)
        assert done and done[0] > mine  # numbered after this one's commit
    finally:
        store.close()
        other.close()


def _record_on(store, row) -> list[int]:
    with store.atomic():
        return store.record_events(row, NOW)
