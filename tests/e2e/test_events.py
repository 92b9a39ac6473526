"""Events: recorded in the turn's transaction, pushed in order, replayed after a gap,
pruned after keep_events; hooks, `martinet watch`, malformed messages, bad input.

End to end: a real daemon and workers (and the CLI) over TCP, awaiting events, never
sleeping. The store and hub tests, in process, are in tests/unit/test_events.py.
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
import zmq

import martinet
from martinet.store import open_database
from tests.harness import ROOT, wait_for
from tests.unit.test_events import Seen, table

# ---- end to end: hooks, catch-up, restart, malformed, on every backend ---------------------


def test_each_hook_fires_with_its_fields_in_order_and_by_name(any_cluster):
    any_cluster.start_daemon()
    any_cluster.start_worker()
    m = any_cluster.client()
    every, complete_add, progress, retry, dead, error = Seen(), Seen(), Seen(), Seen(), Seen(), Seen()
    m.on("any", every)
    m.on_complete(lambda e: 1 / 0)  # a hook that raises, before the others
    m.on_complete(complete_add, name="add")
    m.on_progress(progress, name="steps")
    m.on_retry(retry)
    m.on_dead(dead)
    m.on_error(error)
    add = m.execute("add", {"a": 1, "b": 2})
    steps = m.execute("steps", {"n": 3})
    flaky = m.execute({"name": "flaky", "max_attempts": 3, "retry_base": 0.05}, {"succeed_on": 2})
    boom = m.execute({"name": "boom", "max_attempts": 1})
    for tid in (add, steps, flaky):
        m.wait(tid, timeout=20)
    with pytest.raises(martinet.TaskFailed):
        m.wait(boom, timeout=20)
    every.wait(lambda items: sum(e["event"] in ("succeeded", "dead") for e in items) == 4, what="4 ends")

    (done,) = complete_add.items  # by name: only add's, although the raising hook came first
    assert (done["id"], done["name"], done["result"], done["attempt"]) == (add, "add", 3, 1)
    assert isinstance(done["event_id"], int) and done["at"].endswith("+00:00")
    assert [(e["id"], e["progress"], e["message"]) for e in progress.items] == [
        (steps, i / 3, f"step {i} of 3") for i in (1, 2, 3)
    ]
    (again,) = retry.items
    assert (again["id"], again["event"], again["attempt"]) == (flaky, "failed", 1)
    assert again["error"]["type"] == "RuntimeError" and again["run_at"]
    (gone,) = dead.items
    assert (gone["id"], gone["error"]["type"], gone["error"]["message"]) == (boom, "ValueError", "kaboom")
    assert [(e["id"], e["status"]) for e in error.items] == [(flaky, "failed"), (boom, "dead")]
    ids = [e["event_id"] for e in every.items]
    assert ids == sorted(set(ids))  # in id order, none twice: so each task's in order too
    assert [e["event"] for e in every.items if e["id"] == flaky] == ["failed", "succeeded"]
    assert every.count("succeeded") == 3  # the raising hook stopped nothing


def test_a_client_back_from_a_gap_gets_exactly_the_events_it_missed(any_cluster):
    any_cluster.start_daemon()
    any_cluster.start_worker()
    m = any_cluster.client()
    seen = Seen()
    m.on("any", seen)
    first = m.execute("add", {"a": 1, "b": 1})
    seen.wait(lambda items: any(e["id"] == first for e in items), what="the first task's event")
    # Given a client that stops listening
    m.stop_listening()
    last = m.last_event_id
    had = len(seen.items)
    # When tasks finish meanwhile, and it listens again from where it stopped
    missed = [m.execute("steps", {"n": 2}), m.execute("add", {"a": 2, "b": 2})]
    for tid in missed:
        m.wait(tid, timeout=20)
    db = open_database(any_cluster.db_url)
    try:
        wait_for(lambda: len(table(db, last)) == 4, what="the missed events in the table")
        expected = table(db, last)
    finally:
        db.close()
    m.listen()
    sentinel = m.execute("add", {"a": 0, "b": 0})
    items = seen.wait(lambda items: any(e["id"] == sentinel for e in items), what="the sentinel")
    # Then it gets exactly the missed ones, in order, then the live ones
    back = items[had:]
    assert [(e["event_id"], e["event"], e["id"]) for e in back[:-1]] == [r[:3] for r in expected]
    assert sorted(e["event"] for e in back[:-1]) == ["progress", "progress", "succeeded", "succeeded"]
    assert back[-1]["id"] == sentinel and back[-1]["event_id"] > expected[-1][0]


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


def test_malformed_messages_are_recorded_with_why_where_and_size(any_cluster):
    any_cluster.start_daemon()
    m = any_cluster.client()
    seen = Seen()
    m.on_malformed(seen)
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(f"tcp://127.0.0.1:{any_cluster.status_port}")
        sock.send(b"hello")
        (bad,) = seen.wait(lambda items: items, what="the malformed event")
        assert (bad["socket"], bad["size"]) == ("status", 5)
        assert "bad signature" in bad["why"] and re.fullmatch("[0-9a-f]+", bad["peer"])
        # A flood: recorded a few a second, the rest counted
        for _ in range(300):
            sock.send(b"garbage!")
        sock.close()
    finally:
        ctx.term()
    db = open_database(any_cluster.db_url)
    try:

        def accounted() -> list[tuple]:
            rows = [r for r in table(db) if r[1] == "malformed"]
            # each row is one message (but a count of its own), plus those it counts
            total = sum((r[3]["size"] is not None) + r[3].get("suppressed", 0) for r in rows)
            return rows if total == 301 else []

        rows = wait_for(accounted, timeout=15, what="every malformed message recorded or counted")
    finally:
        db.close()
    assert len(rows) < 60
    assert m.ping()["workers"] == 0  # and the daemon still answers


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


# ---- bad input -------------------------------------------------------------------------------


def test_bad_hooks_and_subscriptions_get_clear_errors_and_change_nothing(cluster):
    cluster.start_daemon()
    m = cluster.client()
    with pytest.raises(martinet.BadInput, match="unknown event 'compleet'; hooks take one of: complete, "):
        m.on("compleet", print)
    with pytest.raises(martinet.BadInput, match="a hook must be callable, not int"):
        m.on("complete", 42)
    with pytest.raises(martinet.BadInput, match="malformed events belong to no task"):
        m.on("malformed", print, name="resize")
    with pytest.raises(martinet.BadInput, match="since must be an event id .*got -1"):
        m.listen(since=-1)
    with pytest.raises(martinet.BadInput, match="since must be an event id .*got 'last week'"):
        m.client.request("subscribe", {"since": "last week"})
    assert m._hooks == [] and m._listener is None  # nothing changed
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    out = subprocess.run(
        [sys.executable, "-m", "martinet", "watch", "--status", "sucess", "--url", cluster.url],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and "unknown status 'sucess' for watch; events are progress," in out.stderr
