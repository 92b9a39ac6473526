"""`AsyncMartinet`: the calls of `Martinet`, as coroutines, for asyncio programs (FastAPI,
Starlette, aiohttp): a handler submits, reads and waits without blocking its loop.

    from martinet.aio import AsyncMartinet

    async with AsyncMartinet.connect("tcp://127.0.0.1:8008") as m:
        task_id = await m.execute("resize", {"image_id": 7})
        result = await m.wait(task_id, timeout=10)

Only what touches a socket is written here. Each call's request and what its reply
gives are Martinet's own (calls.Handle, Plan, Many); when to send a request again, look
at a daemon's port, move on to the next daemon of the list or give up is decided by
exchange.Exchange, which the blocking client.Client drives too. So a call resends, fails over
and raises as Martinet's does, with the same request ids and the same errors.

The calls of one handle, however many coroutines make them, share one connection (a
DEALER socket on zmq.asyncio) and a task reading its replies, which goes to the call
awaiting each by its request id. A socket a call throws away (no reply in time: the
next copy goes on a fresh one) stays open until the calls still awaiting a reply on it
have theirs. Importing `martinet` imports none of this (nor asyncio): only
`import martinet.aio` does.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import aclosing
from datetime import timedelta
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from martinet.calls import Call, Handle, Many, Plan
from martinet.config import Settings
from martinet.errors import DaemonUnavailable, MartinetError
from martinet.exchange import (
    Deliver,
    Discard,
    Exchange,
    Look,
    Receive,
    Resend,
    Send,
    listens,
    new_request,
    read_reply,
)
from martinet.keys import ClientKeys
from martinet.messages import Reply
from martinet.query import Page
from martinet.submit import ScheduleId, TaskId, TaskSpec, When

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["AsyncClient", "AsyncMartinet"]


class _Line:
    """One DEALER socket to a daemon, the task that reads its replies, and how many
    requests await theirs on it."""

    def __init__(self, sock: zmq.asyncio.Socket) -> None:
        self.sock = sock
        self.reader: asyncio.Task[None] | None = None
        self.users = 0  # requests whose latest copy went on it, still unanswered
        self.retired = False  # thrown away: closed once no request awaits its reply on it


class AsyncClient(Exchange):
    """A client of one daemon, or of several on one database (see client.Client), on
    asyncio: `request` and `exchange` are Client's, awaited. Any number of coroutines may
    call at once; its sockets belong to the event loop of its first call."""

    def __init__(self, url: str, timeout: float = Settings.timeout, keys: ClientKeys | None = None) -> None:
        super().__init__(url, timeout, keys)
        self._ctx: zmq.asyncio.Context | None = None
        self._pid = os.getpid()  # the process its sockets belong to (see _forked)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._line: _Line | None = None  # the one new requests go on
        self._lines: set[_Line] = set()  # every open one (thrown away ones still awaited on too)
        # The calls awaiting a reply, by request id, in the order they sent it (two calls may
        # send the same one: a request_id given twice)
        self._waiting: dict[str, list[asyncio.Future[Reply]]] = {}

    # ---- sockets ---------------------------------------------------------------

    def _forked(self) -> None:
        """In a process forked after this client was used (gunicorn --preload, a
        multiprocessing worker): the parent's context, sockets, loop and calls are not
        this process's to touch; forget them, and make new ones here."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._ctx, self._loop, self._line, self._lines, self._waiting = None, None, None, set(), {}

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be the one of the sockets (a closed one's are dropped)."""
        self._forked()
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed() and self._lines:
                raise MartinetError(
                    "this AsyncMartinet is in use on another event loop: make one a loop "
                    "(its sockets belong to the loop of its first call)"
                )
            self._drop_lines()
            self._loop = loop
        return loop

    def _current(self) -> _Line:
        """The line new requests go on (a new one, to the daemon the calls go to, if none)."""
        self._forked()
        if self._line is None:
            if self._ctx is None:
                self._ctx = zmq.asyncio.Context()
            line = _Line(self._ctx.socket(zmq.DEALER))
            self.setup(line.sock)
            line.sock.connect(self.url)
            line.reader = self._bind_loop().create_task(self._read(line), name="martinet-replies")
            self._lines.add(line)
            self._line = line
        return self._line

    async def _read(self, line: _Line) -> None:
        """Hand each reply that comes on `line` to the calls awaiting it."""
        while True:
            try:
                frames = await line.sock.recv_multipart()
            except zmq.ZMQError:  # closed
                return
            reply = read_reply(frames, self._waiting)
            if reply is None:
                continue
            futures = self._waiting[reply.rid]
            while futures:  # one reply a call: those that sent one rid get its replies in turn
                future = futures.pop(0)
                if not future.done():
                    future.set_result(reply)
                    break
            if not futures:
                del self._waiting[reply.rid]

    def _leave(self, line: _Line) -> None:
        """A request no longer awaits its reply on `line`; a thrown-away line is closed
        when none does."""
        line.users -= 1
        if line.retired and line.users <= 0:
            self._close_line(line)

    def _close_line(self, line: _Line) -> None:
        if line.reader is not None:
            line.reader.cancel()
        line.sock.close(0)
        self._lines.discard(line)

    def _drop_lines(self) -> None:
        """Close every socket and forget every call, without awaiting them (their loop is gone)."""
        for line in list(self._lines):
            line.sock.close(0)
        self._lines, self._line, self._waiting = set(), None, {}

    async def close(self) -> None:
        """Close the sockets; a call still awaiting a reply raises DaemonUnavailable."""
        lines, self._lines, self._line = list(self._lines), set(), None
        for line in lines:
            self._close_line(line)
        readers = [line.reader for line in lines if line.reader is not None]
        if readers and self._loop is asyncio.get_running_loop():
            await asyncio.gather(*readers, return_exceptions=True)
        waiting, self._waiting = self._waiting, {}
        for rid, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_exception(
                        DaemonUnavailable(f"the client was closed before request {rid} was answered", rid)
                    )
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    # ---- requests ----------------------------------------------------------------

    async def request(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        resend: bool = True,
    ) -> dict[str, Any]:
        """Send one request and return the reply's fields; raise our error if it failed
        (see Client.request)."""
        request = new_request(op, fields)
        one = self.exchange([(request.rid, request.encode())], timeout=timeout, resend=resend)
        async with aclosing(one) as replies:
            async for reply in replies:
                return reply.unwrap()
        raise AssertionError("an exchange ends with each request's reply, or raises")

    async def exchange(
        self,
        requests: Iterable[tuple[str, list[bytes]]],
        *,
        in_flight: int = 1,
        timeout: float | None = None,
        resend: bool = True,
    ) -> AsyncGenerator[Reply, None]:
        """Client.exchange, awaited: the replies to `requests`, in order; raises as it does."""
        self._bind_loop()
        steps = self.steps(requests, in_flight, self.timeout if timeout is None else timeout, resend)
        mine: dict[str, tuple[asyncio.Future[Reply], _Line]] = {}  # this exchange's requests in flight
        answer: Any = None
        try:
            while True:
                try:
                    step = steps.send(answer)
                except StopIteration:
                    return
                answer = None
                match step:
                    case Send(rid, frames):
                        await self._send(mine, rid, frames)
                    case Receive(rid, until):
                        answer = await _receive(mine[rid][0], until)
                    case Look(host, port):
                        answer = await asyncio.to_thread(listens, host, port)
                    case Discard(rid):
                        answer = self._discard(mine[rid][1])
                    case Resend(again):
                        for rid, frames in again:
                            await self._send(mine, rid, frames)
                    case Deliver(reply):
                        self._forget(mine, reply.rid)
                        yield reply
        finally:
            steps.close()
            for rid in list(mine):
                self._forget(mine, rid)

    async def _send(
        self, mine: dict[str, tuple[asyncio.Future[Reply], _Line]], rid: str, frames: list[bytes]
    ) -> None:
        """Send request `rid` on the current line; its reply goes to its future in `mine`."""
        line = self._current()
        if rid in mine:  # a copy
            future, before = mine[rid]
            self._leave(before)
        else:
            future = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(rid, []).append(future)
        line.users += 1
        mine[rid] = (future, line)
        try:
            await line.sock.send_multipart(frames, flags=zmq.DONTWAIT)
        except zmq.Again:  # its queue is full (a daemon gone for long): the next copy goes on a fresh one
            log.debug("request %s could not be queued; it goes again when its window ends", rid)

    def _discard(self, line: _Line) -> bool:
        """Throw `line` away, unless another call did already (then True: it moved on)."""
        if line is not self._line:
            return True
        self._line = None
        line.retired = True
        return False

    def _forget(self, mine: dict[str, tuple[asyncio.Future[Reply], _Line]], rid: str) -> None:
        """Request `rid` of this exchange awaits its reply no more."""
        future, line = mine.pop(rid)
        futures = self._waiting.get(rid)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiting[rid]
        self._leave(line)


async def _receive(future: asyncio.Future[Reply], until: float) -> Reply | None:
    """The reply `future` gets by `until` (time.monotonic()), or None."""
    while not future.done():
        left = until - time.monotonic()
        if left <= 0:
            return None
        await asyncio.wait([future], timeout=left)
    return future.result()


class AsyncMartinet(Handle):
    """A handle on a martinet daemon whose calls are coroutines (see `Martinet` for each).

    `AsyncMartinet.connect(url)` talks to a running `martinet serve`;
    `AsyncMartinet(db="sqlite:///app.db")` starts a daemon inside this process, in a
    thread (the constructor blocks while it opens its database). `async with` closes it.
    The calls of one handle share one connection, from any number of coroutines of one
    event loop. Martinet's event hooks (run in a thread of their own) and `enqueue_in`
    (run on your own synchronous connection) are not here: docs/asyncio.md says what
    to use instead.
    """

    def __init__(
        self, db: str | None = None, *, url: str | None = None, timeout: float | None = None, **settings: Any
    ) -> None:
        super().__init__(db, url, timeout, settings)
        self.client = AsyncClient(self._target, self.settings.timeout, self._keys)

    @classmethod
    def connect(cls, url: str | None = None, timeout: float | None = None, **settings: Any) -> AsyncMartinet:
        """A handle on the daemon at `url` (default: MARTINET_URL, then tcp://127.0.0.1:8008);
        nothing is sent before the first call."""
        return cls(url=url, timeout=timeout, **settings)

    async def close(self) -> None:
        """Close the connection and, when embedded, stop the daemon (after committing its turn)."""
        await self.client.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._stop_embedded)

    async def __aenter__(self) -> AsyncMartinet:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _run(self, plan: Plan[T]) -> T:
        """Make a plan's requests one after the other (see Martinet._run)."""
        resume: Callable[[Any], Call] = plan.send
        answer: Any = None
        while True:
            try:
                call = resume(answer)
            except StopIteration as done:
                return done.value
            try:
                answer = await self.client.request(
                    call.op, call.fields, timeout=call.timeout, resend=call.resend
                )
                resume = plan.send
            except MartinetError as exc:
                answer, resume = exc, plan.throw

    # ---- submitting ----------------------------------------------------------

    async def execute(self, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any) -> TaskId:
        """Run a task as soon as a worker is free. See `Martinet.execute`."""
        return await self._run(self._submit("execute", *self._submission(task, args, options)))

    async def execute_many(
        self, tasks: Sequence[tuple[TaskSpec, dict[str, Any] | None]], **options: Any
    ) -> builtins.list[TaskId]:
        """Submit many (task, args) pairs, a commit per 1,000. See `Martinet.execute_many`."""
        many = Many(self, tasks, options)
        try:
            async with aclosing(self.client.exchange(many.requests(), in_flight=2)) as replies:
                async for reply in replies:
                    many.take(reply)
        except MartinetError as exc:
            many.fail(exc)
        return many.result()

    async def schedule(
        self, when_: When, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any
    ) -> TaskId:
        """Run a task later ("in 20 minutes", a datetime). See `Martinet.schedule`."""
        options = {**options, "run_at": when_}
        return await self._run(self._submit("schedule", *self._submission(task, args, options)))

    async def every(
        self,
        spec: str | timedelta | int | float,
        task: TaskSpec,
        args: dict[str, Any] | None = None,
        **options: Any,
    ) -> ScheduleId:
        """Run a task repeatedly ("30 minutes", cron). See `Martinet.every`."""
        return await self._run(self._every(spec, task, args, options))

    # ---- reading -----------------------------------------------------------------

    async def get(self, task_or_schedule_id: int | str) -> dict[str, Any]:
        """A task's or schedule's record. See `Martinet.get`."""
        return (await self.client.request("get", {"id": task_or_schedule_id}))["item"]

    async def show(self, task_or_schedule_id: int | str) -> dict[str, Any]:
        """A record with its history. See `Martinet.show`."""
        return (await self.client.request("show", {"id": task_or_schedule_id}))["item"]

    async def list(
        self,
        status: str | builtins.list[str] | None = None,
        name: str | None = None,
        username: str | None = None,
        limit: int = 50,
        **filters: Any,
    ) -> builtins.list[dict[str, Any]]:
        """Tasks matching the filters, newest first. See `Martinet.list`."""
        page = await self.search(status=status, name=name, username=username, limit=limit, **filters)
        return page.items

    async def search(
        self, *, limit: int = 50, after: str | None = None, sort: str = "created", **filters: Any
    ) -> Page:
        """One page of matching tasks and the cursor of the next. See `Martinet.search`."""
        return await self._run(self._search(limit, after, sort, filters))

    async def count(self, **filters: Any) -> dict[str, int]:
        """How many tasks match the filters, by status. See `Martinet.count`."""
        return (await self.client.request("list", {"filters": self._filters(filters), "count": True}))[
            "counts"
        ]

    async def schedules(self) -> builtins.list[dict[str, Any]]:
        """Every schedule that has not been removed. See `Martinet.schedules`."""
        return (await self.client.request("schedules"))["items"]

    async def wait(self, task_id: int | str, timeout: float | None = 30.0) -> Any:
        """A task's result once it ends (timeout=None: however long it takes), awaited
        without blocking the loop. See `Martinet.wait`."""
        return await self._run(self._wait(task_id, timeout))

    async def ping(self) -> dict[str, Any]:
        """The daemon's epoch, version, workers and database. See `Martinet.ping`."""
        return await self.client.request("ping")

    # ---- changing ------------------------------------------------------------------

    async def revoke(self, task_or_schedule_id: int | str) -> str:
        """Cancel a task or remove a schedule. See `Martinet.revoke`."""
        return (await self.client.request("revoke", {"id": task_or_schedule_id}))["status"]

    async def update(
        self,
        task_or_schedule_id: int | str,
        args: dict[str, Any] | None = None,
        *,
        every: str | timedelta | int | float | None = None,
        timezone: str | None = None,
    ) -> None:
        """New args (and for a schedule, `every`/`timezone`). See `Martinet.update`."""
        await self._run(self._update(task_or_schedule_id, args, every, timezone))

    async def retry(self, task_id: int, attempts: int | None = None) -> None:
        """Run a dead, stalled, cancelled or failed task again. See `Martinet.retry`."""
        await self.client.request("retry", {"id": task_id, "attempts": attempts})

    async def stall(self, task_id: int, reason: str | None = None) -> None:
        """Hold a waiting task until retried. See `Martinet.stall`."""
        await self.client.request("stall", {"id": task_id, "reason": reason})

    async def queues(self) -> builtins.list[dict[str, Any]]:
        """Every queue with its settings and counts. See `Martinet.queues`."""
        return (await self.client.request("queues"))["items"]

    async def daemons(self) -> builtins.list[dict[str, Any]]:
        """The daemons on the daemon's database. See `Martinet.daemons`."""
        return (await self.client.request("daemons"))["items"]

    async def finished_per_minute(self) -> builtins.list[dict[str, Any]]:
        """Tasks ended through this daemon, minute by minute. See `Martinet.finished_per_minute`."""
        return (await self.client.request("finished"))["per_minute"]

    async def workers(self) -> builtins.list[dict[str, Any]]:
        """The workers connected to this daemon. See `Martinet.workers`."""
        return (await self.client.request("workers"))["items"]

    async def pause_queue(self, name: str) -> None:
        """Stop dispatching a queue. See `Martinet.pause_queue`."""
        await self.client.request("pause_queue", {"name": name})

    async def resume_queue(self, name: str) -> None:
        """Dispatch a paused queue again. See `Martinet.resume_queue`."""
        await self.client.request("resume_queue", {"name": name})

    async def set_queue(
        self,
        name: str,
        concurrency: int | str | None = None,
        rate: str | None = None,
        weight: int | None = None,
        order: str | None = None,
    ) -> None:
        """Change a queue's concurrency, rate, weight or order. See `Martinet.set_queue`."""
        fields = {"name": name, "concurrency": concurrency, "rate": rate, "weight": weight, "order": order}
        await self.client.request("set_queue", fields)

    async def task_limits(self) -> builtins.list[dict[str, Any]]:
        """The task names with fleet-wide limits. See `Martinet.task_limits`."""
        return (await self.client.request("limits"))["items"]

    async def set_task_limit(
        self, name: str, concurrency: int | str | None = None, rate: str | None = None
    ) -> None:
        """Limit a task name fleet-wide. See `Martinet.set_task_limit`."""
        await self.client.request("set_limit", {"name": name, "concurrency": concurrency, "rate": rate})

    async def prune(
        self,
        older_than: str | timedelta | int | float,
        status: str | builtins.list[str] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete (or count) finished tasks older than `older_than`. See `Martinet.prune`."""
        return await self._run(self._prune(older_than, status, dry_run))

    async def pause(self, schedule_id: str) -> None:
        """Stop a schedule until resumed. See `Martinet.pause`."""
        await self.client.request("pause", {"id": schedule_id})

    async def resume(self, schedule_id: str) -> None:
        """Resume a paused schedule. See `Martinet.resume`."""
        await self.client.request("resume", {"id": schedule_id})
