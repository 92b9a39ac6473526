"""Recurring tasks end to end: schedules across a daemon's kill -9. (Schedules as the daemon
runs them, delayed tasks through the API and bad times, in process: tests/unit/test_schedules.py;
two daemons, tests/unit/test_two_daemons.py; a worker holding a task sent ahead of its due
time, tests/unit/test_worker_threads.py.)"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

import martinet
from tests.harness import wait_for


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def runs_of(m: martinet.Martinet, sid: str) -> list[float]:
    return sorted(ts(t["due_at"]) for t in m.list(name="clock", limit=10_000) if t["schedule"] == sid)


@pytest.mark.parametrize("policy", ["once", "all", "skip"])
def test_schedule_resumes_after_kill9_under_its_misfire_policy(cluster, policy):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    sid = m.every("1 second", "clock", {}, misfire=policy, misfire_grace=0.6 if policy == "skip" else None)
    wait_for(lambda: len(runs_of(m, sid)) >= 1, timeout=10, what="a first run")
    cluster.daemon.kill9()
    killed = time.time()
    time.sleep(2.6)  # the outage itself: due times pass while nobody is there
    restarted = time.time()
    cluster.start_daemon()
    m = cluster.client()
    wait_for(
        lambda: [d for d in runs_of(m, sid) if d > restarted], timeout=10, what="an on-time run after restart"
    )
    dues = runs_of(m, sid)
    missed = [d for d in dues if killed < d < restarted - 0.6]
    assert len(dues) == len(set(dues))  # never two runs for one due time
    assert {round(b - a, 6) % 1 for a, b in zip(dues, dues[1:], strict=False)} <= {0.0}  # one grid, no drift
    if policy == "all":
        assert {round(b - a, 6) for a, b in zip(dues, dues[1:], strict=False)} == {1.0}  # every due time ran
    elif policy == "once":
        # The missed due times collapsed into one run: the latest one reached when the
        # daemon was back (within the outage, or just after it if the start was slow).
        assert len([d for d in dues if killed < d < restarted]) <= 1
        assert max(b - a for a, b in zip(dues, dues[1:], strict=False)) > 1.5  # not every missed one ran
    else:
        assert missed == []
