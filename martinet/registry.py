"""Handlers registered in code: `@martinet.task(...)` and `martinet.compose(...)` put
them here, and every Worker serves what it finds. A module of its own, so that the
worker and compositions both use it without importing each other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from martinet import rules, when
from martinet.errors import BadInput

Handler = Callable[..., Any]
H = TypeVar("H", bound=Handler)

# Handlers registered with @martinet.task, served by every Worker by default.
REGISTRY: dict[str, Handler] = {}
# Fleet-wide limits of the registered task names that have one:
# {"concurrency": int | None, "rate": [count, period_seconds] | None}, sent in the hello.
LIMITS: dict[str, dict[str, Any]] = {}


def task(
    name: str | None = None, *, concurrency: int | None = None, rate: str | None = None
) -> Callable[[H], H]:
    """Register a handler: `@martinet.task("resize")` above `def resize(task, image_id): ...`.

    `concurrency` caps how many run at once across every worker, `rate` how
    many may start per period ("100/minute", "5/second"); the daemon enforces both.
    """

    def register(fn: H) -> H:
        key = name or fn.__name__
        limits = check_limits(key, concurrency, rate)  # bad values fail here, at import
        REGISTRY[key] = fn
        if limits:
            LIMITS[key] = limits
        else:
            LIMITS.pop(key, None)
        return fn

    return register


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
