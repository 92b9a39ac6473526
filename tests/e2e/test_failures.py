"""Failures in real workers: time limits that stop handlers, poison, a stopping or restarted
worker. (Dead letters, retry backoff and stalls, as the daemon decides them, are tested in
process: tests/unit/test_failures.py.)"""

from __future__ import annotations

import signal
import time

import pytest

import martinet
from tests.harness import wait_for

FAST = {"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_LEASE": "3"}


def test_time_limit_interrupts_a_busy_handler(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    for name in ("spin", "swallow"):  # even a handler that catches Exception is stopped
        tid = m.execute({"name": name, "max_attempts": 1, "timeout": 0.3}, {"seconds": 30})
        with pytest.raises(
            martinet.TaskFailed, match="TaskTimeout: the handler ran past its time limit of 0.3s"
        ):
            m.wait(tid, timeout=10)
        assert m.show(tid)["attempts"][0]["error"]["type"] == "TaskTimeout"
    # On time: the worker's loop waits no longer than the next time limit (5-20 ms late
    # measured; up to 0.5 s before). The median of three: one run starved of CPU is no failure.
    ran = [m.wait(m.execute({"name": "overrun", "timeout": 0.2}), timeout=10) for _ in range(3)]
    assert sorted(ran)[1] - 0.2 < 0.1, ran


def test_a_handler_stuck_in_c_code_is_abandoned_and_its_slot_refilled(cluster):
    cluster.start_daemon()
    cluster.start_worker(concurrency=1, extra=[])
    m = cluster.client()
    stuck = m.execute({"name": "stuck", "max_attempts": 1, "timeout": 0.2}, {"seconds": 20})
    with pytest.raises(martinet.TaskFailed, match="TaskTimeout"):
        m.wait(stuck, timeout=15)
    # The one slot is free again: the next task runs although the stuck thread still sleeps.
    assert m.wait(m.execute("add", {"a": 2, "b": 2}), timeout=10) == 4


def test_a_task_that_keeps_killing_its_worker_is_stalled(cluster):
    cluster.start_daemon(env={**FAST, "MARTINET_POISON_AFTER": "2"})
    m = cluster.client()
    tid = m.execute({"name": "suicide", "max_attempts": 10, "retry_base": 0.01})
    for _ in range(2):
        worker = cluster.start_worker(wait=False)
        worker.popen.wait(15)  # the task kills it
    wait_for(lambda: m.get(tid)["status"] == "stalled", timeout=10, what="the task to be stalled")
    info = m.show(tid)
    assert "its attempts were lost 2 times" in info["reason"]
    assert [a["outcome"] for a in info["attempts"]] == ["lost", "lost"]
    cluster.start_worker()  # a healthy fleet is not fed the poison again
    with pytest.raises(martinet.WaitTimeout):
        m.wait(tid, timeout=0.5)


def test_worker_hands_back_what_it_cannot_finish_within_its_grace(cluster, tmp_path):
    cluster.start_daemon()
    worker = cluster.start_worker(extra=["--grace", "0.3"])
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute({"name": "sleepy", "max_attempts": 1}, {"seconds": 2, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the task to start")
    assert worker.stop(signal.SIGTERM, timeout=10) == 0
    info = m.show(tid)
    assert info["status"] == "queued"  # handed back, and the attempt was not spent
    assert [a["outcome"] for a in info["attempts"]] == ["interrupted"]
    cluster.start_worker()
    assert m.wait(tid, timeout=10) == "slept"  # though max_attempts was 1


def test_worker_restarts_do_not_lose_unacknowledged_results(cluster):
    """A result sent while the daemon is down is resent and committed once it is back."""
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    tid = m.execute("sleepy", {"seconds": 1.0})
    wait_for(lambda: m.get(tid)["status"] == "running", timeout=10, what="the task to run")
    cluster.daemon.kill9()
    time.sleep(1.5)  # the handler finishes while no daemon is there to hear it
    cluster.start_daemon()
    assert cluster.client().wait(tid, timeout=15) == "slept"
    assert cluster.client().get(tid)["attempt"] == 1


def test_a_prefetched_task_waits_for_a_thread_and_its_time_limit_counts_from_its_start(cluster, tmp_path):
    cluster.start_daemon()
    cluster.start_worker(concurrency=1, extra=["--prefetch", "1"])
    m = cluster.client()
    marker = tmp_path / "runs"
    first = m.execute("sleepy", {"seconds": 0.6, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the first task to start")
    second = m.execute({"name": "sleepy", "timeout": 0.5, "max_attempts": 1}, {"seconds": 0.1})
    wait_for(lambda: m.get(second)["status"] == "leased", timeout=10, what="the second task to be held")
    # While it waits in the prefetch it is leased, not running: no handler is on it, no start time
    assert (m.get(first)["status"], m.get(second)["started_at"]) == ("running", None)
    assert m.wait(first, timeout=10) == "slept"
    assert m.wait(second, timeout=10) == "slept"  # 0.6 s in line, 0.1 s running: within its 0.5 s
    # Its attempt started when a thread took it, after the first one ended: the wait is not in it
    (attempt,) = m.show(second)["attempts"]
    assert attempt["started_at"] >= m.show(first)["attempts"][0]["ended_at"]
    assert attempt["duration"] < 0.5


def test_a_stopping_worker_hands_back_at_once_what_no_thread_started(cluster, tmp_path):
    cluster.start_daemon()
    worker = cluster.start_worker(concurrency=1, extra=["--prefetch", "1"])
    m = cluster.client()
    marker = tmp_path / "runs"
    running = m.execute("sleepy", {"seconds": 1.0, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the first task to start")
    held = m.execute({"name": "sleepy", "max_attempts": 1}, {"seconds": 0.1, "marker": str(marker)})
    wait_for(lambda: m.get(held)["status"] == "leased", timeout=10, what="the second task to be held")
    worker.popen.send_signal(signal.SIGTERM)
    wait_for(lambda: m.get(held)["status"] == "queued", timeout=5, what="the held task to come back")
    assert m.get(running)["status"] == "running"  # still finishing within the grace period
    assert worker.popen.wait(timeout=10) == 0
    assert m.get(running)["status"] == "succeeded"
    assert marker.read_text().splitlines() == [f"{running}:1"]  # the held one never started here
    assert m.show(held)["attempt"] == 0 and m.show(held)["attempts"] == []  # handed back: no attempt spent
    cluster.start_worker()
    assert m.wait(held, timeout=10) == "slept"  # though max_attempts was 1
