"""`martinet workers` and `martinet top --once`, in process against an embedded daemon
with worker threads (the live redraw in a real terminal: tests/e2e/test_cli.py)."""

from __future__ import annotations

import json
import threading

import pytest

import martinet
from martinet.cli.top import bar
from tests.harness import wait_for
from tests.live import HANDLERS, Cli

released = threading.Event()


def hold(task):
    """Says it is 40 % done, then waits (bounded) until the test lets it go."""
    task.progress(0.4, "halfway")
    released.wait(20)
    return "held"


@pytest.fixture
def busy(make_live, sqlite_url, capsys, monkeypatch):
    """A daemon whose worker runs a held task at 40 %, after one task died."""
    released.clear()
    live = make_live(sqlite_url)
    worker = live.worker(handlers={**HANDLERS, "hold": hold}, worker_id="w-top")
    dead = live.m.execute({"name": "boom", "max_attempts": 1})
    with pytest.raises(martinet.TaskFailed):
        live.m.wait(dead, timeout=20)
    held = live.m.execute("hold", {})
    wait_for(lambda: live.m.get(held)["progress"] == 0.4, what="the held task's progress")
    yield live, worker, held, dead, Cli(live, capsys, monkeypatch)
    released.set()


def test_workers_lists_what_each_worker_runs_and_holds(busy):
    live, worker, held, _dead, cli = busy
    (item,) = json.loads(cli.ok("workers", "--json"))
    assert item["id"] == "w-top" and item["held"] == [held] and "hold" in item["names"]
    assert item["queues"] is None and item["capacity"] >= item["threads"] == 2
    assert item["last_seen_seconds"] < 5
    table = cli.ok("workers")
    assert "w-top" in table and "all queues" in table


def test_top_once_shows_queues_workers_progress_and_the_dead(busy):
    _live, _worker, held, dead, cli = busy
    out = cli.ok("top", "--once")
    assert "martinet top: daemon" in out and "database ok" in out
    (queue_line,) = [line for line in out.splitlines() if line.startswith("default ")]
    assert queue_line.split()[1:4] == ["0", "1", "0"]  # ready, running, scheduled
    assert "w-top" in out
    (running,) = [line for line in out.splitlines() if line.strip().startswith(f"{held} hold")]
    assert f"{bar(0.4)} halfway" in running
    (died,) = [line for line in out.splitlines() if line.strip().startswith(f"{dead} boom")]
    assert "dead" in died and "ValueError: kaboom" in died


def test_top_refuses_a_refresh_of_no_time(busy):
    *_, cli = busy
    code, _out, err = cli.run("top", "--every", "0")
    assert code == 1 and "--every must be more than 0 seconds" in err


def test_a_progress_bar_reads_at_a_glance():
    assert bar(0.0) == "[....................]   0%"
    assert bar(0.5) == "[##########..........]  50%"
    assert bar(1.0) == "[####################] 100%"
    assert bar(None).strip() == "[" + " " * 20 + "]"
