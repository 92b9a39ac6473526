"""Who is alive, as the daemon decides it: silence counts only while the daemon listens.
In process, with the clock the test sets (tests/core.py)."""

from __future__ import annotations

from tests.core import Core


def test_a_silent_worker_is_lost_after_liveness_intervals(sqlite_url):
    core = Core(sqlite_url, heartbeat_interval=0.2)
    try:
        core.hello("w1", ["add"])
        core.now += 0.5
        core.tick()
        assert core.daemon.peers.get("w1") is not None
        core.now += 0.2
        core.tick()
        assert core.daemon.peers.get("w1") is None
    finally:
        core.close()


def test_a_daemon_that_did_not_listen_does_not_count_that_silence(sqlite_url):
    core = Core(sqlite_url, heartbeat_interval=0.2)
    try:
        core.hello("w1", ["add"])
        task_id = core.submit("add")
        assert core.claimed_names() == ["add"]
        core.now += 5.0  # the daemon was stopped: its sockets filled up, unread
        core.daemon._not_listening(5.0)
        core.tick()
        assert core.daemon.peers.get("w1") is not None
        assert core.store.get_task(task_id)["status"] == "running"
        core.now += 0.7  # then silence while it listens does count
        core.tick()
        assert core.daemon.peers.get("w1") is None
    finally:
        core.close()
