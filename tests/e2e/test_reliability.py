"""Restarts, kills and refusals: accepted tasks always run, and run once where possible.
(Which worker gets what, decided by the daemon alone, is tests/unit/test_workers.py; a
worker that refuses a task, in a thread, tests/unit/test_worker_threads.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import martinet
from martinet import client as client_module
from martinet import exchange
from tests.harness import wait_for

FAST = {"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_LEASE": "3"}  # a dead worker is seen in 0.6 s


def test_daemon_kill9_keeps_every_accepted_task(any_cluster):
    # Given accepted tasks, a delayed one and a schedule, with no worker yet
    any_cluster.start_daemon()
    m = any_cluster.client()
    now_ids = [m.execute("add", {"a": i, "b": i}) for i in range(5)]
    later = m.schedule("in 1 second", "add", {"a": 10, "b": 10})
    sid = m.every("1 second", "echo", {"from": "schedule"})
    # When the daemon is killed without warning and started again
    any_cluster.daemon.kill9()
    any_cluster.start_daemon()
    any_cluster.start_worker()
    m2 = any_cluster.client()
    # Then every task runs, and the schedule goes on
    assert [m2.wait(t, timeout=15) for t in now_ids] == [0, 2, 4, 6, 8]
    assert m2.wait(later, timeout=15) == 20
    wait_for(lambda: m2.list(name="echo", status="succeeded"), timeout=15, what="a scheduled run")
    assert m2.get(sid)["status"] == "active"


def test_running_task_is_readopted_after_daemon_kill9(cluster, tmp_path):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute("sleepy", {"seconds": 2, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the task to start")
    cluster.daemon.kill9()
    cluster.start_daemon()
    assert cluster.client().wait(tid, timeout=20) == "slept"
    assert marker.read_text().splitlines() == [f"{tid}:1"]  # it ran once, not twice
    info = cluster.client().get(tid)
    assert info["attempt"] == 1 and info["status"] == "succeeded"


def test_a_paused_daemon_blames_no_healthy_worker(cluster, tmp_path):
    """Given a healthy worker running a task, when the daemon itself stops (SIGSTOP: a
    GC pause, a slow disk) three times for longer than its workers' liveness, then
    nobody is declared lost: the task succeeds on its first and only attempt."""
    daemon = cluster.start_daemon(env={**FAST, "MARTINET_POISON_AFTER": "3"})
    cluster.start_worker(concurrency=1)
    m = cluster.client(timeout=20)
    marker = tmp_path / "runs"
    tid = m.execute("sleepy", {"seconds": 3, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the task to start")
    for _ in range(3):
        os.kill(daemon.pid, signal.SIGSTOP)
        time.sleep(1.0)  # the pause itself: five liveness windows of 0.2 s heartbeats
        os.kill(daemon.pid, signal.SIGCONT)
        m.ping()
    assert m.wait(tid, timeout=20) == "slept"
    assert [(a["attempt"], a["outcome"]) for a in m.show(tid)["attempts"]] == [(1, "succeeded")]
    assert marker.read_text().splitlines() == [f"{tid}:1"]
    assert "did not read its sockets" in daemon.log() and " gone (" not in daemon.log()


def test_killed_worker_task_goes_to_another_worker(cluster, tmp_path):
    cluster.start_daemon(env=FAST)
    victim = cluster.start_worker(worker_id="victim")
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute("sleepy", {"seconds": 0.5, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the task to start")
    victim.kill9()
    cluster.start_worker(worker_id="rescuer", wait=False)
    assert m.wait(tid, timeout=20) == "slept"
    attempts = m.show(tid)["attempts"]
    assert [(a["worker"], a["outcome"]) for a in attempts] == [("victim", "lost"), ("rescuer", "succeeded")]
    assert attempts[0]["error"]["type"] == "WorkerLost"


def test_a_worker_back_under_its_id_without_a_journal_gives_up_what_it_held(cluster, tmp_path):
    # Given a worker with a fixed id and no journal, killed while running a task
    cluster.start_daemon()
    flags = ["--no-journal"]
    worker = cluster.start_worker(worker_id="w1", extra=flags)
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute({"name": "sleepy", "retry_base": 0.01}, {"seconds": 0.5, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the task to start")
    worker.kill9()
    # When it is back, under the same id, before the daemon missed it (liveness 3 s)
    cluster.start_worker(worker_id="w1", extra=flags, wait=False)
    # Then it cannot prove it is the worker that held the id (no journal keeps the session
    # of its welcome, no key): it is taken as w1 once the old connection is silent, the
    # task it held is lost then, and runs again
    assert m.wait(tid, timeout=15) == "slept"
    attempts = m.show(tid)["attempts"]
    assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
    assert "silent for" in attempts[0]["error"]["message"]
    assert not (tmp_path / "state").exists()  # --no-journal: no default journal either


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_daemon_stops_cleanly_on_signal(cluster, sig):
    cluster.start_daemon()
    m = cluster.client()
    tid = m.execute("echo", {})
    assert cluster.daemon.stop(sig, timeout=10) == 0
    assert "martinet stopped" in cluster.daemon.log()
    cluster.start_daemon()
    assert cluster.client().get(tid)["status"] == "queued"


def test_worker_finishes_its_task_on_sigterm(cluster, tmp_path):
    cluster.start_daemon()
    worker = cluster.start_worker()
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute("sleepy", {"seconds": 0.5, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the task to start")
    assert worker.stop(signal.SIGTERM, timeout=10) == 0
    assert m.get(tid)["status"] == "succeeded"
    wait_for(lambda: cluster.workers_connected() == 0, timeout=5, what="the worker to leave")


def test_client_retry_after_timeout_creates_nothing_twice(cluster):
    cluster.start_daemon()
    m = cluster.client()
    first = m.execute("echo", {}, request_id="same-request")
    cluster.daemon.kill9()
    cluster.start_daemon()
    again = cluster.client().execute("echo", {}, request_id="same-request")
    assert first == again and len(cluster.client().list()) == 1
    with pytest.raises(martinet.BadInput):
        cluster.client().get("s99")


def test_a_call_outlasts_a_paused_or_restarted_daemon_and_one_that_gives_up_is_found_again(
    any_cluster, monkeypatch
):
    """A call with a long timeout rides out a paused daemon and a killed and restarted
    one, creating its task once; a call whose timeout runs out while the daemon is paused
    says its task may be in and names its request id, and calling again with that id,
    after a restart even, returns that task instead of making a second."""
    monkeypatch.setattr(exchange, "FIRST_TRY", 0.2)
    resends = threading.Semaphore(0)
    discard = client_module.Client._discard_socket

    def counted(self) -> None:
        discard(self)
        resends.release()

    monkeypatch.setattr(client_module.Client, "_discard_socket", counted)
    any_cluster.start_daemon()
    patient, hasty = any_cluster.client(timeout=30), any_cluster.client(timeout=1)
    hasty.ping()  # connected: its next request reaches even a paused daemon's socket
    done: dict[str, int] = {}

    def call_waiting(name: str) -> threading.Thread:
        while resends.acquire(blocking=False):
            pass  # count this call's resends only
        thread = threading.Thread(target=lambda: done.update({name: patient.execute("echo", {"n": name})}))
        thread.start()
        assert resends.acquire(timeout=10), "the call was not sent again"
        return thread

    daemon = any_cluster.daemon.popen
    try:
        # Given a daemon paused while a call waits: the call succeeds when it resumes
        daemon.send_signal(signal.SIGSTOP)
        paused = call_waiting("paused")
        daemon.send_signal(signal.SIGCONT)
        paused.join(30)
        # Given a daemon paused for longer than a call's timeout: the call raises ...
        daemon.send_signal(signal.SIGSTOP)
        with pytest.raises(martinet.DaemonUnavailable, match="may have been accepted") as caught:
            hasty.execute("echo", {"n": "gave up"})
    finally:
        daemon.send_signal(signal.SIGCONT)
    request_id = caught.value.request_id
    assert f"request_id={request_id!r}" in str(caught.value)
    # ... and the daemon commits it all the same when it resumes
    wait_for(lambda: patient.count() == {"queued": 2}, timeout=10, what="the request read after the pause")
    gave_up = next(t["id"] for t in patient.list() if t["args"] == {"n": "gave up"})
    # Given a daemon killed and started again while a call waits: the call succeeds
    any_cluster.daemon.kill9()
    restarted = call_waiting("restarted")
    any_cluster.start_daemon()
    restarted.join(30)
    # Then each call made one task, and calling again with the request id makes none
    again = hasty.execute("echo", {"n": "gave up"}, request_id=request_id)
    assert again == gave_up and again.created is False
    assert set(done) == {"paused", "restarted"} and patient.count() == {"queued": 3}
