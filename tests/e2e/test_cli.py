"""The `martinet` command, run as a real process against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.harness import ROOT, free_ports

SUBCOMMANDS = [
    "serve",
    "execute",
    "schedule",
    "every",
    "list",
    "schedules",
    "queues",
    "show",
    "wait",
    "revoke",
    "retry",
    "stall",
    "update",
    "prune",
    "watch",
    "ping",
    "demo",
]


def run(*args: str, url: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    if url:
        env["MARTINET_URL"] = url  # the environment is how most people will point the CLI
    return subprocess.run(
        [sys.executable, "-m", "martinet", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def ok(*args: str, url: str) -> str:
    out = run(*args, url=url)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help_on_each_command(sub):
    out = run(sub, "--help")
    assert out.returncode == 0 and "usage: martinet " + sub in out.stdout


def test_worker_help_and_bad_module():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    main = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"
    out = subprocess.run(
        [sys.executable, "-c", main, "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0 and "--concurrency" in out.stdout
    out = subprocess.run(
        [sys.executable, "-c", main, "no.such.module"], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 1 and "cannot import 'no.such.module'" in out.stderr


def test_cli_round_trip(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    url = cluster.url
    assert ok("execute", "add", "--args", '{"a": 2, "b": 40}', "--wait", url=url).strip() == "42"
    accepted = json.loads(ok("execute", "echo", "--args", '{"k": "v"}', "--user", "ana", "--json", url=url))
    tid = accepted["id"]
    assert json.loads(ok("wait", str(tid), "--json", url=url))["result"]["args"] == {"k": "v"}

    shown = ok("show", str(tid), url=url)
    assert "status: succeeded" in shown and "username: ana" in shown and "attempt 1 on" in shown
    assert json.loads(ok("show", str(tid), "--json", url=url))["attempts"][0]["outcome"] == "succeeded"

    listed = ok("list", "--user", "ana", url=url)
    assert str(tid) in listed and "succeeded" in listed
    assert [
        t["id"]
        for t in json.loads(ok("list", "--status", "succeeded", "--name", "echo", "--json", url=url))["items"]
    ] == [tid]

    later = json.loads(ok("schedule", "in 1 hour", "echo", "--args", "{}", "--json", url=url))
    assert ok("update", str(later["id"]), "--args", '{"n": 2}', url=url).strip().endswith("updated")
    assert ok("revoke", str(later["id"]), url=url).strip() == f"{later['id']}: cancelled"

    created = ok("every", "2 hours", "echo", "--run-at", "in 1 hour", url=url)
    assert created.startswith("schedule s1 created; first run at")
    assert "s1" in ok("schedules", url=url) and "2 hours" in ok("schedules", url=url)
    assert "next_due" in ok("show", "s1", url=url)
    assert ok("revoke", "s1", url=url).strip() == "s1: removed"
    assert ok("schedules", url=url).strip() == "no schedules"
    assert "1 worker(s) connected\ndatabase: ok" in ok("ping", url=url)

    again = ["execute", "echo", "--request-id", "order-7", "--json"]
    assert json.loads(ok(*again, url=url))["id"] == json.loads(ok(*again, url=url))["id"]


def test_cli_no_answer_names_the_request_id_to_run_again_with():
    (port,) = free_ports(1)  # nobody listens there
    out = run("execute", "echo", "--request-id", "order-8", "--timeout", "0.3", url=f"tcp://127.0.0.1:{port}")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert (
        "may have been accepted" in out.stderr and "the same command with --request-id order-8" in out.stderr
    )


def test_cli_failures_are_one_line(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    url = cluster.url
    for args, message in (
        (["show", "12345"], "no task with id 12345"),
        (["show", "s9"], "no schedule with id s9"),
        (["list", "--status", "weird"], "unknown status 'weird'"),
        (["every", "0 minutes", "echo"], "an interval must be longer than zero, got '0 minutes'"),
        (["update", "1", "--args", "[]"], "must be a JSON object"),
    ):
        out = run(*args, url=url)
        assert out.returncode == 1, (args, out.stdout)
        assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    out = run("execute", "boom", "--max-attempts", "1", "--wait", url=url)
    assert out.returncode == 3 and "ended dead: ValueError: kaboom" in out.stderr  # EXIT_DEAD


def test_cli_schedules(cluster):
    cluster.start_daemon()
    url = cluster.url
    out = ok("every", "0 9 * * MON-FRI", "echo", "--timezone", "Europe/Berlin", "--misfire", "skip",
             "--misfire-grace", "10 minutes", "--until", "in 30 days", "--json", url=url)  # fmt: skip
    sid = json.loads(out)["id"]
    shown = json.loads(ok("schedules", "show", sid, "--json", url=url))
    assert (shown["misfire"], shown["misfire_grace"], shown["timezone"]) == ("skip", 600.0, "Europe/Berlin")
    assert len(shown["upcoming"]) == 5
    assert ok("schedules", "show", sid, url=url).count("next due") == 5
    assert ok("schedules", "pause", sid, url=url).strip() == f"{sid}: paused"
    assert "paused" in ok("schedules", url=url)
    assert ok("schedules", "resume", sid, url=url).strip() == f"{sid}: resumed"
    assert (
        ok("schedules", "update", sid, "--every", "30 minutes", "--args", '{"v": 2}', url=url).strip()
        == f"{sid}: updated"
    )
    listed = json.loads(ok("schedules", "list", "--json", url=url))
    assert (listed[0]["every"], listed[0]["args"]) == ("30 minutes", {"v": 2})
    assert ok("schedules", "remove", sid, url=url).strip() == f"{sid}: removed"
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
        out = run(*args, url=url)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr)
    assert json.loads(ok("schedules", "--json", url=url)) == []
