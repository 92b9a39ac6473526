"""martinet.aio: AsyncMartinet's calls against an embedded daemon and worker threads
(tests/live.py), each compared with Martinet's; many coroutines on one connection; and
its client against a scripted daemon (test_client.py's): resends, failover, timeouts,
as Martinet's. Each test runs its coroutine on a loop of its own, bounded (run())."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import martinet
from martinet import aio, exchange
from martinet.aio import AsyncClient, AsyncMartinet
from martinet.errors import Busy
from martinet.keys import new_pair
from tests.harness import free_ports
from tests.live import HANDLERS, Live
from tests.unit import test_client
from tests.unit.test_docs import PAGES, python_blocks

scripted = test_client.scripted  # a fixture: ScriptedDaemon(**kwargs), closed after the test


def run(coro, timeout: float = 10.0):
    """A test's coroutine, on a fresh event loop, for `timeout` seconds at most."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def gate():
    """(opened, handler): a task handler that returns "opened" once the test sets `opened`."""
    opened = threading.Event()

    def handler(task):
        if not opened.wait(10):
            raise TimeoutError("the test never opened the gate")
        return "opened"

    yield opened, handler
    opened.set()


# ---- every call, against a daemon and a worker ------------------------------------------


def test_every_call_gives_what_martinets_gives(live):
    live.worker()
    m = live.m

    async def story(am: AsyncMartinet) -> None:
        tid = await am.execute({"name": "add", "username": "ana"}, {"a": 2, "b": 3})
        assert tid.created and tid.warning is None
        assert await am.wait(tid, timeout=10) == 5
        assert await am.get(tid) == m.get(tid)
        assert await am.show(tid) == m.show(tid)
        assert await am.list(name="add") == m.list(name="add") != []
        assert await am.search(username="ana", limit=1) == m.search(username="ana", limit=1)
        assert await am.count() == m.count() == {"succeeded": 1}

        later, again = await asyncio.gather(  # at once, on one connection: one creates it
            am.schedule("in 1 hour", "echo", {"n": 1}, request_id="later-1"),
            am.schedule("in 1 hour", "echo", {"n": 1}, request_id="later-1"),
        )
        assert later == again and (later.created, again.created) == (True, False)
        await am.stall(later, "held by the test")
        assert (await am.get(later))["status"] == "stalled"
        await am.retry(later)
        assert (await am.wait(later, timeout=10))["args"] == {"n": 1}
        ids = await am.execute_many([("add", {"a": i, "b": 1}) for i in range(3)])
        assert [await am.wait(i, timeout=10) for i in ids] == [1, 2, 3]
        assert (
            await am.execute("nobody_runs_this")
        ).warning == "no connected worker handles 'nobody_runs_this'"

        sid = await am.every("1 hour", "echo", {"v": 1})
        assert sid.startswith("s") and sid.created
        await am.update(sid, {"v": 2}, every="2 hours")
        assert (await am.get(sid))["args"] == {"v": 2}
        await am.pause(sid)
        assert [s["status"] for s in await am.schedules()] == ["paused"]
        await am.resume(sid)
        assert await am.schedules() == m.schedules()
        assert await am.revoke(sid) == "removed"

        await am.pause_queue("default")
        await am.set_queue("default", concurrency=4)
        (queue,) = [q for q in await am.queues() if q["name"] == "default"]
        assert queue["paused"] and queue["concurrency"] == 4
        await am.resume_queue("default")
        await am.set_task_limit("add", concurrency=2)
        assert await am.task_limits() == m.task_limits() != []
        ping = await am.ping()
        assert (ping["epoch"], ping["workers"]) == (m.ping()["epoch"], 1)
        assert [w["id"] for w in await am.workers()] == [w["id"] for w in m.workers()]
        assert [d["this"] for d in await am.daemons()] == [True]
        assert sum(minute["succeeded"] for minute in await am.finished_per_minute()) == 5
        assert await am.prune(0, dry_run=True) == m.prune(0, dry_run=True)
        assert (await am.prune(0))["tasks"] == 5 and await am.count(status="succeeded") == {}

    async def main() -> None:
        async with AsyncMartinet.connect(live.url, timeout=5) as am:
            await story(am)

    run(main())


