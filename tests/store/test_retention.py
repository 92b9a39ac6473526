"""Retention in the store: old finished tasks are deleted with their attempts, in bounded
batches, on every backend; never a task that is unfinished or that an unfinished task
waits on. Time is passed in as numbers: no sleeps."""

from __future__ import annotations

from martinet.models import STATES, Attempt, Dependency, Task
from martinet.store import Pruned, Store

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = 86400.0
KEEP = {"succeeded": NOW - 7 * DAY, "cancelled": NOW - 7 * DAY, "dead": NOW - 30 * DAY}


def old(store: Store, status: str, days: float, attempts: int = 0, **spec) -> int:
    """A task in `status` that finished `days` days before NOW, with `attempts` attempt rows."""
    task_id, _ = store.submit({"name": "job", "args": {}, "max_attempts": 3, **spec}, NOW - days * DAY - 60)
    Task.update(status=status, finished_at=NOW - days * DAY, attempt=attempts).where(
        Task.id == task_id
    ).execute()
    for n in range(1, attempts + 1):
        Attempt.create(task_id=task_id, attempt=n, worker="w1", started_at=NOW - days * DAY - 5,
                       ended_at=NOW - days * DAY, outcome="failed" if n < attempts else status)  # fmt: skip
    return task_id


def ids() -> set[int]:
    return {t.id for t in Task.select(Task.id)}


def prune_all(store: Store, cutoffs: dict, limit: int = 500, dry_run: bool = False) -> tuple[int, int, int]:
    """Every batch until the end, as the CLI does: (tasks, attempts, calls)."""
    tasks = attempts = calls = 0
    after = None
    while True:
        with store.atomic():
            pruned = store.prune(cutoffs, limit, after, dry_run=dry_run)
        tasks, attempts, calls = tasks + pruned.tasks, attempts + pruned.attempts, calls + 1
        if not pruned.more:
            return tasks, attempts, calls
        after = pruned.last


# ---- the store, on every backend -------------------------------------------------------


def test_each_state_has_its_own_age(store):
    gone = [old(store, "succeeded", 8), old(store, "cancelled", 7.5), old(store, "dead", 31)]
    kept = [old(store, "succeeded", 6), old(store, "cancelled", 1), old(store, "dead", 10)]
    assert prune_all(store, KEEP)[0] == 3
    assert ids() == set(kept) and not set(gone) & ids()


def test_unfinished_tasks_are_never_pruned_whatever_their_times(store):
    # Given a task in every unfinished state, each with a finished time long past
    unfinished = [
        old(store, state, 100) for state in STATES if state not in ("succeeded", "dead", "cancelled")
    ]
    assert len(unfinished) == 7
    # When everything finished before now is pruned
    assert prune_all(store, {s: NOW for s in ("succeeded", "dead", "cancelled")})[0] == 0
    # Then they are all still there
    assert ids() == set(unfinished)


def test_only_the_states_named_are_pruned(store):
    ok, dead = old(store, "succeeded", 40), old(store, "dead", 40)
    assert prune_all(store, {"dead": NOW - DAY})[0] == 1
    assert ids() == {ok}
    assert dead not in ids()


def test_attempt_rows_go_with_their_task_and_are_counted(store):
    gone = old(store, "dead", 40, attempts=3)
    kept = old(store, "dead", 2, attempts=2)
    assert prune_all(store, KEEP)[:2] == (1, 3)
    assert {a.task_id for a in Attempt.select()} == {kept}
    assert gone not in ids()


def test_batches_are_bounded_and_resume_where_the_last_stopped(store):
    made = [old(store, "succeeded", 40 - i * 0.01) for i in range(7)]
    first = store.prune(KEEP, limit=3)
    assert (first.tasks, first.more) == (3, True)
    assert ids() == set(made[3:])  # the oldest first
    second = store.prune(KEEP, limit=3, after=first.last)
    third = store.prune(KEEP, limit=3, after=second.last)
    assert (second.tasks, second.more, third.tasks, third.more) == (3, True, 1, False)
    assert ids() == set()
    assert store.prune(KEEP, limit=3) == Pruned(0, 0, False, None)


def test_tasks_that_must_stay_never_block_the_pass(store):
    # Given old tasks that stay (an unfinished child waits on each) ahead of ones that go
    parents = [old(store, "succeeded", 50 - i) for i in range(4)]
    for parent in parents:
        store.submit(
            {"name": "child", "args": {}, "max_attempts": 3, "after": [parent], "run_at": NOW + DAY}, NOW
        )
    later = [old(store, "succeeded", 40), old(store, "succeeded", 39)]
    # When batches of 2 are pruned until the end
    tasks, _, calls = prune_all(store, KEEP, limit=2)
    # Then the pass got past them and took the rest
    assert tasks == 2 and calls == 4
    assert set(parents) <= ids() and not set(later) & ids()


def test_a_task_an_unfinished_task_waits_on_stays_until_that_one_finishes(store):
    parent = old(store, "succeeded", 40)
    other = old(store, "succeeded", 1)  # the child also waits on this one
    child, _ = store.submit({"name": "child", "args": {}, "max_attempts": 3, "after": [parent, other]}, NOW)
    assert Task.get_by_id(child).status == "queued"
    assert prune_all(store, KEEP)[0] == 0 and parent in ids()
    # When the child has finished, the parent goes, and with it their dependency rows
    Task.update(status="succeeded", finished_at=NOW - DAY).where(Task.id == child).execute()
    assert prune_all(store, KEEP)[0] == 1
    assert ids() == {other, child}
    assert [(d.task_id, d.parent_id) for d in Dependency.select()] == [(child, other)]
    # and a pruned child takes its own dependency rows along
    Task.update(finished_at=NOW - 8 * DAY).where(Task.id == child).execute()
    assert prune_all(store, KEEP)[0] == 1
    assert ids() == {other} and Dependency.select().count() == 0


def test_a_key_kept_for_good_keeps_its_task(store):
    always = old(store, "succeeded", 40, key="welcome-7", unique="always")
    active = old(store, "succeeded", 40, key="avatar-7")
    assert prune_all(store, KEEP)[0] == 1
    assert ids() == {always} and active not in ids()


def test_a_dry_run_counts_every_batch_and_deletes_nothing(store):
    made = [old(store, "dead", 40, attempts=2) for _ in range(5)] + [old(store, "succeeded", 1)]
    assert prune_all(store, KEEP, limit=2, dry_run=True) == (5, 10, 3)
    assert ids() == set(made) and Attempt.select().count() == 10
    assert prune_all(store, KEEP, limit=2) == (5, 10, 3)
