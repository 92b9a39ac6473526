"""Composition on one worker: steps in series within one attempt.

End to end: a worker process that refuses a composition naming a missing step. Compositions
run through the API, and called directly with a fake task: tests/unit/test_compose.py.
"""

from __future__ import annotations

from tests.harness import wait_for


def test_a_worker_whose_composition_names_a_missing_step_exits_at_once(cluster):
    proc = cluster.start_worker("tests.tasks_compose_bad", wait=False)
    assert proc.popen.wait(20) == 1
    output = wait_for(lambda: proc.log().strip(), timeout=5, what="the worker's output")
    assert output == (
        "martinet-worker: error: composed task 'broken' step 2/2 names task 'missing_step', "
        "which is not registered on this worker (registered: first_step)"
    ), output
    assert "Traceback" not in output
