"""`async def` handlers: run on the worker's event loop (its own thread), beside sync ones,
with progress, cancellation and time limits as for any handler."""

from __future__ import annotations

import asyncio
import threading

import pytest

import martinet
from martinet.testing import inline
from tests.harness import wait_for

SEEN: list[str] = []


@pytest.fixture(autouse=True)
def _fresh_seen():
    SEEN.clear()


@martinet.task("aio.fetch")
async def fetch(task, url):
    task.progress(0.5, "halfway")
    await asyncio.sleep(0.01)
    return {"url": url, "thread": threading.current_thread().name}


@martinet.task("aio.sync")
def sync(task, n):
    return n * 2


@martinet.task("aio.slow")
async def slow(task):
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        SEEN.append("cancelled at its time limit")
        raise


@martinet.task("aio.polite")
async def polite(task):
    while not task.cancelled:
        await asyncio.sleep(0.01)
    return "stopped"


NAMES = ["aio.fetch", "aio.sync", "aio.slow", "aio.polite"]


def test_async_and_sync_handlers_side_by_side(make_martinet_harness):
    h = make_martinet_harness(handlers=NAMES)
    a = h.m.execute("aio.fetch", {"url": "https://example.com"})
    b = h.m.execute("aio.sync", {"n": 21})
    ended = {t["id"]: t for t in h.drain()}
    assert ended[a]["result"] == {"url": "https://example.com", "thread": "martinet-async-handlers"}
    assert ended[b]["result"] == 42
    assert ended[a]["progress"] == 1.0  # (a success says done; the halfway report was stored before)


def test_a_time_limit_cancels_the_coroutine(make_martinet_harness):
    h = make_martinet_harness(handlers=NAMES)
    tid = h.m.execute({"name": "aio.slow", "time_limit": 0.3, "max_attempts": 1})
    (ended,) = h.drain()
    assert ended["id"] == tid and ended["status"] == "dead" and ended["error"]["type"] == "TaskTimeout"
    wait_for(lambda: "cancelled at its time limit" in SEEN, 5.0, "the coroutine to be cancelled")


def test_a_revoked_async_task_sees_task_cancelled(make_martinet_harness):
    h = make_martinet_harness(handlers=NAMES)
    tid = h.m.execute("aio.polite")
    wait_for(lambda: h.m.get(tid)["status"] == "running", 5.0, "the task to start")
    h.m.revoke(tid)
    (ended,) = h.drain()
    assert ended["status"] == "cancelled"


def test_a_task_handle_of_an_async_def_given_by_hand_runs_on_the_loop(make_martinet_harness):
    """What @martinet.task returns (a TaskHandle), given to a worker by name: still awaited."""
    h = make_martinet_harness(handlers={"aio.by_hand": fetch})
    tid = h.m.execute("aio.by_hand", {"url": "u"})
    (ended,) = h.drain()
    assert ended["id"] == tid and ended["result"] == {"url": "u", "thread": "martinet-async-handlers"}


def test_inline_runs_an_async_def_handler_to_its_end():
    with inline(["aio.fetch"]) as m:
        tid = m.execute("aio.fetch", {"url": "u"})
        assert m.wait(tid) == {"url": "u", "thread": threading.current_thread().name}
