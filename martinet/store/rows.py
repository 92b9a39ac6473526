"""The store's plain records and the rows it writes, built without a database."""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from martinet.models import Task
from martinet.states import HELD, TaskState, sql_list

# Column defaults live in the models (peewee sets them, not the database): raw inserts need them.
TASK_DEFAULTS = {
    f.column_name: f.default
    for f in Task._meta.sorted_fields
    if f.default is not None and not callable(f.default)
}
# States bound as parameters on the hot path go as plain str: sqlite3 binds an exact str
# without adapting it, a StrEnum member costs about 0.4 µs more a value.
_SCHEDULED, _QUEUED = str(TaskState.SCHEDULED), str(TaskState.QUEUED)
# An attempt's end changes its own row only (leased or running: see states.HELD).
FENCE = f"id = ? AND attempt = ? AND status IN ({sql_list(HELD)})"


class Ending(NamedTuple):
    """What becomes of a task whose attempt ended: the task's changes and the attempt's record."""

    changes: dict[str, Any]  # the task row's new values, status included
    status: str
    outcome: str  # as the attempt row records it (a cancelled task's attempt says cancelled)
    logged: dict[str, Any] | None  # the attempt row's error
    error: dict[str, Any] | None  # the task's new last error (none for a release)
    result: Any


class Pruned(NamedTuple):
    """What one call of Store.prune removed (or, dry, would remove)."""

    tasks: int
    attempts: int  # attempt rows
    more: bool  # the scan was full: call again from `last`
    last: tuple[float, int] | None  # (finished_at, id) of the last row read: where the next call starts


class RunningRow(NamedTuple):
    """What ending an attempt needs to know of a held task (leased or running)."""

    id: int
    name: str
    queue: str
    attempt: int
    max_attempts: int
    worker: str | None
    started_at: float | None
    cancel_requested: bool
    key_mode: str | None
    releases: int
    has_dependents: bool
    retry_base: float | None
    retry_factor: float | None
    retry_cap: float | None


class TaskRow(NamedTuple):
    """A task as reads return it (get_task): its columns as stored, for present.task_info."""

    id: int
    name: str
    username: str | None
    description: str | None
    args: str  # JSON
    queue: str
    priority: int
    status: str
    run_at: float
    attempt: int
    max_attempts: int
    timeout: float | None
    reason: str | None
    releases: int
    key: str | None
    key_mode: str | None
    progress: float | None
    progress_message: str | None
    result: str | None  # JSON
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    worker: str | None
    daemon: str | None
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    schedule_id: int | None
    due_at: float | None


class ScheduleRecord(NamedTuple):
    """A schedule as get_schedule returns it: its row, and its next due times when asked."""

    row: Any  # a models.Schedule row
    upcoming: list[float] | None


def result_text(result: Any) -> str:
    """A handler's result as the task row keeps it (json.dumps's text); the None or
    number most handlers return written without json.dumps, which costs several times
    more (a drain ends thousands of tasks a second)."""
    if result is None:
        return "null"
    kind = type(result)
    if kind is int or (kind is float and math.isfinite(result)):
        return repr(result)  # as json.dumps writes them
    return json.dumps(result)


class Unreadable(str):
    """A claimed task's args that are not a JSON object, as decoded_args found them: why.
    Only a database changed by hand holds such (args are checked before they are stored)."""


def decoded_args(texts: list[str]) -> tuple[list[Any], bool]:
    """Claimed tasks' args (JSON objects, as stored), decoded in one parse (json.loads
    costs about a microsecond a call before it reads anything), and whether all were
    readable. When the one parse fails or does not give an object a row, each text is
    read on its own, and one that is not a JSON object is Unreadable in its place."""
    try:
        decoded = json.loads("[" + ",".join(texts) + "]") if texts else []
    except (ValueError, TypeError):  # (TypeError: a NULL among them)
        decoded = None
    if decoded is not None and len(decoded) == len(texts) and {*map(type, decoded)} <= {dict}:
        return decoded, True
    alone = [_decoded_alone(text) for text in texts]
    return alone, not any(type(args) is Unreadable for args in alone)


def _decoded_alone(text: str) -> Any:
    try:
        args = json.loads(text)
    except (ValueError, TypeError) as exc:
        return Unreadable(f"not JSON ({exc})")
    return args if type(args) is dict else Unreadable(f"JSON, but a {type(args).__name__}, not an object")


def work_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """What to run, as tasks and schedules both store it."""
    return {
        "name": spec["name"],
        "username": spec.get("username"),
        "description": spec.get("description"),
        "args": json.dumps(spec.get("args") or {}),
        "queue": spec.get("queue") or "default",
        "priority": spec.get("priority") or 0,
    }


def task_row(spec: dict[str, Any], now: float) -> dict[str, Any]:
    """A new task's row, without the columns it leaves NULL (see SqlKit._insert_rows)."""
    run_at = spec.get("run_at") or now
    row = {
        **TASK_DEFAULTS,
        **work_fields(spec),
        "status": _SCHEDULED if run_at > now else _QUEUED,
        "run_at": run_at,
        "max_attempts": spec["max_attempts"],
        "attempt_budget": spec["max_attempts"],
        "created_at": now,
        "updated_at": now,
    }
    for column in ("retry_base", "retry_factor", "retry_cap", "timeout", "schedule_id", "due_at"):
        if spec.get(column) is not None:
            row[column] = spec[column]
    for column in ("username", "description"):
        if row[column] is None:
            del row[column]
    return row


ATTEMPT_COLUMNS = ("task_id", "attempt", "worker", "started_at", "ended_at", "outcome")
ERROR_COLUMNS = ("error_type", "error_message", "error_traceback")  # an attempt's, when logged


def attempt_values(
    row: RunningRow | Task, outcome: str, logged: dict[str, Any] | None, now: float, errors: bool
) -> tuple[Any, ...]:
    """An ended attempt's history row: the values of ATTEMPT_COLUMNS, then, with `errors`,
    of ERROR_COLUMNS (None when nothing was `logged`)."""
    if not errors:
        return (row.id, row.attempt, row.worker, row.started_at, now, outcome)
    logged = logged or {}
    return (row.id, row.attempt, row.worker, row.started_at, now, outcome,
            logged.get("type"), logged.get("message"), logged.get("traceback"))  # fmt: skip


def attempt_row(
    row: RunningRow | Task, outcome: str, logged: dict[str, Any] | None, now: float
) -> dict[str, Any]:
    """An ended attempt's history row, without the columns it leaves NULL (see SqlKit._insert_rows)."""
    errors = bool(logged)
    columns = ATTEMPT_COLUMNS + ERROR_COLUMNS if errors else ATTEMPT_COLUMNS
    return dict(zip(columns, attempt_values(row, outcome, logged, now, errors), strict=True))