def test_errors_are_martinets_own(live):
    live.worker()
    m = live.m

    async def main() -> None:
        async with AsyncMartinet.connect(live.url, timeout=5) as am:
            for call in (
                lambda h: h.get(9999),
                lambda h: h.list(status="lost"),
                lambda h: h.schedule("in twenty flurbs", "echo"),
                lambda h: h.every("now and then", "echo"),
                lambda h: h.execute("echo", {"x": object()}),
                lambda h: h.execute_many([("echo", {}), ("", {})]),
            ):
                with pytest.raises(martinet.MartinetError) as sync:
                    call(m)
                with pytest.raises(type(sync.value), match=f"^{re.escape(str(sync.value))}$"):
                    await call(am)
            dead = await am.execute({"name": "boom", "max_attempts": 1}, {"message": "always"})
            with pytest.raises(martinet.TaskFailed, match="dead: ValueError: always") as failed:
                await am.wait(dead, timeout=10)
            assert failed.value.info["status"] == "dead"
            later = await am.schedule("in 1 hour", "echo")
            with pytest.raises(martinet.WaitTimeout) as late:
                await am.wait(later, timeout=0.05)
            assert late.value.status == "scheduled"

    run(main())


def test_many_coroutines_share_one_connection_and_a_wait_leaves_the_loop_free(live, gate):
    """Given a task that runs until the test lets it end, a wait on it is pending while a
    hundred other calls, each awaited by its own coroutine, go out on the same
    connection and get their own replies; a cancelled wait leaves nothing behind."""
    opened, handler = gate
    live.worker(handlers={**HANDLERS, "gate": handler})

    async def main() -> None:
        async with AsyncMartinet.connect(live.url, timeout=5) as am:
            held = await am.execute("gate")
            waiting = asyncio.create_task(am.wait(held, timeout=10))
            with pytest.raises(TimeoutError):  # cancelled by the timeout
                await asyncio.wait_for(am.wait(held, timeout=10), 0.05)

            async def add(i: int) -> int:
                return await am.wait(await am.execute("add", {"a": i, "b": i}), timeout=10)

            assert await asyncio.gather(*(add(i) for i in range(100))) == [2 * i for i in range(100)]
            assert not waiting.done()
            opened.set()
            assert await waiting == "opened"
            assert len(am.client._lines) == 1 and am.client._waiting == {}

            stuck = await am.execute("nobody_runs_this")
            pending = asyncio.create_task(am.wait(stuck, timeout=10))
            await am.ping()  # the wait is on its way
            await am.close()
            with pytest.raises(martinet.DaemonUnavailable, match="closed before"):
                await pending

    run(main())


def test_a_lost_reply_goes_again_on_a_fresh_socket_and_the_calls_awaiting_on_the_old_one_still_get_theirs(
    live, gate, monkeypatch
):
    opened, handler = gate
    live.worker(handlers={**HANDLERS, "gate": handler})
    read, copies = aio.read_reply, []

    def lose_the_first(frames, waiting):
        reply = read(frames, waiting)
        if reply is not None and reply.rid == "lost":
            copies.append(reply)
            if len(copies) == 1:
                return None
        return reply

    monkeypatch.setattr(aio, "read_reply", lose_the_first)

    async def main() -> None:
        async with AsyncMartinet.connect(live.url, timeout=5) as am:
            held = await am.execute("gate")
            waiting = asyncio.create_task(am.wait(held, timeout=10))
            await am.ping()  # the wait is on its way, on the first socket
            (first,) = am.client._lines
            monkeypatch.setattr(exchange, "FIRST_TRY", 0.05)
            assert (await am.client.request("ping", {"rid": "lost"}))["workers"] == 1
            assert len(copies) >= 2 and am.client._line is not first and first in am.client._lines
            opened.set()
            assert await waiting == "opened"  # answered on the first socket, then closed
            assert am.client._lines == {am.client._line}

    run(main())


