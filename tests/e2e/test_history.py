"""History and pruning from the outside: `martinet show`, `martinet schedules show` and
`martinet prune` as real processes, and `Martinet.prune` against a daemon on every backend."""

from __future__ import annotations

import json
import re
import time

import pytest

import martinet
from martinet.models import Attempt, Task
from martinet.store import Store, open_database
from tests.e2e.test_cli import ok, run
from tests.harness import wait_for

DAY = 86400.0
NO_RETENTION = {"MARTINET_KEEP_FINISHED": "never", "MARTINET_KEEP_DEAD": "never"}
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"


def add_finished(db_url: str, status: str, days: float, n: int = 1, attempts: int = 0) -> list[int]:
    """n tasks in `status` that finished `days` days ago, each with `attempts` attempt rows."""
    db = open_database(db_url)
    store = Store(db)
    finished = time.time() - days * DAY
    try:
        with store.atomic():
            ids = [
                tid
                for tid, _ in store.submit_many(
                    [{"name": "old", "args": {}, "max_attempts": 3}] * n, finished - 60
                )
            ]
            for start in range(0, n, 500):
                chunk = ids[start : start + 500]
                Task.update(status=status, finished_at=finished).where(Task.id.in_(chunk)).execute()
            for tid in ids:
                for a in range(1, attempts + 1):
                    Attempt.create(task_id=tid, attempt=a, worker="w", started_at=finished - 1, ended_at=finished,
                                   outcome=status)  # fmt: skip
        return ids
    finally:
        db.close()


def count_tasks(db_url: str) -> int:
    db = open_database(db_url)
    try:
        return db.execute_sql("SELECT COUNT(*) FROM task").fetchone()[0]
    finally:
        db.close()


# ---- martinet show: a task's whole story ------------------------------------------------


def test_show_prints_a_tasks_progress_result_error_releases_and_attempt_log(cluster, tmp_path):
    cluster.start_daemon()
    cluster.start_worker(worker_id="w-hist")
    m = cluster.client()
    url = cluster.url

    # A task that failed once, then succeeded: two attempts, each with worker, times, outcome
    flaky = m.execute("flaky", {"succeed_on": 2}, retry_base=0.01, key="flaky-1")
    assert m.wait(flaky, timeout=20) == 2
    shown = ok("show", "flaky-1", url=url)  # by key
    assert re.search(r"status: succeeded\n", shown) and re.search(r"result: 2\n", shown)
    assert "attempts (2):" in shown and "earlier error: RuntimeError: attempt 1 fails" in shown
    assert re.search(rf"attempt 1 on w-hist: {ISO} -> {ISO} \(\d+\.\d{{3}}s\) failed: RuntimeError: attempt 1 fails",
                     shown), shown  # fmt: skip
    assert re.search(rf"attempt 2 on w-hist: {ISO} -> {ISO} \(\d+\.\d{{3}}s\) succeeded", shown), shown
    data = json.loads(ok("show", str(flaky), "--json", url=url))
    assert [(a["attempt"], a["worker"], a["outcome"]) for a in data["attempts"]] == [
        (1, "w-hist", "failed"),
        (2, "w-hist", "succeeded"),
    ]
    first = data["attempts"][0]
    assert first["error"]["type"] == "RuntimeError" and "Traceback" in first["error"]["traceback"]
    assert first["duration"] >= 0 and first["started_at"] <= first["ended_at"]
    assert (data["result"], data["status"], data["key"]) == (2, "succeeded", "flaky-1")

    # Progress and its message
    steps = m.execute("steps", {"n": 4})
    m.wait(steps, timeout=20)
    assert "progress: 100% step 4 of 4\n" in ok("show", str(steps), url=url)
    assert json.loads(ok("show", str(steps), "--json", url=url))["progress_message"] == "step 4 of 4"

    # An error with its traceback
    boom = m.execute("boom", {"message": "no disk"}, max_attempts=1)
    with pytest.raises(martinet.TaskFailed):
        m.wait(boom, timeout=20)
    shown = ok("show", str(boom), url=url)
    assert "status: dead" in shown and "error: ValueError: no disk" in shown
    assert "    Traceback (most recent call last):" in shown and "raise ValueError(message)" in shown
    assert "attempt 1 on w-hist:" in shown and "failed: ValueError: no disk" in shown

    # Releases: given back once, then accepted
    picky = m.execute("picky", {"marker": str(tmp_path / "marker"), "accept_on": 2, "delay": 0})
    assert m.wait(picky, timeout=20) == "accepted"
    shown = ok("show", str(picky), url=url)
    assert "releases: 1\n" in shown and "released: Release: no GPU free" in shown

    # A task not run yet: why it waits, and no attempts
    later = m.schedule("in 1 hour", "echo", {})
    shown = ok("show", str(later), url=url)
    assert "status: scheduled" in shown and "waiting: scheduled for" in shown
    assert "attempts: none finished yet" in shown


# ---- martinet schedules show: recent runs and the next five due times ---------------------


