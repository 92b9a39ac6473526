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


def test_serve_logs_json_lines_and_serves_metrics(tmp_path):
    """`martinet serve --log-format json --metrics ...` as an operator starts it: every
    line on stderr is a JSON object, and the metrics port answers /healthz."""
    import json
    import queue
    import signal
    import threading
    import urllib.request

    from tests.harness import free_ports

    client, worker, status, metrics = free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    args = [sys.executable, "-m", "martinet", "serve", "--db", f"sqlite:///{tmp_path / 'm.db'}",
            "--client-port", str(client), "--worker-port", str(worker), "--status-port", str(status),
            "--log-format", "json", "--metrics", f"127.0.0.1:{metrics}"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any("martinet serving on" in line for line in seen):
            seen.append(lines.get(timeout=20))  # (bounded: queue.Empty fails the test)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/healthz", timeout=10) as answer:
            assert answer.status == 200 and json.loads(answer.read())["ok"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        reader.join(10)
        proc.stderr.close()
    assert proc.returncode == 0
    seen += list(lines.queue)
    logged = [json.loads(line) for line in seen if line.strip()]
    assert [line["message"] for line in logged if line["message"].startswith("metrics on")]
    stopped = [line for line in logged if line["message"] == "martinet stopped"]
    assert stopped and {"time", "level", "logger"} <= set(stopped[0]), logged


# A supervisor's SIGTERM the moment `martinet serve` says it serves (from within here: as
# soon as open() returns, when it has logged its line and its ports answer).
_TERM_WHEN_OPEN = """
import os, signal, sys
from martinet.cli.main import main
from martinet.server.loop import Daemon
opened = Daemon.open
def open_then_term(self):
    opened(self)
    os.kill(os.getpid(), signal.SIGTERM)
Daemon.open = open_then_term
sys.exit(main(sys.argv[1:]))
"""


def test_a_sigterm_as_soon_as_serve_says_it_serves_stops_it_as_any_other(tmp_path):
    """Its handlers are in place before the daemon opens: the signal stops it (exit 0, its
    row marked stopped), where it used to kill it (-15) in the moment between its line
    and its handlers."""
    from martinet.store import Store, open_database

    db = f"sqlite:///{tmp_path / 'm.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    out = subprocess.run(
        [sys.executable, "-c", _TERM_WHEN_OPEN, "serve", "--db", db,
         "--client-port", "0", "--worker-port", "0", "--status-port", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    store = Store(open_database(db))
    try:
        assert [row["stopped_at"] is not None for row in store.daemons()] == [True]
    finally:
        store.close()


def test_top_redraws_in_a_terminal_and_quits_on_q(cluster):
    """`martinet top` in a real terminal (a pty): it redraws in place, and q quits it,
    leaving the terminal as it was (the cursor shown again)."""
    import pty
    import select
    import time

    cluster.start_daemon()
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    env["MARTINET_URL"] = cluster.url
    proc = subprocess.Popen([sys.executable, "-m", "martinet", "top", "--every", "0.1"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env)  # fmt: skip
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while seen.count(b"martinet top: daemon") < 2:  # two frames: it redraws
            assert time.monotonic() < deadline and proc.poll() is None, seen[-2000:]
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        os.write(master, b"q")
        assert proc.wait(10) == 0
        while select.select([master], [], [], 0.2)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:  # the other end closed
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    assert b"\x1b[H\x1b[2J" in seen and seen.rstrip().endswith(b"\x1b[?25h")
