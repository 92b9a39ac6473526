"""Handlers registered in code: `@martinet.task(...)` and `martinet.compose(...)` put
them here, and every Worker serves what it finds. A module of its own, so that the
worker and compositions both use it without importing each other."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from martinet import rules, when
from martinet.errors import BadInput

Handler = Callable[..., Any]
P = ParamSpec("P")
R = TypeVar("R")

# Handlers registered with @martinet.task, served by every Worker by default.
REGISTRY: dict[str, Handler] = {}
# Fleet-wide limits of the registered task names that have one:
# {"concurrency": int | None, "rate": [count, period_seconds] | None}, sent in the hello.
LIMITS: dict[str, dict[str, Any]] = {}


class TaskHandle(Generic[P, R]):
    """What `@martinet.task` makes of a handler: still the handler (calling it calls the
    function), and a typed way to submit it. `.execute`, `.schedule` and `.every` take the
    handler's own parameters (all but its first, the task context), so mypy and editors
    check a call site against the handler; `.options(queue=..., priority=...)` gives a
    handle whose calls carry those options, `.on(m)` one that submits through the
    Martinet handle `m` (default: the module's, martinet.connect)."""

    def __init__(
        self,
        fn: Callable[Concatenate[Any, P], R],
        name: str,
        options: dict[str, Any] | None = None,
        via: Any = None,
    ) -> None:
        self.fn, self.name, self._options, self._via = fn, name, options or {}, via
        self._signature = inspect.signature(fn)
        # Its first parameter (the task context) and its **kwargs one, if any: not args by name.
        parameters = list(self._signature.parameters.values())
        self._context = parameters[0].name if parameters else ""
        self._extra = next((p.name for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        functools.update_wrapper(self, fn)

    def __call__(self, task: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(task, *args, **kwargs)

    def options(self, **options: Any) -> TaskHandle[P, R]:
        """This task with submit options (queue, priority, max_attempts, key, ...)."""
        return TaskHandle(self.fn, self.name, {**self._options, **options}, self._via)

    def on(self, handle: Any) -> TaskHandle[P, R]:
        """This task, submitted through the Martinet handle `handle`."""
        return TaskHandle(self.fn, self.name, self._options, handle)

    def execute(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run it now with these arguments: the handler's own. Returns its TaskId."""
        return self._submitter().execute(self.name, self._args(args, kwargs), **self._options)

    def schedule(self, when: Any, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run it at `when` ("in 20 minutes", a datetime, ...). Returns its TaskId."""
        return self._submitter().schedule(when, self.name, self._args(args, kwargs), **self._options)

    def every(self, spec: Any, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run it on a schedule ("30 minutes", a cron line, ...). Returns its ScheduleId."""
        return self._submitter().every(spec, self.name, self._args(args, kwargs), **self._options)

    def _args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, as the wire carries them (checked against the
        handler's signature here, before anything is sent)."""
        try:
            named = dict(self._signature.bind(None, *args, **kwargs).arguments)
        except TypeError as exc:
            raise BadInput(f"task {self.name!r}: {exc}") from None
        named.pop(self._context, None)
        extra = named.pop(self._extra, {}) if self._extra else {}
        return {**named, **extra}

    def _submitter(self) -> Any:
        if self._via is not None:
            return self._via
        import martinet  # (the registry is imported by the worker: the API only when used)

        return martinet._handle()


def task(
    name: str | None = None, *, concurrency: int | None = None, rate: str | None = None
) -> Callable[[Callable[Concatenate[Any, P], R]], TaskHandle[P, R]]:
    """Register a handler: `@martinet.task("resize")` above `def resize(task, image_id): ...`,
    and make it a TaskHandle: `resize.execute(image_id=7)`, checked by mypy.

    `concurrency` and `rate` say the limits this code expects ("100/minute",
    "5/second"); the daemon applies the fleet's (config file, `martinet limits set`)
    and names a difference in its log.
    """

    def register(fn: Callable[Concatenate[Any, P], R]) -> TaskHandle[P, R]:
        key = name or fn.__name__
        limits = check_limits(key, concurrency, rate)  # bad values fail here, at import
        REGISTRY[key] = fn
        if limits:
            LIMITS[key] = limits
        else:
            LIMITS.pop(key, None)
        return TaskHandle(fn, key)

    return register


# Called in the handler's thread around every attempt a worker runs (worker_hooks):
# before(task) and after(task, outcome), outcome one of succeeded, failed, released,
# cancelled. A framework's housekeeping: Django's old connections closed, a session reset.
BEFORE: list[Callable[[Any], None]] = []
AFTER: list[Callable[[Any, str], None]] = []


def before_task(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Register `fn(task)`, called in the handler's thread before each attempt, in the
    order registered. If it raises, the attempt fails with that error (the handler is
    not called): retried by the task's policy."""
    BEFORE.append(fn)
    return fn


def after_task(fn: Callable[[Any, str], None]) -> Callable[[Any, str], None]:
    """Register `fn(task, outcome)`, called in the handler's thread after each attempt
    (outcome: "succeeded", "failed", "released" or "cancelled"), whatever the handler
    did. What it raises is logged; the attempt's end stands."""
    AFTER.append(fn)
    return fn


def check_limits(name: str, concurrency: int | None, rate: str | None) -> dict[str, Any] | None:
    """The limits of task `name` as sent in the hello, checked; None if it has none."""
    if concurrency is not None and not rules.is_count(concurrency):
        raise BadInput(
            f"concurrency of task {name!r} must be a whole number of at least 1, got {concurrency!r}"
        )
    if rate is not None:
        try:
            count, period = when.parse_rate(rate)
        except BadInput as exc:
            raise BadInput(f"rate of task {name!r}: {exc}") from None
    if concurrency is None and rate is None:
        return None
    return {"concurrency": concurrency, "rate": None if rate is None else [count, period]}
