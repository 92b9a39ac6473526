"""A martinet task's record (`Martinet.show`) said as Django's TaskResult: its state as
one of Django's four statuses, its failed attempts as TaskErrors, its times and workers."""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from martinet import errors as martinet_errors
from martinet.django.compat import Task, TaskError, TaskResult, TaskResultStatus
from martinet.states import HELD, TaskState

# Django has four statuses: READY (waiting to run, or to run again), RUNNING, SUCCESSFUL
# and FAILED. FAILED is a task that will not run again unless an operator retries it
# (`martinet retry`, which makes it READY again): dead, cancelled, or stalled.
STATUSES: dict[TaskState, Any] = {  # (TaskResultStatus members)
    TaskState.WAITING: TaskResultStatus.READY,  # on the tasks it was submitted after
    TaskState.SCHEDULED: TaskResultStatus.READY,  # its run_after is still to come
    TaskState.QUEUED: TaskResultStatus.READY,
    TaskState.LEASED: TaskResultStatus.READY,  # in a worker's prefetch, not started
    TaskState.RUNNING: TaskResultStatus.RUNNING,
    TaskState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    TaskState.FAILED: TaskResultStatus.READY,  # an attempt failed; the next is due (errors has it)
    TaskState.DEAD: TaskResultStatus.FAILED,  # failed with no attempt left
    TaskState.CANCELLED: TaskResultStatus.FAILED,
    TaskState.STALLED: TaskResultStatus.FAILED,  # held for an operator
}
FINISHED = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
# The attempts whose error is a TaskError: those that failed (their handler raised, or ran
# past its time limit) and those lost with their worker. Released or interrupted ones
# spent no attempt.
ERRED = ("failed", "lost")


def result_of(
    info: dict[str, Any], task: Task, alias: str, local: Callable[[datetime], datetime] | None = None
) -> TaskResult:
    """The TaskResult of the martinet task `info` (as `show` answers it), a run of `task`
    enqueued through backend `alias`; its times aware (UTC), or as `local` makes them
    (Django's timezone.make_naive without USE_TZ)."""
    status = STATUSES[TaskState(info["status"])]
    attempts = info.get("attempts") or []
    workers = [a["worker"] for a in attempts if a.get("worker")]
    if info["status"] in HELD and info.get("worker"):
        workers.append(info["worker"])
    starts = [a["started_at"] for a in attempts if a.get("started_at")]
    errors = [task_error(a["error"]) for a in attempts if a.get("outcome") in ERRED and a.get("error")]
    if not errors and status == TaskResultStatus.FAILED and info.get("error"):
        errors.append(task_error(info["error"]))  # ended without an attempt that failed
    payload = info["args"] if isinstance(info.get("args"), dict) else {}
    args, kwargs = payload.get("args"), payload.get("kwargs")

    def at(text: str | None) -> datetime | None:
        if text is None:
            return None
        moment = datetime.fromisoformat(text)  # ISO 8601 UTC, as records say times
        moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
        return moment if local is None else local(moment)

    result: TaskResult = TaskResult(
        task=task,
        id=str(info["id"]),
        status=status,
        enqueued_at=at(info.get("created_at")),
        started_at=at(starts[0] if starts else info.get("started_at")),
        last_attempted_at=at(info.get("started_at") or (starts[-1] if starts else None)),
        finished_at=at(info.get("finished_at")) if status in FINISHED else None,
        args=args if isinstance(args, list) else [],
        kwargs=kwargs if isinstance(kwargs, dict) else {},
        backend=alias,
        errors=errors,
        worker_ids=workers,
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", info.get("result"))  # (frozen, as Django's backends do)
    return result


def task_error(error: dict[str, Any]) -> TaskError:
    """A martinet error ({"type", "message", "traceback"}) as Django's TaskError."""
    message = error.get("message") or ""
    trace = error.get("traceback") or f"{error.get('type')}: {message}\n"
    return TaskError(exception_class_path=exception_path(error), traceback=trace)


def exception_path(error: dict[str, Any]) -> str:
    """The dotted path of the exception class an error names. Workers report a class's
    name ("Declined"); its traceback's last line names its module ("myapp.tasks.Declined:
    ..."), unless it is a builtin one; martinet's own (TaskTimeout) have no traceback.
    An error from nowhere else (WorkerLost: the daemon's, when a worker died) keeps its name."""
    name = str(error.get("type") or "Exception")
    pattern = re.compile(rf"([\w.]+\.)?{re.escape(name)}(?::|$)")
    for line in reversed(str(error.get("traceback") or "").splitlines()):
        found = pattern.match(line)
        if found and found.group(1):
            return f"{found.group(1)}{name}"
    for module, where in ((builtins, "builtins"), (martinet_errors, "martinet.errors")):
        kind = getattr(module, name, None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            return f"{where}.{name}"
    return name