def test_schedules_show_lists_recent_runs_with_outcomes_and_the_next_due_times(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    url = cluster.url
    sid = m.every("1 second", {"name": "boom", "max_attempts": 1}, {"message": "tick"})

    def finished_runs():
        runs = m.show(sid)["recent_runs"]
        return [r for r in runs if r["finished_at"]][:2] if len(runs) >= 2 else None

    wait_for(lambda: finished_runs() and len(finished_runs()) == 2, 20, "two finished runs")
    m.pause(sid)
    data = json.loads(ok("schedules", "show", sid, "--json", url=url))
    run_ = next(r for r in data["recent_runs"] if r["finished_at"])
    assert (run_["status"], run_["error_type"]) == ("dead", "ValueError")
    assert set(run_) == {"id", "status", "due_at", "finished_at", "error_type"}
    ids = [r["id"] for r in data["recent_runs"]]
    assert ids == sorted(ids, reverse=True)  # newest first

    shown = ok("schedules", "show", sid, url=url)
    assert shown.count("next due ") == 5
    assert re.search(rf"recent runs \(\d+, newest first\):\n  run {ids[0]} due {ISO}: ", shown), shown
    assert re.search(rf"  run {run_['id']} due {ISO}: dead \(ValueError\), finished {ISO}\n", shown), shown
    # a run shows the schedule it came from, and its due time
    task_shown = ok("show", str(run_["id"]), url=url)
    assert f"schedule: {sid}\n" in task_shown and re.search(rf"due_at: {ISO}\n", task_shown)


# ---- martinet prune ------------------------------------------------------------------------


def test_cli_prune_dry_run_by_state_and_bad_input(cluster):
    old = add_finished(cluster.db_url, "succeeded", 40, n=2, attempts=1)
    dead = add_finished(cluster.db_url, "dead", 40, attempts=3)
    recent = add_finished(cluster.db_url, "succeeded", 1)
    cluster.start_daemon(env=NO_RETENTION)
    url = cluster.url

    out = ok("prune", "--older-than", "30 days", "--dry-run", url=url)
    assert re.fullmatch(r"would delete 3 tasks and 5 attempt rows \(finished before \S+\)\n", out), out
    assert count_tasks(cluster.db_url) == 4

    for args, message in (
        (["--older-than", "-3 days"], "an age must be 0 or more, got '-3 days'"),
        (["--older-than", "a while"], "could not read 'a while' as an age"),
        (["--older-than", "1 day", "--status", "running"], "status 'running' is not finished"),
        (["--older-than", "1 day", "--status", "succeeded,lost"], "unknown status 'lost'"),
    ):
        out = run("prune", *args, url=url)
        assert out.returncode == 1 and message in out.stderr and out.stderr.count("\n") == 1, (
            args,
            out.stderr,
        )
    assert count_tasks(cluster.db_url) == 4  # nothing changed

    done = json.loads(ok("prune", "--older-than", "30 days", "--status", "dead", "--json", url=url))
    assert (done["tasks"], done["attempts"], done["dry_run"]) == (1, 3, False)
    out = ok("prune", "--older-than", "30 days", url=url)
    assert out.startswith("deleted 2 tasks and 2 attempt rows (finished before ")
    assert [t["id"] for t in cluster.client().list()] == recent
    assert {*old, *dead}.isdisjoint(recent)
    assert ok("prune", "--older-than", "0", "--dry-run", url=url).startswith("would delete 1 tasks")


def test_api_prune_goes_batch_by_batch_on_every_backend(any_cluster):
    # Given 1,200 old succeeded tasks (more than two batches of 500) and a few that stay
    add_finished(any_cluster.db_url, "succeeded", 10, n=1200)
    add_finished(any_cluster.db_url, "succeeded", 2, n=3)
    add_finished(any_cluster.db_url, "cancelled", 10, n=2)
    any_cluster.start_daemon(env=NO_RETENTION)
    m = any_cluster.client()

    assert m.prune("5 days", status="succeeded", dry_run=True)["tasks"] == 1200
    done = m.prune("5 days", status=["succeeded"])
    assert (done["tasks"], done["attempts"], done["dry_run"]) == (1200, 0, False)
    assert count_tasks(any_cluster.db_url) == 5
    log = any_cluster.daemon.log()
    assert [int(n) for n in re.findall(r"prune: deleted (\d+) succeeded tasks", log)] == [500, 500, 200]

    # Bad input is refused by the client and by the daemon, quoted, and changes nothing
    with pytest.raises(martinet.BadInput, match="an age must be 0 or more, got '-1 day'"):
        m.prune("-1 day")
    for fields, message in (
        ({"older_than": -5}, "an age must be 0 or more, got -5"),
        ({"older_than": "soon"}, "could not read 'soon' as an age"),
        ({"older_than": 0, "status": ["queued"]}, "status 'queued' is not finished"),
        ({"older_than": 0, "after": "x"}, "after must be the [finished_at, id] of a prune reply"),
    ):
        with pytest.raises(martinet.BadInput, match=re.escape(message)):
            m.client.request("prune", fields)
    assert count_tasks(any_cluster.db_url) == 5
    assert m.prune(0, dry_run=True)["tasks"] == 5
    assert m.prune(0)["tasks"] == 5  # 0: every finished task
    assert count_tasks(any_cluster.db_url) == 0
