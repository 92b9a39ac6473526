"""Testing code that submits tasks: a real embedded daemon on a temporary SQLite file and
a worker in the same process, with a clock the test moves.

    from martinet.testing import Harness

    def test_resize(tmp_path):
        with Harness(tmp_path) as h:
            h.m.execute("resize", {"image_id": 7})
            (done,) = h.drain()
            assert done["status"] == "succeeded"
            h.assert_submitted("resize", image_id=7)

With pytest, the `martinet_harness` fixture (registered by martinet's pytest plugin, this
module) gives one per test, running every registered handler; `make_martinet_harness`
takes the handlers to run and settings. What runs is what production runs: the same
daemon, store, wire and worker, over TCP on free ports of 127.0.0.1; only the clock is
the test's (`advance`), so delayed tasks and schedules come due without sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from martinet import config
from martinet.api import Martinet
from martinet.errors import BadInput, MartinetError, TaskFailed
from martinet.messages import OutcomeKind
from martinet.registry import REGISTRY
from martinet.states import TERMINAL
from martinet.submit import TaskId, TaskSpec, task_fields
from martinet.validate import Limits
from martinet.worker import Handler, Worker

# What the harness waits for in drain(): tasks that will run without the clock moving.
PENDING = ("queued", "leased", "running", "failed")
# Fast, for tests: retries after a hundredth of a second, heartbeats every tenth.
SETTINGS = {"retry_base": 0.01, "retry_cap": 0.05, "heartbeat_interval": 0.1, "log_level": "WARNING"}


class Harness:
    """An embedded daemon (a SQLite file in `folder`, or a temporary folder of its own),
    a worker thread running `handlers` (default: every registered one), and a client,
    `m`. The daemon's clock is real time plus what `advance` added."""

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        handlers: dict[str, Handler] | list[str] | None = None,
        concurrency: int = 2,
        **settings: Any,
    ) -> None:
        from martinet.server.loop import Daemon

        self._tmp = tempfile.TemporaryDirectory(prefix="martinet-test-") if folder is None else None
        self.folder = Path(folder if folder is not None else self._tmp.name)  # type: ignore[union-attr]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.offset = 0.0  # seconds `advance` moved the daemon's clock
        flags = {"db": f"sqlite:///{self.folder / 'martinet.db'}", "client_port": 0, "worker_port": 0,
                 "status_port": 0, **SETTINGS, **settings}  # fmt: skip
        self.settings = config.load(flags=flags, environ={})
        self.daemon = Daemon(self.settings, clock=self.now, port_option="Harness({role}_port=N)")
        self._threads: list[threading.Thread] = []
        self._returned: set[int] = set()
        self.worker: Worker | None = None
        try:
            self.daemon.open()
            assert self.daemon.core is not None
            self.daemon.core.store.close()  # (this thread's connection: the loop opens its own)
            self._start(self.daemon.run, "martinet-test-daemon")
            self.m = Martinet.connect(f"tcp://127.0.0.1:{self.daemon.ports['client']}", timeout=10)
            self.worker = Worker(
                handlers=_handlers(handlers), worker_port=self.daemon.ports["worker"],
                status_port=self.daemon.ports["status"], concurrency=concurrency, journal=False,
                worker_id="test-worker", grace=1.0,
            )  # fmt: skip
            self._start(self.worker.run, "martinet-test-worker")
            self._wait(lambda: self.m.ping()["workers"] == 1, 10.0, "the worker to connect")
        except BaseException:
            self.close()
            raise

    # ---- time --------------------------------------------------------------------

    def now(self) -> float:
        """The daemon's clock: real time plus what `advance` added."""
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Move the daemon's clock `seconds` forward: delayed tasks and schedules due by then
        are run, at once. (Leases and time limits count in this clock too: advance while
        nothing runs, after `drain`.) The daemon takes the jump for a pause of its own, so
        its workers' silence meanwhile is not held against them."""
        self.offset += seconds
        assert self.daemon.core is not None
        self.daemon.core.clock_moved += seconds  # (said at DEBUG, not as a pause of the daemon)
        self.daemon.stop_waiting()
        for _ in range(2):  # the second is read by a turn that began after the first's answer:
            self.m.ping()  # at the new time, so what came due is ready now

    # ---- waiting and looking -------------------------------------------------------

    def drain(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until no task is queued, leased, running or about to be retried (scheduled
        ones wait for the clock: `advance`), and return the tasks that reached their end
        since the last drain, oldest first."""
        self._wait(self._settled, timeout, "the tasks to end")
        ended = [t for t in self._all(status=list(TERMINAL)) if t["id"] not in self._returned]
        self._returned.update(t["id"] for t in ended)
        return sorted(ended, key=lambda t: t["id"])

    def _settled(self) -> bool:
        """Nothing pending; AssertionError at once for tasks no handler here runs."""
        pending = self.m.count(status=list(PENDING))
        if not any(pending.values()):
            return True
        assert self.worker is not None
        names = {t["name"] for t in self._all(status="queued")} - set(self.worker.handlers)
        if names:
            raise AssertionError(
                f"queued tasks that no handler of this harness runs: {', '.join(sorted(names))} (import the "
                "module that registers them, or name them in make_martinet_harness(handlers=[...]))"
            )
        return False

    def submitted(
        self, name: str | None = None, /, *, queue: str | None = None, key: str | None = None, **args: Any
    ) -> list[dict[str, Any]]:
        """The tasks submitted (any state), oldest first, that have this name, queue and key,
        and whose args include `args` (a subset: other args may be there too; an arg called
        name, queue or key: pass them in a dict, **{"queue": ...})."""
        found = self._all(name=name, queue=queue, key=key)
        return [t for t in found if all(k in t["args"] and t["args"][k] == v for k, v in args.items())]

    def assert_submitted(
        self, name: str | None = None, /, *, count: int | None = None, queue: str | None = None,
        key: str | None = None, **args: Any,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """AssertionError, saying what was submitted instead, unless some task (or exactly
        `count`) matches as for `submitted`; returns those that do."""
        found = self.submitted(name, queue=queue, key=key, **args)
        if (count is None and not found) or (count is not None and len(found) != count):
            every = [(t["name"], t["queue"], t["args"]) for t in self._all()]
            wanted = {"name": name, "queue": queue, "key": key, "args": args}
            raise AssertionError(
                f"expected {'some' if count is None else count} task(s) like {wanted}, found {len(found)}; "
                f"submitted: {every[:20]}{' ...' if len(every) > 20 else ''}"
            )
        return found

    def _all(self, **filters: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after = None
        while True:
            page = self.m.search(
                limit=500, after=after, **{k: v for k, v in filters.items() if v is not None}
            )
            items += page.items
            if page.next is None:
                return sorted(items, key=lambda t: t["id"])
            after = page.next

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.005)

    # ---- life ----------------------------------------------------------------------

    def _start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.options.grace = 0
            self.worker.stop()
        if hasattr(self, "m"):
            self.m.close()
        self.daemon.stop()
        for thread in self._threads:
            thread.join(10)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _handlers(handlers: dict[str, Handler] | list[str] | None) -> dict[str, Handler]:
    if handlers is None:
        return dict(REGISTRY)
    if isinstance(handlers, dict):
        return dict(handlers)
    missing = [name for name in handlers if name not in REGISTRY]
    if missing:
        raise MartinetError(
            f"no handler registered for {', '.join(missing)}: import the module that defines it"
        )
    return {name: REGISTRY[name] for name in handlers}


# ---- inline: no daemon at all -------------------------------------------------------------


class Inline:
    """Handlers run at `execute`, in the caller's thread, with no daemon: for unit tests of
    code that submits tasks and wants none running. Args and results go through JSON as
    on the wire (a tuple comes back a list; what JSON cannot carry fails as it would).

    Its limits, on purpose: a task runs at once, whatever its run_at (schedule and every
    run it once, now); its attempts follow each other at once (max_attempts, Retry, Fail
    and Release as a worker takes them, without the delays); queues, priorities, limits,
    keys, dependencies and time limits are not applied; no events, no hooks (an `async def`
    handler runs on an event loop of its own, each call). For those,
    use Harness: a real daemon."""

    def __init__(
        self,
        handlers: dict[str, Handler] | list[str] | None = None,
        max_attempts: int = config.Settings.max_attempts,
    ) -> None:
        self.handlers = _handlers(handlers)
        self.max_attempts = max_attempts
        self.tasks: dict[int, dict[str, Any]] = {}
        self._limits = Limits()  # the defaults a daemon checks against

    def execute(self, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any) -> TaskId:
        from martinet import attempt as attempts  # the worker's own way of running an attempt

        fields = task_fields(task, args, dict(options), self._limits)
        name = fields["name"]
        handler = self.handlers.get(name)
        if handler is None:
            raise BadInput(
                f"no handler for {name!r} here (Inline runs {', '.join(sorted(self.handlers)) or 'none'})"
            )
        if attempts.is_async(handler):  # run to its end here, as a worker's event loop would
            handler = _run_to_end(handler)
        task_id = len(self.tasks) + 1
        info: dict[str, Any] = {"id": task_id, "name": name, "args": _wire(fields.get("args") or {}),
                                "queue": fields.get("queue", "default"), "status": "queued", "attempt": 0,
                                "result": None, "error": None}  # fmt: skip
        self.tasks[task_id] = info
        releases = 0
        while info["attempt"] < fields.get("max_attempts", self.max_attempts):
            number = info["attempt"] + 1
            ctx = attempts.TaskContext(task_id, number, name, _wire(info["args"]), lambda report: None)
            end = attempts.run(
                ctx, handler, "inline", self._limits.max_payload, lambda start: None, lambda: None
            )
            if end.kind is OutcomeKind.RELEASED:  # given back: no attempt spent, it runs again...
                releases += 1
                if releases > config.Settings.max_releases:  # ...as often as the daemon allows
                    info["status"] = "stalled"
                    break
                continue
            info["attempt"] = number
            if end.kind is OutcomeKind.SUCCEEDED:
                info.update(status="succeeded", result=_wire(end.result), error=None)
                break
            info["error"] = end.error
            if end.final:
                break
        if info["status"] not in ("succeeded", "stalled"):
            info["status"] = "dead"
        return TaskId(task_id)

    def schedule(
        self, when: Any, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any
    ) -> TaskId:
        """Runs it now (see the class's limits)."""
        return self.execute(task, args, **options)

    def get(self, task_id: int) -> dict[str, Any]:
        return dict(self.tasks[task_id])

    def wait(self, task_id: int, timeout: float | None = None) -> Any:
        """Its result, or TaskFailed as Martinet.wait raises it."""
        info = self.get(task_id)
        if info["status"] != "succeeded":
            raise TaskFailed.of(info)
        return info["result"]

    def close(self) -> None:
        pass


def _run_to_end(handler: Handler) -> Handler:
    """An `async def` handler as a plain one: each call runs its coroutine on a loop of its own."""
    import asyncio

    def run(ctx: Any, **args: Any) -> Any:
        return asyncio.run(handler(ctx, **args))

    return run


def _wire(value: Any) -> Any:
    """`value` as the other side of the wire reads it."""
    return json.loads(json.dumps(value))


@contextlib.contextmanager
def inline(handlers: dict[str, Handler] | list[str] | None = None) -> Iterator[Inline]:
    """martinet.execute (and schedule, get, wait) run handlers inline within the block
    (see Inline's limits); the daemon handle in use before comes back after."""
    import martinet

    runner = Inline(handlers)
    with martinet._default_lock:
        before, martinet._default = martinet._default, runner  # type: ignore[assignment]
    try:
        yield runner
    finally:
        with martinet._default_lock:
            martinet._default = before


# ---- the pytest plugin (entry point pytest11: martinet = martinet.testing) -------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the harness works without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def make_martinet_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
        """Harness(handlers=..., concurrency=..., **settings), on the test's tmp_path; all closed after."""
        made: list[Harness] = []

        def make(**options: Any) -> Harness:
            harness = Harness(tmp_path / f"martinet-{len(made)}", **options)
            made.append(harness)
            return harness

        yield make
        for harness in made:
            harness.close()

    @pytest.fixture
    def martinet_harness(make_martinet_harness: Callable[..., Harness]) -> Harness:
        """A Harness running every registered handler, for one test."""
        return make_martinet_harness()
