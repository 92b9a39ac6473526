"""The worker's journal: a worker killed and started again sends the results it had, so a
handler that finished is not run again because its result died with it."""

from __future__ import annotations

import socket
import tempfile

import pytest

from martinet import demo
from martinet.errors import TaskFailed
from martinet.worker import FAULT_EXIT, FAULT_EXIT_BEFORE_SEND
from tests.harness import START_TIMEOUT, Cluster, wait_for
from tests.unit.test_journal import journal_rows


def runs(marker) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def test_a_result_journaled_before_the_worker_died_arrives_after_its_restart(any_cluster, tmp_path):
    # Given a worker that dies right after its handler returned, before the result left
    any_cluster.start_daemon()
    journal = tmp_path / "w1.journal"
    flags = ["--journal", str(journal)]
    worker = any_cluster.start_worker(
        worker_id="w1", extra=flags, env={"MARTINET_FAULT": FAULT_EXIT_BEFORE_SEND}
    )
    m = any_cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute("sleepy", {"seconds": 0, "marker": str(marker)})
    assert worker.popen.wait(15) == FAULT_EXIT
    assert runs(marker) == [f"{tid}:1"] and m.get(tid)["status"] != "succeeded"
    assert journal_rows(journal, "outcome") == 1
    # When it is started again on the same journal
    any_cluster.start_worker(worker_id="w1", extra=flags, wait=False)  # the daemon may not miss it yet
    # Then the result arrives, and the handler ran once
    assert m.wait(tid, timeout=15) == "slept"
    assert runs(marker) == [f"{tid}:1"]
    assert m.show(tid)["attempts"][-1]["outcome"] == "succeeded"
    wait_for(lambda: journal_rows(journal, "outcome") == 0, timeout=10, what="the ack to clear the journal")


def test_a_journaled_result_still_counts_after_the_daemon_declared_its_worker_lost(cluster, tmp_path):
    # Given a worker that died before its result left, and a daemon that noticed (0.6 s);
    # the loss stalls the task (no retry's jittered delay can hand it to another worker)
    cluster.start_daemon(env={"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_POISON_AFTER": "1"})
    flags = ["--journal", str(tmp_path / "w1.journal")]
    worker = cluster.start_worker(worker_id="w1", extra=flags, env={"MARTINET_FAULT": FAULT_EXIT_BEFORE_SEND})
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute("sleepy", {"seconds": 0, "marker": str(marker)})
    assert worker.popen.wait(15) == FAULT_EXIT
    wait_for(lambda: m.get(tid)["status"] == "stalled", timeout=10, what="the attempt to be lost")
    # When the worker comes back before the task ran anywhere else
    cluster.start_worker(worker_id="w1", extra=flags)
    # Then the daemon gives the attempt back to it, and its result counts
    assert m.wait(tid, timeout=15) == "slept"
    assert runs(marker) == [f"{tid}:1"]
    attempts = [(a["attempt"], a["outcome"]) for a in m.show(tid)["attempts"]]
    assert attempts == [(1, "succeeded")]  # the attempt went on: its loss did not happen


def test_tasks_held_when_the_worker_was_killed_are_lost_at_once_and_run_again(cluster, tmp_path):
    # Given a worker with one thread, running a long task and holding two more
    cluster.start_daemon()
    flags = ["--journal", str(tmp_path / "w1.journal"), "--prefetch", "2"]
    worker = cluster.start_worker(worker_id="w1", concurrency=1, extra=flags)
    m = cluster.client()
    long_marker, marker = tmp_path / "long", tmp_path / "short"
    fast_retry = {"name": "sleepy", "retry_base": 0.01}
    long_id = m.execute(fast_retry, {"seconds": 1.5, "marker": str(long_marker)})
    wait_for(lambda: runs(long_marker), timeout=10, what="the long task to start")
    short = [m.execute(fast_retry, {"seconds": 0, "marker": str(marker)}) for _ in range(2)]
    wait_for(lambda: all(m.get(t)["status"] == "leased" for t in short), timeout=10, what="them held")
    # When it is killed with kill -9 and started again on its journal, before the daemon missed it
    worker.kill9()
    cluster.start_worker(worker_id="w1", concurrency=1, extra=flags, wait=False)
    # Then its hello does not report them: they are lost at once, and every task runs again,
    # the held ones for the first time, the one cut short from the start
    assert [m.wait(t, timeout=15) for t in (long_id, *short)] == ["slept"] * 3
    assert sorted(runs(marker)) == sorted(f"{t}:2" for t in short)
    assert runs(long_marker) == [f"{long_id}:1", f"{long_id}:2"]
    for t in (long_id, *short):
        attempts = m.show(t)["attempts"]
        assert [a["outcome"] for a in attempts] == ["lost", "succeeded"]
        assert "its worker came back without it" in attempts[0]["error"]["message"]


