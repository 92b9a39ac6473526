"""The worker's journal: a worker killed and started again sends the results it had, so a
handler that finished is not run again because its result died with it."""

from __future__ import annotations

import os
import socket
import sqlite3

import pytest

from martinet import cli
from martinet.errors import JournalError
from martinet.journal import ACK_DELAY, Journal
from martinet.worker import FAULT_EXIT, FAULT_EXIT_BEFORE_SEND
from tests.harness import wait_for


def runs(marker) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def journal_rows(path, table: str) -> int:
    db = sqlite3.connect(path)  # WAL: read beside the worker that writes it
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


# ---- end to end: real daemon and worker processes ------------------------------------------


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
    # Given a worker that died before its result left, and a daemon that noticed (0.6 s)
    cluster.start_daemon(env={"MARTINET_HEARTBEAT_INTERVAL": "0.2"})
    flags = ["--journal", str(tmp_path / "w1.journal")]
    worker = cluster.start_worker(worker_id="w1", extra=flags, env={"MARTINET_FAULT": FAULT_EXIT_BEFORE_SEND})
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute({"name": "sleepy", "retry_base": 600}, {"seconds": 0, "marker": str(marker)})
    assert worker.popen.wait(15) == FAULT_EXIT
    wait_for(lambda: m.get(tid)["status"] == "failed", timeout=10, what="the attempt to be lost")
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
    journals = sorted(p.name for p in (tmp_path / "state").glob("*.journal"))
    assert journals == [f"worker-{socket.gethostname()}-1.journal"]


# ---- refusals: in process, before the worker connects ------------------------------------------


def test_a_journal_in_use_is_refused_naming_its_holder(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MARTINET_CONFIG", raising=False)
    path = tmp_path / "w.journal"
    holder = Journal.open(path)
    try:
        assert cli.worker_main(["tests.tasks", "--journal", str(path)]) == 1
    finally:
        holder.close()
    err = capsys.readouterr().err
    assert err == f"martinet-worker: error: journal {path} is in use by another worker (pid {os.getpid()})\n"


def test_a_corrupt_journal_is_refused_with_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MARTINET_CONFIG", raising=False)
    path = tmp_path / "w.journal"
    path.write_bytes(b"this is not a database" * 100)
    assert cli.worker_main(["tests.tasks", "--journal", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"martinet-worker: error: journal {path} cannot be read (file is not a database)")
    assert "move it aside" in err and err.count("\n") == 1
    with pytest.raises(JournalError, match="cannot be read"):  # not "in use": the refusal let go of its lock
        Journal.open(path)


# ---- the journal itself ---------------------------------------------------------------------


def test_outcomes_are_committed_at_once_and_acks_ride_along_later(tmp_path):
    path = tmp_path / "j"
    j = Journal.open(path)
    assert j.claim_worker_id(None, "fresh-1") == "fresh-1"
    j.ended(1, 1, b'{"id": 1}')
    j.ended(2, 1, b'{"id": 2}')
    j.commit(0.0)  # one transaction for the pass
    assert journal_rows(path, "outcome") == 2
    j.acked(1, 1, 10.0)
    j.commit(10.5)  # an ack alone waits...
    assert journal_rows(path, "outcome") == 2
    j.ended(3, 2, b'{"id": 3}')
    j.commit(10.6)  # ...for the next outcome to ride along with
    assert journal_rows(path, "outcome") == 2
    j.acked(2, 1, 11.0)
    j.commit(11.0 + ACK_DELAY)  # or for ACK_DELAY
    assert journal_rows(path, "outcome") == 1
    j.acked(3, 2, 20.0)
    j.close()  # closing writes what is buffered
    j = Journal.open(path)
    assert j.claim_worker_id(None, "fresh-2") == "fresh-1"  # a restart keeps its worker id
    assert j.recover() == [] and j.is_empty()
    j.ended(4, 1, b'{"id": 4}')
    j.commit(0.0)
    j.close()
    j = Journal.open(path)
    assert j.recover() == [(4, 1, b'{"id": 4}')]
    with pytest.raises(
        JournalError, match="holds results of worker 'fresh-1'; start it with --worker-id fresh-1"
    ):
        j.claim_worker_id("other", "fresh-3")
    j.acked(4, 1, 0.0)
    j.commit(0.0, force=True)
    assert j.claim_worker_id("other", "fresh-3") == "other"  # empty: free to take another id
    j.close()


def test_default_journals_live_in_the_state_directory_one_per_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("MARTINET_STATE_DIR", str(tmp_path / "state"))
    host = socket.gethostname()
    named = Journal.open_default("images/1")
    first, second = Journal.open_default(None), Journal.open_default(None)
    try:
        assert named.path == tmp_path / "state" / "worker-images_1.journal"
        assert (first.path.name, second.path.name) == (f"worker-{host}-1.journal", f"worker-{host}-2.journal")
        with pytest.raises(
            JournalError, match=r"worker-images_1.journal is in use by another worker \(pid \d+\)"
        ):
            Journal.open_default("images/1")
    finally:
        for j in (named, first, second):
            j.close()
    monkeypatch.delenv("MARTINET_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    j = Journal.open_default(None)
    assert j.path == tmp_path / "xdg" / "martinet" / f"worker-{host}-1.journal"
    j.close()
