"""`async def` handlers: run on the worker's event loop (its own thread), beside sync ones,
with progress, cancellation and time limits as for any handler."""

from __future__ import annotations

import asyncio

import martinet

SEEN: list[str] = []


@martinet.task("aio.fetch")
async def fetch(task, url):
    task.progress(0.5, "halfway")
    await asyncio.sleep(0.01)
    return {"url": url, "loop": asyncio.get_running_loop().is_running()}


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
    assert ended[a]["result"] == {"url": "https://example.com", "loop": True}
    assert ended[b]["result"] == 42
    assert ended[a]["progress"] == 1.0  # (a success says done; the halfway report was stored before)


def test_a_time_limit_cancels_the_coroutine(make_martinet_harness):
    h = make_martinet_harness(handlers=NAMES)
    tid = h.m.execute({"name": "aio.slow", "time_limit": 0.3, "max_attempts": 1})
    (ended,) = h.drain()
    assert ended["id"] == tid and ended["status"] == "dead" and ended["error"]["type"] == "TaskTimeout"
    h._wait(lambda: "cancelled at its time limit" in SEEN, 5.0, "the coroutine to be cancelled")


def test_a_revoked_async_task_sees_task_cancelled(make_martinet_harness, tmp_path):
    h = make_martinet_harness(handlers=NAMES)
    tid = h.m.execute("aio.polite")
    h._wait(lambda: h.m.get(tid)["status"] == "running", 5.0, "the task to start")
    h.m.revoke(tid)
    (ended,) = h.drain()
    assert ended["status"] == "cancelled"
