"""Two `martinet serve` processes on one PostgreSQL (on 127.0.0.1 and 127.0.0.2, the same
ports), workers and a client given both: one daemon is killed -9 while tasks are
submitted and run, and every task the client was told is accepted succeeds, once; one
is frozen and thawed, and acts on nothing the other took over meanwhile."""

from __future__ import annotations

import signal

from tests.harness import START_TIMEOUT, Cluster, wait_for

TASKS = 120


def test_a_daemon_killed_under_load_loses_nothing_another_serves(pg_url, tmp_path):
    cluster = Cluster(tmp_path, pg_url)
    try:
        first = cluster.start_daemon(extra=["--bind", "127.0.0.1"])
        second = cluster.start_daemon(extra=["--bind", "127.0.0.2"], wait=False)
        both = ["--connect", "127.0.0.1,127.0.0.2"]
        for i in range(2):
            cluster.start_worker(worker_id=f"w{i}", extra=both)
        m = cluster.client(30, f"tcp://127.0.0.1:{cluster.client_port},tcp://127.0.0.2:{cluster.client_port}")
        wait_for(lambda: len(m.daemons()) == 2, START_TIMEOUT, "the second daemon to start")
        ids = []
        starts = tmp_path / "starts.txt"  # a line a handler start (tests.tasks.sleepy)
        for i in range(TASKS):
            if i == TASKS // 3:
                first.kill9()  # its workers move to the second daemon; so does the client
            ids.append(m.execute("sleepy", {"seconds": 0.02, "marker": str(starts)}, request_id=f"load-{i}"))
        assert len(set(ids)) == TASKS
        logs = [p.log()[-2000:] for p in [*cluster.daemons, *cluster.workers]]
        assert all(m.wait(tid, timeout=60) == "slept" for tid in ids), logs
        # Run twice: only a task whose worker was cut off mid-handler could be (none was). A
        # task the killed daemon had leased but not sent yet ends its first attempt lost,
        # unstarted, and runs in its second.
        started = [line.split(":")[0] for line in starts.read_text().split()]
        assert sorted(map(int, started)) == sorted(ids)
        for tid in ids:
            attempts = m.show(tid)["attempts"]
            assert [a["outcome"] for a in attempts if a["started_at"]] == ["succeeded"], attempts
        assert sorted(d["state"] for d in m.daemons()) == ["serving", "silent"]
        assert second.alive()
    finally:
        cluster.shutdown()


FAST = {"MARTINET_HEARTBEAT_INTERVAL": "0.2"}  # silent after 0.6 s, its leases ended 0.6 s later


def test_a_daemon_frozen_and_thawed_does_not_act_on_the_leases_another_took_over(pg_url, tmp_path):
    """The first daemon is frozen (SIGSTOP) while its only worker runs a task: the second
    ends that attempt as lost and runs the task again on its own worker. Thawed, the first
    gets its worker's hello (which still lists the task) and then its result: both are of
    an attempt that is over, and change nothing. The task ends once, by its second attempt."""
    cluster = Cluster(tmp_path, pg_url)
    marker = tmp_path / "starts.txt"  # "id:attempt" a handler start (tests.tasks.sleepy)
    try:
        first = cluster.start_daemon(env=FAST, extra=["--bind", "127.0.0.1"])
        second = cluster.start_daemon(env=FAST, extra=["--bind", "127.0.0.2"], wait=False)
        cluster.start_worker(worker_id="on-first", concurrency=1, env=FAST)
        m = cluster.client(30, f"tcp://127.0.0.1:{cluster.client_port},tcp://127.0.0.2:{cluster.client_port}")
        wait_for(lambda: len(m.daemons()) == 2, START_TIMEOUT, "the second daemon to start")
        spec = {"name": "sleepy", "max_attempts": 3, "retry_base": 0.05}
        tid = m.execute(spec, {"seconds": 2.5, "marker": str(marker)})
        wait_for(
            lambda: marker.exists() and f"{tid}:1" in marker.read_text().split(), START_TIMEOUT, "attempt 1"
        )
        first.popen.send_signal(signal.SIGSTOP)
        try:  # (a worker of the second's only; start_worker would ask the frozen first)
            cluster.start_worker(worker_id="on-second", concurrency=1, env=FAST,
                                 extra=["--connect", "127.0.0.2"], wait=False)  # fmt: skip
            wait_for(lambda: f"{tid}:2" in marker.read_text().split(), 20, "attempt 2, through the second")
        finally:
            first.popen.send_signal(signal.SIGCONT)
        # Attempt 1 ends on its worker (before attempt 2), and the thawed first daemon hears it
        stale = f"ignored a late outcome for task {tid} attempt 1 from on-first"
        wait_for(lambda: stale in first.log(), 20, "the first daemon to refuse the stale outcome")
        assert m.wait(tid, timeout=30) == "slept"
        shown = m.show(tid)
        assert shown["status"] == "succeeded" and shown["attempt"] == 2
        assert [(a["attempt"], a["outcome"], a["worker"]) for a in shown["attempts"]] == [
            (1, "lost", "on-first"),
            (2, "succeeded", "on-second"),
        ], shown["attempts"]
        assert shown["daemon"] == next(
            d["id"] for d in m.daemons() if d["address"].startswith("tcp://127.0.0.2")
        )
        wait_for(
            lambda: sorted(d["state"] for d in m.daemons()) == ["serving", "serving"], 10, "both serving"
        )
        assert first.alive() and second.alive()
    finally:
        cluster.shutdown()