def test_calls_past_the_connections_budget_are_refused_as_busy(make_live, sqlite_url):
    """Every coroutine's call goes on the handle's one connection: past the daemon's
    peer_rate a second, calls raise Busy, as Martinet's do."""
    live = make_live(sqlite_url, peer_rate=20)

    async def main() -> list:
        async with AsyncMartinet.connect(live.url, timeout=5) as am:
            return await asyncio.gather(*(am.ping() for _ in range(60)), return_exceptions=True)

    answers = run(main())
    busy = [a for a in answers if isinstance(a, Busy)]
    pongs = [a for a in answers if isinstance(a, dict) and a["ok"]]
    assert busy and all("peer_rate" in str(a) for a in busy) and 0 < len(pongs) <= 21
    assert len(busy) + len(pongs) == 60


def test_an_embedded_daemon_and_one_loop_after_another(sqlite_url):
    am = AsyncMartinet(db=sqlite_url, client_port=0, worker_port=0, status_port=0, log_level="WARNING")
    try:
        assert set(am.ports) == {"client", "worker", "status"}
        epoch = run(am.ping())["epoch"]
        assert run(am.ping())["epoch"] == epoch  # a new loop takes over once the first is closed
    finally:
        run(am.close())
    assert am.ports == {}


def test_calls_with_curve_keys(tmp_path, sqlite_url):
    new_pair("daemon", tmp_path / "daemon")
    _, secret = new_pair("client", tmp_path / "clients")
    keyed = {"key_file": str(secret), "server_key": str(tmp_path / "daemon" / "daemon.key")}
    live = Live(
        sqlite_url,
        server_secret_key=str(tmp_path / "daemon" / "daemon.key_secret"),
        client_keys=str(tmp_path / "clients"),
        **keyed,
    )

    async def main() -> None:
        async with AsyncMartinet.connect(live.url, timeout=5, **keyed) as am:
            assert (await am.ping())["epoch"] == live.m.ping()["epoch"]
        async with AsyncMartinet.connect(live.url, timeout=0.3) as plain:
            with pytest.raises(martinet.DaemonUnavailable):
                await plain.ping()

    try:
        run(main())
    finally:
        live.close()


# ---- the client, against a scripted daemon ----------------------------------------------


def test_an_unanswered_request_goes_again_with_the_same_rid_until_answered(scripted, monkeypatch):
    monkeypatch.setattr(exchange, "FIRST_TRY", 0.05)
    daemon = scripted(drop={"r1"}, drop_first=3)

    async def main() -> None:
        c = AsyncClient(daemon.url, timeout=5)
        try:
            assert (await c.request("ping", {"rid": "r1"}))["echo"] == "r1"
        finally:
            await c.close()

    run(main())
    assert daemon.seen == {"r1": 4} and len(set(daemon.copies["r1"])) == 1


def test_a_call_that_got_no_answer_may_be_in_and_calling_again_with_its_id_never_makes_two(
    scripted, monkeypatch
):
    monkeypatch.setattr(exchange, "FIRST_TRY", 0.05)
    daemon = scripted()
    daemon.silent.set()
    pairs = [("resize", {"image_id": i}) for i in range(3)]

    async def main() -> None:
        async with AsyncMartinet.connect(daemon.url, timeout=0.2) as am:
            with pytest.raises(martinet.DaemonUnavailable, match="may have been accepted") as one:
                await am.execute("resize", {"image_id": 7})
            with pytest.raises(martinet.DaemonUnavailable, match="may have been accepted") as many:
                await am.execute_many(pairs)
            assert many.value.accepted == [] and len(daemon.tasks) == 4
            daemon.silent.clear()
            again = await am.execute("resize", {"image_id": 7}, request_id=one.value.request_id)
            assert again == 1 and not again.created
            ids = await am.execute_many(pairs, request_id=many.value.request_id)
            assert ids == [2, 3, 4] and not any(i.created for i in ids) and len(daemon.tasks) == 4

    run(main())


