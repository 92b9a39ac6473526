"""Leased until a handler starts it, then running: the daemon's side, in process (tests/core.py).

A worker says when a handler takes a task (STARTED on the status socket); the daemon
writes the start, fenced by attempt and worker, before the outcomes and progress that
came with it. Time limits count from that start; a leased task of a worker that reports
starts waits in its prefetch and is never blamed for it; for a worker that does not
report, the daemon's guess (Peer.clock) stays the rule.
"""

from __future__ import annotations

import pytest

from martinet.protocol import Cmd
from tests.core import Core

GRACE = 0.5


@pytest.fixture
def core(db_url):
    c = Core(db_url, time_limit_grace=GRACE)
    yield c
    c.close()


def started(worker_id: str, *items: tuple[int, int]) -> tuple[Cmd, dict]:
    return Cmd.STARTED, {"worker_id": worker_id, "started": [list(i) for i in items]}


def tick(core: Core) -> None:
    """A tick of the daemon's timers, its workers heard from (heartbeats)."""
    for peer in core.daemon.peers:
        core.daemon.peers.seen(peer.worker_id, core.now)
    core.tick()


def ended(worker_id: str, task_id: int, attempt: int = 1, started: list | None = None) -> tuple[Cmd, dict]:
    header = {"worker_id": worker_id, "ended": [{"id": task_id, "attempt": attempt, "ok": True}]}
    return Cmd.ENDED, {**header, "started": started} if started else header


def test_a_start_report_makes_a_leased_task_running_from_then(core):
    core.hello("w1", ["add"], capacity=2, threads=1, starts=True)
    first, second = core.submit("add"), core.submit("add")
    core.claim()
    assert [core.store.get_task(t)["status"] for t in (first, second)] == ["leased", "leased"]
    core.now += 1
    core.status(started("w1", (first, 1)), started("w2", (second, 1)), started("w1", (second, 2)))
    a, b = core.store.get_task(first), core.store.get_task(second)
    assert (a["status"], b["status"], b["started_at"]) == ("running", "leased", None)  # the others fenced out
    # A start and an outcome in one turn: the start is written first, the duration counts from it
    core.now += 2
    out = core.status(started("w1", (second, 1)), ended("w1", second), ended("w1", first))
    assert sorted(map(tuple, out.acks[b"status"])) == [(first, 1), (second, 1)]
    assert [a["duration"] for t in (first, second) for a in core.store.attempts(t)] == [2.0, 0.0]
    # A worker's ENDED carries the starts of its pass: the start is written before the ends
    third = core.submit("add")
    core.claim()
    core.now += 1
    core.status(ended("w1", third, started=[[third, 1]]))
    ((attempt,),) = [core.store.attempts(third)]
    assert (attempt["outcome"], attempt["duration"]) == ("succeeded", 0.0)


def test_time_limits_count_from_the_real_start_and_never_blame_the_prefetch(core):
    # Given a worker that reports starts, one thread, a task running and one in its prefetch
    core.hello("w1", ["add"], capacity=2, threads=1, starts=True)
    running, waiting = (core.submit("add", timeout=1.0) for _ in range(2))
    core.claim()
    core.now += 5  # the thread took the first one late (the task came before the thread was free)
    core.status(started("w1", (running, 1)))
    # Then the first one's limit counts from its start; the one in line is never judged
    core.now += 1.0 + GRACE
    tick(core)
    assert core.store.get_task(running)["status"] == "running"
    core.now += 0.1
    tick(core)
    assert core.store.get_task(running)["status"] == "failed"  # timed out by the daemon
    core.now += 60
    tick(core)
    assert core.store.get_task(waiting)["status"] == "leased"  # still waiting for a thread: no blame


def test_a_worker_that_does_not_report_starts_is_judged_by_the_daemons_guess(core):
    core.hello("old", ["add"], capacity=2, threads=1)  # no "starts": it never says
    first, second = (core.submit("add", timeout=1.0) for _ in range(2))
    core.claim()
    core.now += 1.0 + GRACE + 0.1
    tick(core)
    # The first had a thread as far as the daemon can tell: timed out; the second was in line
    assert [core.store.get_task(t)["status"] for t in (first, second)] == ["failed", "leased"]
