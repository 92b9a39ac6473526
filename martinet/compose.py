"""Composition on one worker: a task whose steps run in series within one attempt.

    martinet.compose("download_and_archive", ["fetch", reshape, "targz"])

Each step gets the previous step's return value as its arguments (a dict as
keyword arguments, None as no arguments, anything else as one positional
argument); the first step gets the task's args and the last step's value is
the task's result. A step is the name of a task served by the same worker or
a plain function called like a handler, `fn(task, ...)`.

The first step that raises fails the attempt with `StepFailed` ("step 2/3
(reshape) failed: ValueError: bad row"), chained to the original exception so
its traceback is stored too. `Retry`, `Fail`, `Release` and `TaskTimeout` pass through
unchanged: they speak for the whole task. A retry runs every step again, from
the first.

Step names are resolved when a Worker starts (`check`), so a missing step is
an error then, not when the task runs. Compositions cannot be nested: list the
inner composition's steps instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from martinet.errors import Fail, MartinetError, Release, Retry, StepFailed
from martinet.registry import REGISTRY

Step = str | Callable[..., Any]


class Composition:
    """The handler `compose` registers. Call it like any handler: `composition(task, **args)`."""

    def __init__(self, name: str, steps: list[Step], fns: list[Callable[..., Any]] | None = None) -> None:
        self.name = name
        self.steps = tuple(steps)
        self.labels = tuple(s if isinstance(s, str) else _label(s) for s in steps)
        self._fns = fns  # the step functions, once bound to a worker's handlers

    def __repr__(self) -> str:
        return f"<composition {self.name!r}: {' -> '.join(self.labels)}>"

    def problems(self, handlers: Mapping[str, Callable[..., Any]]) -> list[str]:
        """What stops this composition from running with `handlers`, one sentence each."""
        found = []
        n = len(self.steps)
        for i, step in enumerate(self.steps, 1):
            if not isinstance(step, str):
                continue
            fn = handlers.get(step)
            if fn is None:
                known = ", ".join(sorted(k for k in handlers if not isinstance(handlers[k], Composition)))
                found.append(
                    f"composed task {self.name!r} step {i}/{n} names task {step!r}, "
                    f"which is not registered on this worker (registered: {known or 'none'})"
                )
            elif isinstance(fn, Composition):
                found.append(
                    f"composed task {self.name!r} step {i}/{n} names {step!r}, which is itself "
                    f"a composed task; compositions cannot be nested: list its steps instead"
                )
        return found

    def bind(self, handlers: Mapping[str, Callable[..., Any]]) -> Composition:
        """A copy whose step names are resolved in `handlers`; MartinetError if one cannot be."""
        return Composition(self.name, list(self.steps), self._resolve(handlers))

    def _resolve(self, handlers: Mapping[str, Callable[..., Any]]) -> list[Callable[..., Any]]:
        """The step functions, names resolved in `handlers`; MartinetError if one cannot be."""
        found = self.problems(handlers)
        if found:
            raise MartinetError("; ".join(found))
        return [handlers[s] if isinstance(s, str) else s for s in self.steps]

    def __call__(self, task: Any, *args: Any, **kwargs: Any) -> Any:
        # A Worker binds compositions when it starts; a direct call (a test, a
        # script) resolves step names among the @martinet.task handlers.
        fns = self._fns if self._fns is not None else self._resolve(REGISTRY)
        n = len(fns)
        value: Any = _Args(args, kwargs)
        for i, (label, fn) in enumerate(zip(self.labels, fns, strict=True), 1):
            if task.cancelled:  # revoked: stop before the next step, as a handler would
                return None
            task.progress((i - 1) / n, f"step {i}/{n}: {label}")
            try:
                value = _call(fn, task, value)
            except (Retry, Fail, Release):
                raise  # signals about the whole task; TaskTimeout is no Exception, so it passes too
            except Exception as exc:
                _skip_own_frames(exc)
                raise StepFailed(
                    f"step {i}/{n} ({label}) failed: {_describe(exc)}", index=i, total=n, step=label
                ) from exc
        return value


class _Args:
    """The task's own arguments, passed to the first step as the worker would pass them."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs


def _call(fn: Callable[..., Any], task: Any, value: Any) -> Any:
    if isinstance(value, _Args):
        return fn(task, *value.args, **value.kwargs)
    if value is None:
        return fn(task)
    if isinstance(value, dict):
        return fn(task, **value)
    return fn(task, value)


def _skip_own_frames(exc: BaseException) -> None:
    """Start the step's traceback in the step (the worker does the same for handlers)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    exc.__traceback__ = tb


def _label(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or repr(fn)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def compose(name: str, steps: list[Step]) -> Composition:
    """Register task `name` that runs `steps` in series on one worker; returns its handler.

    Steps are registered task names or plain functions `fn(task, ...)`. Names
    are checked when a Worker starts: one that no handler serves stops it.
    """
    if not isinstance(name, str) or not name.strip():
        raise MartinetError("compose() needs a task name, a non-empty string")
    if isinstance(steps, (str, bytes)) or not isinstance(steps, (list, tuple)) or not steps:
        raise MartinetError(f"compose({name!r}, ...) needs a non-empty list of steps")
    for i, step in enumerate(steps, 1):
        if isinstance(step, Composition):
            raise MartinetError(
                f"composed task {name!r} step {i}/{len(steps)} is the composed task {step.name!r}; "
                f"compositions cannot be nested: list its steps instead"
            )
        if isinstance(step, str):
            if not step.strip():
                raise MartinetError(f"composed task {name!r} step {i}/{len(steps)} is an empty name")
        elif not callable(step):
            raise MartinetError(
                f"composed task {name!r} step {i}/{len(steps)} is {step!r}; "
                f"a step is a task name or a function fn(task, ...)"
            )
    composition = Composition(name, list(steps))
    REGISTRY[name] = composition
    return composition


def check(handlers: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """Check every composition in `handlers` against them; MartinetError naming each bad step.

    Returns a copy of `handlers` in which each composition is bound to its
    step functions (the worker serves that copy).
    """
    found = [p for fn in handlers.values() if isinstance(fn, Composition) for p in fn.problems(handlers)]
    if found:
        raise MartinetError("; ".join(found))
    return {k: fn.bind(handlers) if isinstance(fn, Composition) else fn for k, fn in handlers.items()}