def test_calls_at_once_move_together_to_the_next_daemon_when_the_first_is_silent(scripted, monkeypatch):
    monkeypatch.setattr(exchange, "FIRST_TRY", 0.05)
    first, second = scripted(), scripted()
    first.silent.set()

    async def main() -> None:
        c = AsyncClient(f"{first.url},{second.url}", timeout=5)
        try:
            replies = await asyncio.gather(*(c.request("ping", {"rid": f"r{i}"}) for i in range(20)))
            assert [r["echo"] for r in replies] == [f"r{i}" for i in range(20)]
            assert c.url == second.url  # moved once, not once a call
        finally:
            await c.close()

    run(main())
    assert set(first.seen) == set(second.seen) == {f"r{i}" for i in range(20)}


def test_a_daemon_of_the_list_that_is_not_running_is_passed_over_at_once(scripted):
    (nothing,) = free_ports(1)
    daemon = scripted()

    async def main() -> float:
        c = AsyncClient(f"tcp://127.0.0.1:{nothing},{daemon.url}", timeout=10)
        started = time.monotonic()
        try:
            assert (await c.request("ping", {"rid": "r1"}))["echo"] == "r1"
        finally:
            await c.close()
        return time.monotonic() - started

    assert run(main()) < 2


def test_a_local_daemon_that_is_not_there_fails_fast(monkeypatch):
    monkeypatch.setattr(exchange, "REFUSED_FOR", 0.2)
    (port,) = free_ports(1)

    async def main() -> None:
        async with AsyncMartinet.connect(f"tcp://127.0.0.1:{port}", timeout=10) as am:
            with pytest.raises(martinet.DaemonUnavailable, match="nothing listens at"):
                await am.ping()

    started = time.monotonic()
    run(main())
    assert time.monotonic() - started < 2


# ---- the package and the page --------------------------------------------------------------


def test_import_martinet_does_not_import_asyncio():
    code = (
        "import sys, martinet\n"
        "assert 'asyncio' not in sys.modules and 'zmq.asyncio' not in sys.modules\n"
        "import martinet.aio\n"
        "assert 'zmq.asyncio' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_the_fastapi_example_runs(live, monkeypatch):
    """The README's FastAPI app (docs/asyncio.md includes it), as shown, with an HTTP client."""
    from fastapi.testclient import TestClient

    (block,) = [b for b in python_blocks(PAGES["README.md"]) if "FastAPI(" in b]
    live.worker(handlers={"resize": lambda task, image_id: {"resized": image_id}})
    monkeypatch.setenv("MARTINET_URL", live.url)
    namespace: dict = {"__name__": "app"}
    exec(compile(block, "README.md", "exec"), namespace)
    with TestClient(namespace["app"]) as http:
        posted = http.post("/images/7/resize")
        assert posted.status_code == 202
        task_id = posted.json()["task_id"]
        got = http.get(f"/tasks/{task_id}", params={"wait": 5})
        assert got.json()["status"] == "succeeded" and got.json()["result"] == {"resized": 7}
        assert http.get("/tasks/9999").status_code == 404
    assert live.m.get(task_id)["args"] == {"image_id": 7}


def test_a_forked_process_calls_on_sockets_of_its_own(live):
    """A handle used, then the process forked (gunicorn --preload): the child's calls go
    on a context and sockets of its own, on its own loop, and the parent's still work."""
    am = AsyncMartinet.connect(live.url, timeout=5)
    assert run(am.ping())["workers"] == 0
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only, never return into pytest
        code = 1
        try:
            code = 0 if asyncio.run(asyncio.wait_for(am.execute("add", {"a": 1, "b": 2}), 5)) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert live.m.list()[0]["name"] == "add"  # the child's task is there
    assert run(am.ping())["workers"] == 0  # the parent's handle still answers (a new loop)
    run(am.close())