def test_without_a_worker_id_a_restarted_worker_takes_up_the_journal_and_id_it_left(cluster, tmp_path):
    cluster.start_daemon()
    worker = cluster.start_worker(env={"MARTINET_FAULT": FAULT_EXIT_BEFORE_SEND})
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute("sleepy", {"seconds": 0, "marker": str(marker)})
    assert worker.popen.wait(15) == FAULT_EXIT
    cluster.start_worker(wait=False)  # same host, the first free default journal: the dead worker's
    assert m.wait(tid, timeout=15) == "slept"
    assert runs(marker) == [f"{tid}:1"]
    journals = sorted(
        p.name for p in (tmp_path / "state" / f"127.0.0.1-{cluster.worker_port}").glob("*.journal")
    )
    assert journals == [f"worker-{socket.gethostname()}-1.journal"]


def test_an_outcome_for_one_daemons_database_never_ends_the_same_task_id_of_another(tmp_path):
    """Two daemons on two databases; a worker's journal holds an outcome for the first's task
    1 when it is pointed at the second, whose own task 1 attempt 1 runs on that worker id."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Cluster(tmp_path / "a", f"sqlite:///{tmp_path / 'a.db'}")
    b = Cluster(tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}")
    try:
        a.start_daemon(wait=False)
        # B stalls a task at its first loss: a retry's delay is drawn below retry_base (full
        # jitter), so a failed one could be claimed again while the test looks at it.
        b.start_daemon(env={"MARTINET_POISON_AFTER": "1"})
        ma, mb = a.client(timeout=START_TIMEOUT), b.client()
        ma.ping()
        journal = tmp_path / "w1.journal"
        # Given B's task 1 running (attempt 1) on worker w1, which dies
        worker = b.start_worker(worker_id="w1", extra=["--no-journal"])
        marker = tmp_path / "b-runs"
        b1 = mb.execute("sleepy", {"seconds": 30, "marker": str(marker)})
        wait_for(lambda: runs(marker), what="B's task 1 to start")
        worker.kill9()
        # And A's task 1, whose outcome w1 journaled (a result that cannot be stored: it ends
        # the task dead) and died before sending
        worker = a.start_worker(
            worker_id="w1", extra=["--journal", str(journal)], env={"MARTINET_FAULT": FAULT_EXIT_BEFORE_SEND}
        )
        a1 = ma.execute({"name": "not_json", "retry_base": 600})
        assert worker.popen.wait(15) == FAULT_EXIT and (a1, b1) == (1, 1)
        # When w1 starts again on that journal, pointed at B
        worker = b.start_worker(worker_id="w1", extra=["--journal", str(journal)], wait=False)
        # Then B's task 1 is not ended by A's outcome: its attempt is lost (its worker came back
        # without it), and it stays stalled
        wait_for(lambda: mb.get(b1)["status"] == "stalled", what="B's task 1 to be lost")
        assert [(x["attempt"], x["outcome"]) for x in mb.show(b1)["attempts"]] == [(1, "lost")]
        # And the worker's log says why, where the outcome is and what to do; it is still there
        wait_for(lambda: "are for tasks of another database" in worker.log(), what="the log to say why")
        assert f"kept in the journal {journal}" in worker.log()
        assert mb.get(b1)["status"] == "stalled" and journal_rows(journal, "outcome") == 1
        # When w1 is pointed back at A: the outcome goes to A's task 1
        assert worker.stop() == 0
        a.start_worker(worker_id="w1", extra=["--journal", str(journal)], wait=False)
        with pytest.raises(TaskFailed, match="cannot be stored as JSON"):
            ma.wait(a1, timeout=15)
        wait_for(
            lambda: journal_rows(journal, "outcome") == 0, timeout=10, what="the ack to clear the journal"
        )
    finally:
        a.shutdown()
        b.shutdown()


def test_the_demo_keeps_its_journals_in_its_own_directory_and_removes_it(tmp_path, monkeypatch, capsys):
    for name in ("MARTINET_STATE_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the user's state folder: ~/.local/state/martinet
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    monkeypatch.setattr(
        demo, "_tour", lambda m, show: m.wait(m.execute("demo.greet", {"who": "you"}), timeout=20)
    )
    assert demo.run_demo(n_tasks=0) == 0, capsys.readouterr()
    assert not (tmp_path / "home").exists() and list((tmp_path / "tmp").iterdir()) == []
