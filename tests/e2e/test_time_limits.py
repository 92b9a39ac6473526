"""A real worker's prefetch is not blamed for the wait: each task's time limit counts from
when a thread took it. (The daemon's own enforcement of time limits, and a hello that claims
more than its capacity, are tested in process: tests/unit/test_time_limits.py.)"""

from __future__ import annotations

FAST = {"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_TIME_LIMIT_GRACE": "0.5"}


def test_tasks_waiting_in_a_prefetch_are_not_blamed_for_the_wait(cluster):
    # Given one worker thread with two tasks in its prefetch, each task shorter than its
    # limit but the three together far longer than the limit and the grace
    cluster.start_daemon(env={**FAST, "MARTINET_TIME_LIMIT_GRACE": "0.3"})
    cluster.start_worker(concurrency=1, extra=["--prefetch", "2"])
    m = cluster.client()
    spec = {"name": "sleepy", "timeout": 1.2, "max_attempts": 1}
    ids = [m.execute(spec, {"seconds": 0.8}) for _ in range(3)]
    # Then each one's limit counts from when the thread took it: all three succeed
    assert [m.wait(t, timeout=15) for t in ids] == ["slept"] * 3
    assert [len(m.show(t)["attempts"]) for t in ids] == [1, 1, 1]
