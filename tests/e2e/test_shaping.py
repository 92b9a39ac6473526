"""Shaping work with real workers and clients: a key raced by several processes, dependencies
passing results, releases, a lost worker ending a parent. What the daemon decides alone
(priority, unique keys, schedules declared at every start, refused or cancelled
dependencies) is tested in process: tests/unit/test_shaping.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import martinet
from tests.harness import ROOT, wait_for


def test_a_key_submitted_by_several_processes_at_once_creates_one_task(any_cluster):
    cluster = any_cluster  # on every backend
    cluster.start_daemon()
    code = (
        "import sys, martinet; m = martinet.Martinet.connect(sys.argv[1], timeout=20); "
        "print(m.execute('echo', {}, key='race')); m.close()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, cluster.url], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        for _ in range(6)
    ]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1 and all(p.returncode == 0 for p in procs)
    assert len(cluster.client().list(name="echo")) == 1


def test_dependencies_wait_pass_results_and_cancel_down_the_chain(any_cluster):
    any_cluster.start_daemon()
    m = any_cluster.client()
    good = m.execute("add", {"a": 1, "b": 2})
    bad = m.execute({"name": "boom", "max_attempts": 1})
    child = m.execute("parents", {}, after=[good])
    both = m.execute("parents", {}, after=[good, bad])
    grandchild = m.execute("parents", {}, after=[both])
    assert m.get(child)["status"] == "waiting"
    assert m.show(both)["waiting"] == f"waiting for task(s) {good}, {bad} to succeed"
    any_cluster.start_worker()
    assert m.wait(child, timeout=10) == {str(good): 3}
    with pytest.raises(martinet.TaskFailed, match="cancelled"):
        m.wait(both, timeout=10)
    assert m.get(both)["reason"] == f"task {bad} it waited on ended dead"
    assert m.get(grandchild)["status"] == "cancelled"
    assert m.get(grandchild)["reason"] == f"task {both} it waited on ended cancelled"
    late = m.execute("parents", {}, after=[good])  # its parent already succeeded: runs at once
    assert m.wait(late, timeout=10) == {str(good): 3}


def test_release_gives_a_task_back_without_spending_attempts(any_cluster, tmp_path):
    cluster = any_cluster  # on every backend
    cluster.start_daemon(env={"MARTINET_MAX_RELEASES": "3"})
    cluster.start_worker()
    m = cluster.client()
    tid = m.execute({"name": "picky", "max_attempts": 1}, {"marker": str(tmp_path / "a"), "accept_on": 3})
    assert m.wait(tid, timeout=10) == "accepted"  # though max_attempts is 1
    info = m.show(tid)
    assert (info["releases"], info["attempt"], info["error"]) == (2, 3, None)
    assert [a["outcome"] for a in info["attempts"]] == ["released", "released", "succeeded"]
    assert info["attempts"][0]["error"]["message"] == "no GPU free"
    later = m.execute("picky", {"marker": str(tmp_path / "b"), "accept_on": 2, "delay": 60})
    wait_for(lambda: m.get(later)["status"] == "scheduled", timeout=10, what="the delayed release")
    assert m.get(later)["reason"] == "released: no GPU free"
    stubborn = m.execute("picky", {"marker": str(tmp_path / "c"), "accept_on": 100})
    wait_for(
        lambda: m.get(stubborn)["status"] == "stalled", timeout=10, what="the stall after too many releases"
    )
    assert m.get(stubborn)["reason"].startswith("stalled: released 4 times (more than max_releases=3)")


def test_waiters_hear_at_once_when_a_lost_worker_ends_a_parent_dead(cluster):
    cluster.start_daemon(env={"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_POISON_AFTER": "5"})
    m = cluster.client()
    parent = m.execute({"name": "suicide", "max_attempts": 1})
    child = m.execute("parents", {}, after=[parent])
    cluster.start_worker(wait=False)  # the parent will kill its worker: it ends dead
    started = time.monotonic()
    with pytest.raises(martinet.TaskFailed, match="cancelled"):
        m.wait(child, timeout=30)  # registered long before the worker has even started
    assert time.monotonic() - started < 15  # answered when it happened, not at the timeout
    assert m.get(parent)["status"] == "dead"
