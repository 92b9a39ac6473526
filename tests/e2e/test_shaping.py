"""Shaping work with real processes: a key raced by several client processes, a worker
killed by its task ending a parent. The rest (priority, keys, schedules declared at every
start, dependencies, releases) in process: tests/unit/test_shaping.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import martinet
from tests.harness import ROOT


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
