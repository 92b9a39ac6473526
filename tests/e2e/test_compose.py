"""Composition on one worker: steps in series within one attempt.

End to end: compositions run in real workers (tests/tasks_compose.py); the unit tests
that call them directly with a fake task are in tests/unit/test_compose.py.
"""

from __future__ import annotations

import threading

import pytest

import martinet
from tests.harness import wait_for


def test_a_composition_runs_its_steps_in_series_and_reports_progress(any_cluster):
    cluster = any_cluster  # on every backend
    cluster.start_daemon()
    cluster.start_worker("tests.tasks_compose")
    m = cluster.client()
    seen, done = [], threading.Event()
    m.on_progress(lambda e: seen.append((e["progress"], e["message"])), name="download_and_archive")
    m.on_complete(lambda e: done.set(), name="download_and_archive")
    tid = m.execute("download_and_archive", {"url": "https://example.org/data", "rows": 2})
    assert m.wait(tid, timeout=10) == {"archive": "https://example.org/data.tar.gz", "count": 2}
    assert done.wait(5)
    expected = [(0.0, "step 1/3: fetch"), (1 / 3, "step 2/3: reshape"), (2 / 3, "step 3/3: targz")]
    assert seen and seen[-1] == expected[-1]
    assert [s for s in expected if s in seen] == seen  # in order; any coalesced away are skipped
    info = m.get(tid)
    assert (info["status"], info["attempt"]) == ("succeeded", 1)
    assert info["progress_message"] == "step 3/3: targz"


def test_a_composition_failing_at_step_2_names_the_step(any_cluster):
    cluster = any_cluster  # on every backend
    cluster.start_daemon()
    cluster.start_worker("tests.tasks_compose")
    m = cluster.client()
    tid = m.execute({"name": "download_and_archive", "max_attempts": 1}, {"url": "bad"})
    with pytest.raises(
        martinet.TaskFailed, match=r"StepFailed: step 2/3 \(reshape\) failed: ValueError: bad row"
    ):
        m.wait(tid, timeout=10)
    error = m.show(tid)["error"]
    assert error["type"] == "StepFailed"
    assert error["message"] == "step 2/3 (reshape) failed: ValueError: bad row"
    assert 'raise ValueError("bad row")' in error["traceback"]
    assert "tasks_compose.py" in error["traceback"]
    assert m.get(tid)["progress_message"] == "step 2/3: reshape"


def test_a_retry_starts_again_from_the_first_step(cluster, tmp_path):
    cluster.start_daemon()
    cluster.start_worker("tests.tasks_compose")
    m = cluster.client()
    marker = tmp_path / "runs"
    tid = m.execute({"name": "again_from_the_top", "max_attempts": 3}, {"marker": str(marker)})
    assert m.wait(tid, timeout=15) == 2
    assert marker.read_text().split() == ["1", "2"]  # step 1 ran again on attempt 2
    attempts = m.show(tid)["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "succeeded"]
    assert attempts[0]["error"]["type"] == "Retry"  # passed through, not wrapped in StepFailed


def test_a_worker_whose_composition_names_a_missing_step_exits_at_once(cluster):
    proc = cluster.start_worker("tests.tasks_compose_bad", wait=False)
    assert proc.popen.wait(20) == 1
    output = wait_for(lambda: proc.log().strip(), timeout=5, what="the worker's output")
    assert output == (
        "martinet-worker: error: composed task 'broken' step 2/2 names task 'missing_step', "
        "which is not registered on this worker (registered: first_step)"
    ), output
    assert "Traceback" not in output
