"""Events end to end: they outlive a daemon's kill -9, and `martinet watch` as a process
(live, since, filters, a closed pipe, SIGTERM), awaiting events, never sleeping. The store,
the hub, hooks, catch-up, malformed messages and bad input, in process: tests/unit/test_events.py.
"""

from __future__ import annotations

import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import martinet
from tests.harness import ROOT
from tests.unit.test_events import Seen

# ---- a restart, on every backend -------------------------------------------------------------


def test_events_survive_a_daemon_kill_and_restart(any_cluster):
    cluster = any_cluster
    cluster.start_daemon()
    cluster.start_worker()
    m, stay = cluster.client(), cluster.client(timeout=30)
    seen, live = Seen(), Seen()
    m.on("any", seen)
    stay.on("any", live)  # listens throughout
    a = m.execute("add", {"a": 1, "b": 1})
    seen.wait(lambda items: any(e["id"] == a for e in items), what="task a's event")
    m.stop_listening()
    last = m.last_event_id
    b = m.execute("add", {"a": 2, "b": 2})
    m.wait(b, timeout=20)
    live.wait(lambda items: any(e["id"] == b for e in items), what="task b's event, live")
    # When the daemon is killed and started again
    cluster.daemon.kill9()
    cluster.start_daemon()
    c = m.execute("add", {"a": 3, "b": 3})
    m.wait(c, timeout=30)
    # Then a client resuming from its last id gets b's and c's events
    m.listen(since=last)
    got = seen.wait(lambda items: any(e["id"] == c for e in items), what="task c's event, replayed")
    after = [(e["id"], e["event"]) for e in got if e["event_id"] > last]
    assert after == [(b, "succeeded"), (c, "succeeded")]
    # And so does a new one in another run, told where to resume before its first hook
    again, resumed = cluster.client(), Seen()
    again.last_event_id = last
    again.on("any", resumed)
    got = resumed.wait(lambda items: any(e["id"] == c for e in items), what="c, in a new client")
    assert [(e["id"], e["event"]) for e in got] == [(b, "succeeded"), (c, "succeeded")]
    with pytest.raises(martinet.BadInput, match="stop_listening"):
        again.last_event_id = 0
    # And the one that listened throughout subscribed again by itself, from its last id
    items = live.wait(lambda items: any(e["id"] == c for e in items), timeout=30, what="c, live")
    ids = [e["event_id"] for e in items]
    assert ids == sorted(set(ids)) and [e["id"] for e in items] == [a, b, c]


# ---- martinet watch ------------------------------------------------------------------------


@contextmanager
def watching(*args: str) -> Iterator[tuple[subprocess.Popen, queue.Queue]]:
    """`martinet watch ARGS` as a process, and the lines it prints (read by a thread)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "martinet", "watch", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for line in proc.stdout:
                lines.put(line)
        except (ValueError, OSError):  # the test closed it
            pass

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(5)
        proc.stdout.close()
        proc.stderr.close()


def take(lines: queue.Queue, n: int, timeout: float = 20.0) -> list[str]:
    try:
        return [lines.get(timeout=timeout) for _ in range(n)]
    except queue.Empty:
        raise AssertionError(f"watch printed fewer than {n} lines in {timeout}s") from None


def test_watch_json_prints_one_event_per_line_live_and_since(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    steps = m.execute("steps", {"n": 2})
    m.wait(steps, timeout=20)
    with watching("--json", "--since", "0", "--url", cluster.url) as (proc, lines):
        replayed = [json.loads(line) for line in take(lines, 3)]
        assert [(e["event"], e["id"]) for e in replayed] == [("progress", steps)] * 2 + [("succeeded", steps)]
        assert [e["event_id"] for e in replayed] == [1, 2, 3]
        boom = m.execute({"name": "boom", "max_attempts": 1})
        (dead,) = [json.loads(line) for line in take(lines, 1)]
        assert (dead["event"], dead["id"], dead["error"]["type"]) == ("dead", boom, "ValueError")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr.read() == ""


def test_watch_filters_by_name_and_status_and_stops_on_a_closed_pipe(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    m.wait(m.execute("steps", {"n": 2}), timeout=20)
    add = m.execute("add", {"a": 2, "b": 40})
    m.wait(add, timeout=20)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    args = ["--name", "add", "--status", "succeeded,dead", "--since", "0", "--url", cluster.url]
    with subprocess.Popen(
        [sys.executable, "-m", "martinet", "watch", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    ) as proc:  # fmt: skip
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 20)
            assert ready, "watch printed nothing in 20s"
            line = proc.stdout.readline()
            assert re.fullmatch(rf"\S+ #\d+ succeeded task {add} add attempt 1: -> 42\n", line), line
            proc.stdout.close()  # the reader goes away (`| head -1`)
            m.wait(m.execute("add", {"a": 0, "b": 0}), timeout=20)  # its line cannot be written
            assert proc.wait(15) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
