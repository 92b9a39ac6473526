"""Claim rounds fill a deep prefetch in a few claims a worker, and still share a short
queue (server/claims.py): a worker of one thread holding dozens of tiny tasks ready must
not cost the daemon one claim, two statements, a task."""

from __future__ import annotations


def count_claims(core) -> list[int]:
    """Wrap the store's claim: the limits it is asked for, one entry per call."""
    asked: list[int] = []
    claim = core.store.claim

    def counting(worker, names, limit, *args, **kwargs):
        asked.append(limit)
        return claim(worker, names, limit, *args, **kwargs)

    core.store.claim = counting
    return asked


def thin_workers(make_core, url: str, workers: str, queued: int):
    """A daemon with workers of one thread that can hold 32 more tasks each (named by
    the letters of `workers`), and `queued` tasks waiting for them."""
    core = make_core(url)
    for worker in workers:
        core.hello(worker, ["tiny"], capacity=33, threads=1)
    for _ in range(queued):
        core.submit("tiny")
    return core


def test_a_one_thread_worker_gets_its_whole_prefetch_in_a_few_claims(sqlite_url, make_core):
    # Given a worker of one thread that holds 32 more tasks ready, and 100 tasks queued
    core = thin_workers(make_core, sqlite_url, "a", queued=100)
    asked = count_claims(core)
    # When the daemon claims for it
    claimed = core.claim()
    # Then one turn fills its capacity, in rounds that double: 2 (its idle thread and the
    # first round's 1, at once: no other worker has credit), 2, 4, 8, 16, then the 1 left
    # of its credit; not 33 claims of one task
    assert len(claimed["a"]) == 33
    assert asked == [2, 2, 4, 8, 16, 1]


def test_a_short_queue_still_spreads_over_workers_of_one_thread(sqlite_url, make_core):
    # Given two workers of one thread, each able to hold 32 more tasks
    core = thin_workers(make_core, sqlite_url, "ab", queued=0)
    # When 10 tasks come, then 24 more once those ended
    few = [core.submit("tiny") for _ in range(10)]
    first = {w: len(rows) for w, rows in core.claim().items()}
    for task_id in few:
        core.succeed(task_id)
    for _ in range(24):
        core.submit("tiny")
    second = {w: len(rows) for w, rows in core.claim().items()}
    # Then each time both workers got some, neither more than twice the other's share:
    # only the round in which the queue runs dry is uneven, and it gives no worker
    # more than each had before it
    for shares in (first, second):
        assert sum(shares.values()) in (10, 24)
        assert set(shares) == {"a", "b"}
        assert max(shares.values()) <= 2 * min(shares.values()), shares


def test_a_queue_that_fills_every_round_is_shared_evenly(sqlite_url, make_core):
    # Given two workers of one thread, each able to hold 32 more tasks, and more queued
    # than both can hold
    core = thin_workers(make_core, sqlite_url, "ab", queued=80)
    # When the daemon claims, then each gets as much as it can hold
    assert {w: len(rows) for w, rows in core.claim().items()} == {"a": 33, "b": 33}


def test_in_a_long_drain_a_worker_is_refilled_in_one_claim(sqlite_url, make_core):
    # Given a worker of one thread that was just filled from a long queue
    core = thin_workers(make_core, sqlite_url, "a", queued=100)
    first = core.claim()["a"]
    asked = count_claims(core)
    # When 16 of its tasks end and the daemon claims again
    for row in first[:16]:
        core.succeed(row["id"])
    refill = core.claim()["a"]
    # Then its 16 free slots are filled by one claim, not rounds of 1, 2, 4, 8 again
    assert len(refill) == 16 and asked == [16]


def test_a_worker_alone_with_credit_gets_its_idle_thread_and_its_prefetch_in_one_claim(sqlite_url, make_core):
    # Given two workers of one thread, filled from a long queue
    core = thin_workers(make_core, sqlite_url, "ab", queued=200)
    held = {w: [row["id"] for row in rows] for w, rows in core.claim().items()}
    asked = count_claims(core)
    # When every task of one of them ended (its thread idle, its prefetch empty), the
    # other still holding its own
    for task_id in held["a"]:
        core.succeed(task_id)
    # Then one claim fills it, where the idle thread's claim and the prefetch's were two
    refill = core.claim()
    assert {w: len(rows) for w, rows in refill.items()} == {"a": 33}
    assert asked == [33]
    # And when both have idle threads, each thread is filled before any prefetch
    for task_id in [*held["b"], *[row["id"] for row in refill["a"]]]:
        core.succeed(task_id)
    asked.clear()
    core.claim()
    assert asked[:2] == [1, 1], asked


def test_once_a_queue_ran_short_the_rounds_start_small_again(sqlite_url, make_core):
    # Given two workers of one thread, filled from a long queue, which ran dry later
    core = thin_workers(make_core, sqlite_url, "ab", queued=70)
    held = [row["id"] for rows in core.claim().values() for row in rows]
    for task_id in held:
        core.succeed(task_id)
    last = [row["id"] for rows in core.claim().values() for row in rows]
    assert len(last) == 4  # the last of the queue
    for task_id in last:
        core.succeed(task_id)
    # When a short queue comes to the idle workers
    for _ in range(10):
        core.submit("tiny")
    shares = {w: len(rows) for w, rows in core.claim().items()}
    # Then it is spread over both, as into a fleet that never drained a long queue
    assert sum(shares.values()) == 10 and set(shares) == {"a", "b"}
    assert max(shares.values()) <= 2 * min(shares.values()), shares
