"""One attempt in a handler thread: what the handler gets (TaskContext), the call, and
its end as a messages.Outcome, a failure's error cut to what the daemon keeps.

The worker's loop (worker.py) hands a TaskContext to a thread of its pool, which
calls run(); what run() returns, and the progress and start reports on the way,
go back to the loop through the worker's queue.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

from martinet import protocol
from martinet.errors import Fail, Release, Retry, TaskTimeout
from martinet.journal import UNKNOWN
from martinet.logs import about, size, told
from martinet.messages import Outcome, OutcomeKind, Progress
from martinet.protocol import MAX_VALUE_DEPTH, deeper_than
from martinet.validate import MAX_ERROR_MESSAGE, MAX_TRACEBACK, cut_end, keep_end

log = logging.getLogger("martinet.worker")

MAX_PROGRESS_MESSAGE = 1000  # characters of a progress message (the daemon keeps 1000)


class TaskContext:
    """What a handler gets as its first argument: who it is, and a way to talk back."""

    def __init__(
        self,
        task_id: int,
        attempt: int,
        name: str,
        args: dict,
        report: Callable,
        timeout: float | None = None,
    ) -> None:
        self.id = task_id
        self.attempt = attempt
        self.name = name
        self.args = args
        self.timeout = timeout
        self.parents: dict[int, Any] = {}  # what the tasks it waited on (after=) returned
        self._report = report
        self._cancel_requested = False
        # Made only for a task that waits for its due time (an Event costs about 2.7 µs to
        # make, a share worth saving of a worker's CPU on a short task): see _wait_cancel.
        self._cancel_event: threading.Event | None = None
        # Time-limit bookkeeping, shared by the handler's thread and the worker's loop.
        self._lock = threading.Lock()
        self._thread: int | None = None  # ident of the thread running the handler, while it does
        self._deadline: float | None = None  # set when the handler starts: waiting in line is free
        self._start_at: float | None = None  # (monotonic) sent ahead of its due time: not before then
        self._abandon_at: float | None = None
        self._finished = False  # its thread has its outcome: too late to abandon it
        self._abandoned = False  # its thread was replaced: it must not rejoin the pool
        self._database = UNKNOWN  # the identity of the database it came from (the daemon's welcome)
        self._started = False  # a thread took it (the daemon is told: STARTED); else it waits in line

    @property
    def cancelled(self) -> bool:
        """True once the daemon asked this task to stop; long handlers should check it."""
        return self._cancel_requested

    def _request_cancel(self) -> None:
        """Ask the handler to stop (from the worker's loop): `cancelled`, and an end to its
        wait for its due time."""
        with self._lock:
            self._cancel_requested = True
            event = self._cancel_event
        if event is not None:
            event.set()

    def _wait_cancel(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a cancel request; whether one came."""
        with self._lock:
            if self._cancel_requested:
                return True
            if self._cancel_event is None:
                self._cancel_event = threading.Event()
            event = self._cancel_event
        return event.wait(timeout)

    def progress(self, value: float | None = None, message: str | None = None) -> None:
        """Report progress (0.0 to 1.0) and a short message; streamed on the status socket."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = None  # the daemon keeps numbers only; anything else could not travel
        message = None if message is None else cut_end(str(message), MAX_PROGRESS_MESSAGE)
        self._report(Progress(self.id, self.attempt, self.name, value, message))


class Start(NamedTuple):
    """A handler took this attempt (the daemon is told: STARTED)."""

    task_id: int
    attempt: int


def run(
    ctx: TaskContext,
    handler: Callable[..., Any],
    worker_id: str,
    max_payload: int,
    report: Callable[[Start], None],
    wake: Callable[[], None],
) -> Outcome:
    """Run one attempt in this thread, from its due time (a CANCEL before then ends it
    cancelled), and return its end: the result, or the error its handler raised (a
    Retry, a Release and a Fail each as what they ask). A start is reported when the
    handler is called; `wake` tells the loop a time limit started."""
    fields = about(ctx.id, ctx.name, ctx.attempt, worker_id)  # of its log lines (logs.py)
    while ctx._start_at is not None and (early := ctx._start_at - time.monotonic()) > 0:
        if ctx._wait_cancel(early):
            log.info("task %s attempt %s cancelled before it was due", ctx.id, ctx.attempt, extra=fields)
            return Outcome(ctx.id, ctx.attempt, worker_id, OutcomeKind.CANCELLED, database=ctx._database)
    started = time.monotonic()
    ctx._started = True
    report(Start(ctx.id, ctx.attempt))  # leased -> running, in the daemon's store
    log.debug("task %s %s attempt %s started on %s", ctx.id, ctx.name, ctx.attempt, worker_id, extra=fields)
    try:
        with ctx._lock:
            ctx._thread = threading.get_ident()
            ctx._deadline = started + ctx.timeout if ctx.timeout else None
        if ctx._deadline is not None:
            wake()  # the loop times its wait by the deadlines (_poll_timeout)
        try:
            result = handler(ctx, **ctx.args)
        finally:
            with ctx._lock:
                ctx._thread = None
    except TaskTimeout:
        log.info("task %s attempt %s stopped at its time limit", ctx.id, ctx.attempt, extra=fields)
        return failed(ctx, worker_id, timeout_error(ctx))
    except Retry as exc:
        log.info(
            "task %s attempt %s asked for a retry in %ss", ctx.id, ctx.attempt, exc.in_seconds, extra=fields
        )
        return failed(ctx, worker_id, error_of(exc), retry_in=exc.in_seconds, retry=True)
    # What a handler raised is told by its type and size: its message and traceback often
    # hold the task's data, and are logged at DEBUG only (logs.py).
    except Release as exc:
        error = {"type": "Release", "message": str(exc)}
        log.info("task %s attempt %s given back (%d bytes of reason)", ctx.id, ctx.attempt,
                 size(error["message"]), extra=fields)  # fmt: skip
        log.debug("task %s attempt %s given back: %s", ctx.id, ctx.attempt, error["message"], extra=fields)
        return Outcome(ctx.id, ctx.attempt, worker_id, OutcomeKind.RELEASED, error=error,
                       retry_in=exc.in_seconds, database=ctx._database)  # fmt: skip
    except Fail as exc:
        error = error_of(exc)
        log.info("task %s attempt %s failed for good: %s", ctx.id, ctx.attempt, told(error), extra=fields)
        _debug_error(ctx, error, fields)
        return failed(ctx, worker_id, error, final=True)
    except BaseException as exc:  # noqa: BLE001 - a handler's failure is data, not a crash
        error = error_of(exc)
        log.info("task %s attempt %s raised %s", ctx.id, ctx.attempt, told(error), extra=fields)
        _debug_error(ctx, error, fields)
        return failed(ctx, worker_id, error)
    try:
        text: str | None = json.dumps(result, separators=(",", ":"))  # as the wire writes it
    except (TypeError, ValueError) as exc:
        error = {"type": "TypeError", "message": f"the handler's result cannot be stored as JSON: {exc}"}
        return failed(ctx, worker_id, error, final=True)
    except RecursionError:
        text = None
    if text is None or deeper_than(text.encode(), MAX_VALUE_DEPTH):  # the daemon could not read it
        error = {"type": "ValueError", "message": "the handler's result nests lists and dicts more than "
                 f"{MAX_VALUE_DEPTH} levels deep (the limit)"}  # fmt: skip
        return failed(ctx, worker_id, error, final=True)
    if len(text) > max_payload:  # the daemon's limit on args, for results too
        error = {"type": "ValueError", "message": f"the handler's result is {len(text)} bytes as JSON, "
                 f"over the limit of {max_payload} (max_payload): store large data elsewhere "
                 "and return where it is"}  # fmt: skip
        log.info("task %s attempt %s failed: %s", ctx.id, ctx.attempt, error["message"], extra=fields)
        return failed(ctx, worker_id, error)
    log.debug(
        "task %s attempt %s succeeded in %.3fs", ctx.id, ctx.attempt, time.monotonic() - started, extra=fields
    )
    return Outcome(ctx.id, ctx.attempt, worker_id, OutcomeKind.SUCCEEDED, result=result,
                   database=ctx._database)  # fmt: skip


def _debug_error(ctx: TaskContext, error: dict[str, Any], fields: dict[str, Any]) -> None:
    """A handler's error in full, traceback and all, at DEBUG (the INFO line told its size)."""
    log.debug("task %s attempt %s: %s", ctx.id, ctx.attempt, error["traceback"].rstrip(), extra=fields)


def is_async(handler: Callable[..., Any]) -> bool:
    """Whether `handler` is an `async def` function, itself or behind a wrapper that names
    it (`__wrapped__`: a TaskHandle, functools.wraps)."""
    return inspect.iscoroutinefunction(inspect.unwrap(handler))


def failed(ctx: TaskContext, worker_id: str, error: dict[str, Any], **kwargs: Any) -> Outcome:
    """A failed attempt's end (see messages.Outcome for `retry_in`, `final`, `retry`)."""
    return Outcome(
        ctx.id, ctx.attempt, worker_id, OutcomeKind.FAILED, error=error, database=ctx._database, **kwargs
    )


def past_limit(contexts: list[TaskContext], now: float, grace: float) -> list[TaskContext]:
    """Interrupt the handlers past their time limit; return those to abandon.

    Handlers run in threads, which cannot be killed: at the limit TaskTimeout is
    raised inside the handler's thread (it lands at the handler's next Python
    instruction). A handler blocked in C code (a socket read without a timeout,
    say) cannot be interrupted; after `grace` seconds its attempt is abandoned
    (returned, once: the worker reports the timeout itself, and starts a thread in
    its place; this one ends when the call returns)."""
    abandoned = []
    for ctx in contexts:
        if ctx._deadline is None or now < ctx._deadline:
            continue
        if ctx._abandon_at is None:
            ctx._abandon_at = now + grace
            ctx._request_cancel()
            with ctx._lock:
                if ctx._thread is not None:
                    interrupt(ctx._thread)
            log.warning(
                "task %s attempt %s ran past its %gs time limit; interrupting",
                ctx.id,
                ctx.attempt,
                ctx.timeout,
            )
        elif now >= ctx._abandon_at:
            with ctx._lock:
                if ctx._finished:  # it returned meanwhile: its outcome is on its way
                    continue
                ctx._abandoned = True  # its thread ends when the call returns (Worker._pool_step)
            log.error(
                "task %s attempt %s did not stop at its time limit; abandoning its thread",
                ctx.id,
                ctx.attempt,
            )
            ctx._deadline = None  # reported once
            abandoned.append(ctx)
    return abandoned


def interrupt(thread_ident: int) -> None:
    """Raise TaskTimeout in another thread at its next Python instruction."""
    import ctypes  # here: a worker's start is spared it (5 ms) until a time limit is due

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident), ctypes.py_object(TaskTimeout))


