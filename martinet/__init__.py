"""martinet: a task system with a database for a disk and ZeroMQ for a wire.

    import martinet
    martinet.configure(url="tcp://127.0.0.1:8008")
    tid = martinet.execute("resize", {"image_id": 7})
    martinet.wait(tid, timeout=10)

Module-level functions use one shared `Martinet` handle, made on first use
from `configure(...)`, else from MARTINET_URL, else tcp://127.0.0.1:8008.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from martinet.api import Martinet
from martinet.attempt import TaskContext
from martinet.compose import compose
from martinet.errors import (
    BadInput,
    BadSchedule,
    BadTime,
    ConfigError,
    DaemonUnavailable,
    Fail,
    MartinetError,
    ProtocolError,
    Release,
    Retry,
    StepFailed,
    StoreError,
    TaskFailed,
    TaskNotFound,
    TaskTimeout,
    WaitTimeout,
)
from martinet.query import Page
from martinet.registry import after_task, before_task, task
from martinet.submit import ScheduleId, TaskId, TaskSpec, When
from martinet.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "BadInput",
    "BadSchedule",
    "BadTime",
    "ConfigError",
    "DaemonUnavailable",
    "Fail",
    "Martinet",
    "MartinetError",
    "Page",
    "ProtocolError",
    "Release",
    "Retry",
    "StepFailed",
    "StoreError",
    "TaskContext",
    "TaskFailed",
    "TaskNotFound",
    "TaskTimeout",
    "WaitTimeout",
    "Worker",
    "after_task",
    "before_task",
    "compose",
    "configure",
    "count",
    "daemons",
    "enqueue_in",
    "every",
    "execute",
    "execute_many",
    "get",
    "list",
    "pause",
    "pause_queue",
    "prune",
    "queues",
    "resume",
    "resume_queue",
    "retry",
    "revoke",
    "schedule",
    "schedules",
    "search",
    "set_queue",
    "set_task_limit",
    "show",
    "stall",
    "task",
    "task_limits",
    "update",
    "wait",
]

_default: Martinet | None = None
_default_lock = threading.Lock()


def configure(url: str | None = None, timeout: float | None = None, **settings: Any) -> Martinet:
    """Point the module-level functions at a daemon (and set their timeout)."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = Martinet.connect(url, timeout, **settings)
        return _default


def _handle() -> Martinet:
    global _default
    with _default_lock:
        if _default is None:
            _default = Martinet.connect()
        return _default


def execute(task: TaskSpec, args: dict[str, Any] | None = None, **options: Any) -> TaskId:
    """Run a task now. See `Martinet.execute`."""
    return _handle().execute(task, args, **options)


def enqueue_in(connection: Any, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any) -> TaskId:
    """Enqueue a task in your PostgreSQL transaction. See `Martinet.enqueue_in`."""
    return _handle().enqueue_in(connection, task, args, **options)


def daemons() -> builtins.list[dict[str, Any]]:
    """The daemons on the daemon's database. See `Martinet.daemons`."""
    return _handle().daemons()


def execute_many(
    tasks: Sequence[tuple[TaskSpec, dict[str, Any] | None]], **options: Any
) -> builtins.list[TaskId]:
    """Submit many (task, args) pairs, a commit per 1,000. See `Martinet.execute_many`."""
    return _handle().execute_many(tasks, **options)


def schedule(when: When, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any) -> TaskId:
    """Run a task later ("in 20 minutes", a datetime). See `Martinet.schedule`."""
    return _handle().schedule(when, task, args, **options)


def every(
    spec: str | timedelta | int | float, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any
) -> ScheduleId:
    """Run a task repeatedly ("30 minutes"). See `Martinet.every`."""
    return _handle().every(spec, task, args, **options)


def get(task_or_schedule_id: int | str) -> dict[str, Any]:
    """A task's or schedule's record. See `Martinet.get`."""
    return _handle().get(task_or_schedule_id)


def show(task_or_schedule_id: int | str) -> dict[str, Any]:
    """A record with its history. See `Martinet.show`."""
    return _handle().show(task_or_schedule_id)


def list(  # noqa: A001
    status: str | builtins.list[str] | None = None,
    name: str | None = None,
    username: str | None = None,
    limit: int = 50,
    **filters: Any,
) -> builtins.list[dict[str, Any]]:
    """Tasks matching the filters, newest first. See `Martinet.list` and `Martinet.search`."""
    return _handle().list(status, name, username, limit, **filters)


def search(**filters: Any) -> Page:
    """One page of matching tasks and the cursor of the next. See `Martinet.search`."""
    return _handle().search(**filters)


def count(**filters: Any) -> dict[str, int]:
    """How many tasks match the filters, by status. See `Martinet.count`."""
    return _handle().count(**filters)


def wait(task_id: int | str, timeout: float | None = 30.0) -> Any:
    """A task's result once it ends (timeout=None: however long it takes). See `Martinet.wait`."""
    return _handle().wait(task_id, timeout)


def revoke(task_or_schedule_id: int | str) -> str:
    """Cancel a task or remove a schedule. See `Martinet.revoke`."""
    return _handle().revoke(task_or_schedule_id)


def update(
    task_or_schedule_id: int | str,
    args: dict[str, Any] | None = None,
    *,
    every: str | timedelta | int | float | None = None,
    timezone: str | None = None,
) -> None:
    """New args (and for a schedule, `every`/`timezone`). See `Martinet.update`."""
    _handle().update(task_or_schedule_id, args, every=every, timezone=timezone)


def retry(task_id: int, attempts: int | None = None) -> None:
    """Run a dead, stalled or cancelled task again. See `Martinet.retry`."""
    _handle().retry(task_id, attempts)


def stall(task_id: int, reason: str | None = None) -> None:
    """Hold a waiting task until retried. See `Martinet.stall`."""
    _handle().stall(task_id, reason)


def queues() -> builtins.list[dict[str, Any]]:
    """Every queue with its settings and counts. See `Martinet.queues`."""
    return _handle().queues()


def pause_queue(name: str) -> None:
    """Stop dispatching a queue. See `Martinet.pause_queue`."""
    _handle().pause_queue(name)


def resume_queue(name: str) -> None:
    """Dispatch a paused queue again. See `Martinet.resume_queue`."""
    _handle().resume_queue(name)


def set_queue(
    name: str,
    concurrency: int | str | None = None,
    rate: str | None = None,
    weight: int | None = None,
    order: str | None = None,
) -> None:
    """Change a queue's concurrency, rate, weight or order. See `Martinet.set_queue`."""
    _handle().set_queue(name, concurrency, rate, weight, order)


def task_limits() -> builtins.list[dict[str, Any]]:
    """The task names with fleet-wide limits. See `Martinet.task_limits`."""
    return _handle().task_limits()


def set_task_limit(name: str, concurrency: int | str | None = None, rate: str | None = None) -> None:
    """Limit a task name fleet-wide. See `Martinet.set_task_limit`."""
    _handle().set_task_limit(name, concurrency, rate)


def prune(
    older_than: str | timedelta | int | float,
    status: str | builtins.list[str] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete (or count) finished tasks older than `older_than`. See `Martinet.prune`."""
    return _handle().prune(older_than, status, dry_run)


def schedules() -> builtins.list[dict[str, Any]]:
    """Every schedule that has not been removed. See `Martinet.schedules`."""
    return _handle().schedules()


def pause(schedule_id: str) -> None:
    """Stop a schedule until resumed. See `Martinet.pause`."""
    _handle().pause(schedule_id)


def resume(schedule_id: str) -> None:
    """Resume a paused schedule. See `Martinet.resume`."""
    _handle().resume(schedule_id)
