"""Two `martinet serve` processes on one PostgreSQL (on 127.0.0.1 and 127.0.0.2, the same
ports), two workers and a client given both: one daemon is killed -9 while tasks are
submitted and run. Every task the client was told is accepted succeeds, once."""

from __future__ import annotations

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