def timeout_error(ctx: TaskContext) -> dict:
    return {"type": "TaskTimeout", "message": f"the handler ran past its time limit of {ctx.timeout:g}s"}


def fit_error(error: Any, budget: int) -> dict:
    """An error as sent: its message and traceback cut as the daemon would keep them, but
    saying so, the traceback keeping its end; then cut further until its JSON takes at
    most `budget` bytes (characters outside ASCII take up to 12 each)."""
    error = dict(error) if isinstance(error, dict) else {}
    if isinstance(error.get("type"), str):
        error["type"] = cut_end(error["type"], 255)
    if isinstance(error.get("message"), str):
        error["message"] = cut_end(error["message"], MAX_ERROR_MESSAGE)
    if isinstance(error.get("traceback"), str):
        error["traceback"] = keep_end(error["traceback"], MAX_TRACEBACK)
    while len(protocol.dumps(error)) > budget:
        traceback_, message = error.get("traceback"), error.get("message")
        if isinstance(traceback_, str) and len(traceback_) > 200:
            error["traceback"] = keep_end(traceback_, len(traceback_) // 2)
        elif isinstance(message, str) and len(message) > 200:
            error["message"] = cut_end(message, len(message) // 2)
        else:  # nothing long is left to cut: keep what says what it was
            return {"type": str(error.get("type"))[:255], "message": str(message or "")[:200]}
    return error


def error_of(exc: BaseException) -> dict:
    # Skip our own frame (the call into the handler): the trace starts in user code.
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    }
