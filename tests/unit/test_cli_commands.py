"""The `martinet` commands run in process (cli.main(argv), MARTINET_URL pointing at an
embedded daemon with a worker thread, tests/live.py), their output read with capsys: what
each command prints and refuses. A few of them as real processes, as a user types them,
are tests/e2e/test_cli.py."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

import martinet
from martinet import cli
from martinet.store import Store, open_database
from tests.harness import free_ports, wait_for
from tests.live import Cli

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"


# ---- the commands: output, refusals, help -----------------------------------------------


def test_cli_round_trip(live, sh):
    live.worker()
    ok = sh.ok
    assert ok("execute", "add", "--args", '{"a": 2, "b": 40}', "--wait").strip() == "42"
    accepted = json.loads(ok("execute", "echo", "--args", '{"k": "v"}', "--user", "ana", "--json"))
    tid = accepted["id"]
    assert json.loads(ok("wait", str(tid), "--json"))["result"]["args"] == {"k": "v"}

    shown = ok("show", str(tid))
    assert "status: succeeded" in shown and "username: ana" in shown and "attempt 1 on" in shown
    assert json.loads(ok("show", str(tid), "--json"))["attempts"][0]["outcome"] == "succeeded"

    listed = ok("list", "--user", "ana")
    assert str(tid) in listed and "succeeded" in listed
    assert [
        t["id"] for t in json.loads(ok("list", "--status", "succeeded", "--name", "echo", "--json"))["items"]
    ] == [tid]

    later = json.loads(ok("schedule", "in 1 hour", "echo", "--args", "{}", "--json"))
    assert ok("update", str(later["id"]), "--args", '{"n": 2}').strip().endswith("updated")
    assert ok("revoke", str(later["id"])).strip() == f"{later['id']}: cancelled"

    created = ok("every", "2 hours", "echo", "--run-at", "in 1 hour")
    assert created.startswith("schedule s1 created; first run at")
    assert "s1" in ok("schedules") and "2 hours" in ok("schedules")
    assert "next_due" in ok("show", "s1")
    assert ok("revoke", "s1").strip() == "s1: removed"
    assert ok("schedules").strip() == "no schedules"
    assert "1 worker(s) connected\ndatabase: ok" in ok("ping")
    (this,) = json.loads(ok("daemons", "--json"))  # the one daemon on this SQLite file
    assert this["this"] and this["state"] == "serving" and this["address"] == live.url
    assert f"* {this['id']}" in ok("daemons") and "serving" in ok("daemons")

    again = ["execute", "echo", "--request-id", "order-7", "--json"]
    assert json.loads(ok(*again))["id"] == json.loads(ok(*again))["id"]


def test_cli_failures_are_one_line(live, sh):
    live.worker()
    for args, message in (
        (["show", "12345"], "no task with id 12345"),
        (["show", "s9"], "no schedule with id s9"),
        (["list", "--status", "weird"], "unknown status 'weird'"),
        (["every", "0 minutes", "echo"], "an interval must be longer than zero, got '0 minutes'"),
        (["update", "1", "--args", "[]"], "must be a JSON object"),
    ):
        code, out, err = sh.run(*args)
        assert code == 1, (args, out)
        assert err.count("\n") == 1 and message in err, err
    code, _out, err = sh.run("execute", "boom", "--max-attempts", "1", "--wait")
    assert code == 3 and "ended dead: ValueError: kaboom" in err  # EXIT_DEAD


def test_cli_task_limits(sh):
    ok = sh.ok
    assert ok("limits").startswith("no task name has limits")
    assert (
        ok("limits", "set", "charge", "--concurrency", "2", "--rate", "10/second").strip()
        == "charge: updated"
    )
    assert ok("limits", "set", "charge", "--rate", "none").strip() == "charge: updated"
    assert json.loads(ok("limits", "--json")) == [
        {"name": "charge", "concurrency": 2, "rate": None, "running": 0}
    ]
    assert "charge" in ok("limits") and "CONCURRENCY" in ok("limits")
    for args, message in (
        (["limits", "set", "charge"], "nothing to set; give --concurrency or --rate"),
        (["limits", "set", "charge", "--concurrency", "0"], "--concurrency must be 1 or more"),
        (["limits", "set", "charge", "--rate", "fast"], "rate"),
    ):
        code, _out, err = sh.run(*args)
        assert code == 1 and message in err, (args, err)


def test_cli_schedules(sh):
    ok = sh.ok
    out = ok("every", "0 9 * * MON-FRI", "echo", "--timezone", "Europe/Berlin", "--misfire", "skip",
             "--misfire-grace", "10 minutes", "--until", "in 30 days", "--json")  # fmt: skip
    sid = json.loads(out)["id"]
    shown = json.loads(ok("schedules", "show", sid, "--json"))
    assert (shown["misfire"], shown["misfire_grace"], shown["timezone"]) == ("skip", 600.0, "Europe/Berlin")
    assert len(shown["upcoming"]) == 5
    assert ok("schedules", "show", sid).count("next due") == 5
    assert ok("schedules", "pause", sid).strip() == f"{sid}: paused"
    assert "paused" in ok("schedules")
    assert ok("schedules", "resume", sid).strip() == f"{sid}: resumed"
    assert (
        ok("schedules", "update", sid, "--every", "30 minutes", "--args", '{"v": 2}').strip()
        == f"{sid}: updated"
    )
    listed = json.loads(ok("schedules", "list", "--json"))
    assert (listed[0]["every"], listed[0]["args"]) == ("30 minutes", {"v": 2})
    assert ok("schedules", "remove", sid).strip() == f"{sid}: removed"
    for args, message in (
        (["every", "1 hour", "echo", "--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["every", "99 * * * *", "echo"], "99 * * * *"),
        (
            ["every", "1 hour", "echo", "--run-at", "in 2 hours", "--until", "in 1 hour"],
            "is before the first run",
        ),
        (["schedules", "pause", "42"], "is a task id; schedules have ids like s7"),
        (["schedules", "update", "s1"], "nothing to update"),
    ):
        code, _out, err = sh.run(*args)
        assert code == 1 and message in err, (args, err)
    assert json.loads(ok("schedules", "--json")) == []


SUBCOMMANDS = ["serve", "execute", "schedule", "every", "list", "schedules", "queues", "show", "wait",
               "revoke", "retry", "stall", "update", "prune", "watch", "ping", "demo"]  # fmt: skip


def test_help_on_each_command(capsys):
    for sub in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exited:
            cli.main([sub, "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0 and "usage: martinet " + sub in out, sub


def test_worker_help_and_bad_module(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.worker_main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "--concurrency" in out
    assert "--queues" in out and "comma-separated" in out  # it mentions queues
    assert cli.worker_main(["no.such.module"]) == 1
    assert "cannot import 'no.such.module'" in capsys.readouterr().err


def test_queues_help_and_the_task_commands_take_a_queue(capsys):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as exited:
            cli.main([*argv, "--help"])
        assert exited.value.code == 0, argv
        return capsys.readouterr().out

    out = help_of("queues")
    assert "usage: martinet queues" in out
    for action in ("list", "pause", "resume", "set"):
        assert action in out
    out = help_of("queues", "set")
    for flag in ("--concurrency", "--rate", "--weight", "--order", "--json", "--url"):
        assert flag in out, flag
    assert "fifo" in out and "random" in out and "none" in out
    for sub in ("execute", "schedule", "every"):
        assert "--queue QUEUE" in help_of(sub), sub


def test_cli_no_answer_names_the_request_id_to_run_again_with(capsys, monkeypatch):
    (port,) = free_ports(1)  # nobody listens there
    monkeypatch.setenv("MARTINET_URL", f"tcp://127.0.0.1:{port}")
    code = cli.main(["execute", "echo", "--request-id", "order-8", "--timeout", "0.3"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert "may have been accepted" in err and "the same command with --request-id order-8" in err


# ---- martinet list ---------------------------------------------


def test_cli_list_filters_pages_and_counts(live, sh):
    m = live.m
    a = m.execute(
        {"name": "resize.small", "description": "Avatar"}, {"image_id": 7, "user": {"email": "a@x.io"}}
    )
    b = m.execute("resize.large", {"image_id": "7"})
    c = m.execute("resize.large", {"image_id": 7})

    def listing(*args: str) -> tuple[int, str, str]:
        return sh.run("list", *args, "--timeout", "5")

    out = listing("--name", "resize.*", "--where", "image_id=7", "--json")[1]
    assert [t["id"] for t in json.loads(out)["items"]] == [c, a]
    out = listing("--where", 'image_id="7"', "--where", "user.email=a@x.io", "--json")[1]
    assert json.loads(out) == {"items": [], "next": None}
    first = json.loads(listing("--limit", "2", "--json")[1])
    assert [t["id"] for t in first["items"]] == [c, b] and first["next"]
    rest = json.loads(listing("--limit", "2", "--after", first["next"], "--json")[1])
    assert [t["id"] for t in rest["items"]] == [a] and rest["next"] is None
    code, out, _ = listing("--text", "avatar", "--since", "1 hour ago", "--status", "queued,running")
    assert code == 0 and f"{a:>8}  queued" in out and "resize.large" not in out
    assert "more: martinet list ... --after " in listing("--limit", "1")[1]
    assert listing("--count", "--name", "resize.large")[1].split() == ["queued", "2", "total", "2"]
    assert json.loads(listing("--count", "--json")[1]) == {"counts": {"queued": 3}, "total": 3}

    for args, message in [
        (["--where", "image_id"], "--where 'image_id' must look like FIELD=VALUE, e.g. image_id=7"),
        (["--where", "a b=1"], "where field 'a b' is not a payload path"),
        (["--since", "in twenty flurbs"], "could not read 'in twenty flurbs' as a time"),
        (["--after", first["next"][:-2]], "was altered or is not a martinet cursor"),
        (["--after", first["next"], "--sort", "due"], "continues a listing sorted by created, not due"),
        (["--status", "lost"], "unknown status 'lost'"),
        (["--schedule", "weekly"], "schedule must be a schedule id like s7, got 'weekly'"),
    ]:
        code, _out, err = listing(*args)
        assert code == 1, args
        assert err.startswith("martinet: error: ") and message in err, err
    code, _out, err = listing("--sort", "size")
    assert code == 2 and "invalid choice: 'size'" in err
    assert m.count() == {"queued": 3}  # nothing changed


# ---- martinet show, schedules show, prune --------------------

DAY = 86400.0
NO_RETENTION = {"keep_finished": "never", "keep_dead": "never"}


def add_finished(db_url: str, status: str, days: float, n: int = 1, attempts: int = 0) -> list[int]:
    """n tasks in `status` that finished `days` days ago, each with `attempts` attempt rows."""
    db = open_database(db_url)
    store = Store(db)
    Task, Attempt = store.Task, store.Attempt  # the models bound to this database
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


def test_show_prints_a_tasks_progress_result_error_releases_and_attempt_log(live, sh, tmp_path):
    live.worker(worker_id="w-hist")
    m, ok = live.m, sh.ok

    # A task that failed once, then succeeded: two attempts, each with worker, times, outcome
    flaky = m.execute("flaky", {"succeed_on": 2}, retry_base=0.01, key="flaky-1")
    assert m.wait(flaky, timeout=20) == 2
    shown = ok("show", "flaky-1")  # by key
    assert re.search(r"status: succeeded\n", shown) and re.search(r"result: 2\n", shown)
    assert "attempts (2):" in shown and "earlier error: RuntimeError: attempt 1 fails" in shown
    assert re.search(rf"attempt 1 on w-hist: {ISO} -> {ISO} \(\d+\.\d{{3}}s\) failed: RuntimeError: attempt 1 fails",
                     shown), shown  # fmt: skip
    assert re.search(rf"attempt 2 on w-hist: {ISO} -> {ISO} \(\d+\.\d{{3}}s\) succeeded", shown), shown
    data = json.loads(ok("show", str(flaky), "--json"))
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
    assert "progress: 100% step 4 of 4\n" in ok("show", str(steps))
    assert json.loads(ok("show", str(steps), "--json"))["progress_message"] == "step 4 of 4"

    # An error with its traceback
    boom = m.execute("boom", {"message": "no disk"}, max_attempts=1)
    with pytest.raises(martinet.TaskFailed):
        m.wait(boom, timeout=20)
    shown = ok("show", str(boom))
    assert "status: dead" in shown and "error: ValueError: no disk" in shown
    assert "    Traceback (most recent call last):" in shown and "raise ValueError(message)" in shown
    assert "attempt 1 on w-hist:" in shown and "failed: ValueError: no disk" in shown

    # Releases: given back once, then accepted
    picky = m.execute("picky", {"marker": str(tmp_path / "marker"), "accept_on": 2, "delay": 0})
    assert m.wait(picky, timeout=20) == "accepted"
    shown = ok("show", str(picky))
    assert "releases: 1\n" in shown and "released: Release: no GPU free" in shown

    # A task not run yet: why it waits, and no attempts
    later = m.schedule("in 1 hour", "echo", {})
    shown = ok("show", str(later))
    assert "status: scheduled" in shown and "waiting: scheduled for" in shown
    assert "attempts: none finished yet" in shown


def test_schedules_show_lists_recent_runs_with_outcomes_and_the_next_due_times(live, sh):
    live.worker()
    m, ok = live.m, sh.ok
    sid = m.every("1 second", {"name": "boom", "max_attempts": 1}, {"message": "tick"})

    def finished_runs():
        runs = m.show(sid)["recent_runs"]
        return [r for r in runs if r["finished_at"]][:2] if len(runs) >= 2 else None

    wait_for(lambda: finished_runs() and len(finished_runs()) == 2, 20, "two finished runs")
    m.pause(sid)
    data = json.loads(ok("schedules", "show", sid, "--json"))
    run_ = next(r for r in data["recent_runs"] if r["finished_at"])
    assert (run_["status"], run_["error_type"]) == ("dead", "ValueError")
    assert set(run_) == {"id", "status", "due_at", "finished_at", "error_type"}
    ids = [r["id"] for r in data["recent_runs"]]
    assert ids == sorted(ids, reverse=True)  # newest first

    shown = ok("schedules", "show", sid)
    assert shown.count("next due ") == 5
    assert re.search(rf"recent runs \(\d+, newest first\):\n  run {ids[0]} due {ISO}: ", shown), shown
    assert re.search(rf"  run {run_['id']} due {ISO}: dead \(ValueError\), finished {ISO}\n", shown), shown
    # a run shows the schedule it came from, and its due time
    task_shown = ok("show", str(run_["id"]))
    assert f"schedule: {sid}\n" in task_shown and re.search(rf"due_at: {ISO}\n", task_shown)


def test_cli_prune_dry_run_by_state_and_bad_input(make_live, sqlite_url, capsys, monkeypatch):
    old = add_finished(sqlite_url, "succeeded", 40, n=2, attempts=1)
    dead = add_finished(sqlite_url, "dead", 40, attempts=3)
    recent = add_finished(sqlite_url, "succeeded", 1)
    live = make_live(sqlite_url, **NO_RETENTION)
    sh = Cli(live, capsys, monkeypatch)
    ok = sh.ok

    out = ok("prune", "--older-than", "30 days", "--dry-run")
    assert re.fullmatch(r"would delete 3 tasks and 5 attempt rows \(finished before \S+\)\n", out), out
    assert count_tasks(sqlite_url) == 4

    for args, message in (
        (["--older-than", "-3 days"], "an age must be 0 or more, got '-3 days'"),
        (["--older-than", "a while"], "could not read 'a while' as an age"),
        (["--older-than", "1 day", "--status", "running"], "status 'running' is not finished"),
        (["--older-than", "1 day", "--status", "succeeded,lost"], "unknown status 'lost'"),
    ):
        code, _out, err = sh.run("prune", *args)
        assert code == 1 and message in err and err.count("\n") == 1, (args, err)
    assert count_tasks(sqlite_url) == 4  # nothing changed

    done = json.loads(ok("prune", "--older-than", "30 days", "--status", "dead", "--json"))
    assert (done["tasks"], done["attempts"], done["dry_run"]) == (1, 3, False)
    out = ok("prune", "--older-than", "30 days")
    assert out.startswith("deleted 2 tasks and 2 attempt rows (finished before ")
    assert [t["id"] for t in live.m.list()] == recent
    assert {*old, *dead}.isdisjoint(recent)
    assert ok("prune", "--older-than", "0", "--dry-run").startswith("would delete 1 tasks")


def test_api_prune_goes_batch_by_batch_on_every_backend(make_live, db_url, caplog):
    # Given 1,200 old succeeded tasks (more than two batches of 500) and a few that stay
    add_finished(db_url, "succeeded", 10, n=1200)
    add_finished(db_url, "succeeded", 2, n=3)
    add_finished(db_url, "cancelled", 10, n=2)
    m = make_live(db_url, **NO_RETENTION).m

    assert m.prune("5 days", status="succeeded", dry_run=True)["tasks"] == 1200
    with caplog.at_level(logging.INFO, logger="martinet"):
        done = m.prune("5 days", status=["succeeded"])
    assert (done["tasks"], done["attempts"], done["dry_run"]) == (1200, 0, False)
    assert count_tasks(db_url) == 5
    assert [int(n) for n in re.findall(r"prune: deleted (\d+) succeeded tasks", caplog.text)] == [
        500,
        500,
        200,
    ]

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
    assert count_tasks(db_url) == 5
    assert m.prune(0, dry_run=True)["tasks"] == 5
    assert m.prune(0)["tasks"] == 5  # 0: every finished task
    assert count_tasks(db_url) == 0
