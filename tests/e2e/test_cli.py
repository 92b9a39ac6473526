"""The `martinet` command, run as a real process against a real daemon. (What each command
prints and refuses, its help and the worker command's, run in process: tests/unit/test_cli_commands.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import ROOT


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


def test_cli_round_trip(cluster):
    """As a user types it, pointed by MARTINET_URL: a result, a refusal in one line, a dead
    task's exit code."""
    cluster.start_daemon()
    cluster.start_worker()
    url = cluster.url
    assert ok("execute", "add", "--args", '{"a": 2, "b": 40}', "--wait", url=url).strip() == "42"
    out = run("show", "12345", url=url)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no task with id 12345" in out.stderr
    out = run("execute", "boom", "--max-attempts", "1", "--wait", url=url)
    assert out.returncode == 3 and "ended dead: ValueError: kaboom" in out.stderr  # EXIT_DEAD
