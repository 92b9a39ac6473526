"""The queue options of the CLI's commands, as `martinet ... --help` prints them (real processes;
the rest of rates, limits and queue config is tests/unit/test_rate_and_queue_config.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.harness import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )


def test_queues_help():
    out = run("-m", "martinet", "queues", "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: martinet queues" in out.stdout
    for action in ("list", "pause", "resume", "set"):
        assert action in out.stdout
    out = run("-m", "martinet", "queues", "set", "--help")
    assert out.returncode == 0, out.stderr
    for flag in ("--concurrency", "--rate", "--weight", "--order", "--json", "--url"):
        assert flag in out.stdout, flag
    assert "fifo" in out.stdout and "random" in out.stdout and "none" in out.stdout


def test_task_commands_take_a_queue():
    for sub in ("execute", "schedule", "every"):
        out = run("-m", "martinet", sub, "--help")
        assert out.returncode == 0 and "--queue QUEUE" in out.stdout, sub


def test_worker_help_mentions_queues():
    main = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"
    out = run("-c", main, "--help")
    assert out.returncode == 0 and "--queues" in out.stdout and "comma-separated" in out.stdout
