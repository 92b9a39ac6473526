"""Rows as replies show them: the store's records turned into the dicts clients get,
times as ISO 8601 UTC text, schedule ids as "s7". Pure: no database here."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, overload

from martinet import when


@overload
def iso(ts: float) -> str: ...
@overload
def iso(ts: None) -> None: ...
@overload
def iso(ts: float | None) -> str | None: ...
def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC text to the millisecond (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def schedule_ref(schedule_id: int) -> str:
    """A schedule's id as users write it: s7."""
    return f"s{schedule_id}"


def error(kind: str | None, message: str | None, trace: str | None) -> dict | None:
    """A stored error's three columns as one dict, or None when there is none."""
    if kind is None and message is None:
        return None
    return {"type": kind, "message": message, "traceback": trace}


def task_info(row: Any) -> dict[str, Any]:
    """A task (the store's TaskRow, or a models.Task row) as `get`, `list`, `show` and
    `wait` answer it."""
    return {
        "id": row.id,
        "kind": "task",
        "name": row.name,
        "username": row.username,
        "description": row.description,
        "args": json.loads(row.args),
        "queue": row.queue,
        "priority": row.priority,
        "status": row.status,
        "run_at": iso(row.run_at),
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "timeout": row.timeout,
        "reason": row.reason,
        "releases": row.releases,
        "key": row.key,
        "unique": row.key_mode,
        "progress": row.progress,
        "progress_message": row.progress_message,
        "result": None if row.result is None else json.loads(row.result),
        "error": error(row.error_type, row.error_message, row.error_traceback),
        "worker": row.worker,
        "daemon": row.daemon,
        "cancel_requested": bool(row.cancel_requested),
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "updated_at": iso(row.updated_at),
        "schedule": None if row.schedule_id is None else schedule_ref(row.schedule_id),
        "due_at": iso(row.due_at),
    }


def maybe_task_info(row: Any | None) -> dict[str, Any] | None:
    """task_info, or None for a task that is missing."""
    return None if row is None else task_info(row)


def task_page(page: tuple[list[Any], Any]) -> tuple[list[dict[str, Any]], Any]:
    """A page of search_tasks (its rows, and where the next starts) with each row as task_info."""
    rows, last = page
    return [task_info(row) for row in rows], last


def attempt_infos(rows: list[Any]) -> list[dict[str, Any]]:
    """A task's finished attempts (Store.attempts) as `show` lists them."""
    return [attempt_info(row) for row in rows]


def attempt_info(row: Any) -> dict[str, Any]:
    """One finished attempt (a models.Attempt row) as `show` lists it."""
    return {
        "attempt": row.attempt,
        "worker": row.worker,
        "started_at": iso(row.started_at),
        "ended_at": iso(row.ended_at),
        "duration": None if row.started_at is None else round(row.ended_at - row.started_at, 6),
        "outcome": row.outcome,
        "error": error(row.error_type, row.error_message, row.error_traceback),
    }


def schedule_info(row: Any, upcoming: list[float] | None = None) -> dict[str, Any]:
    """A schedule (a models.Schedule row) as `get`, `show` and `schedules` answer it;
    with `upcoming` (its next due times), those too."""
    info = {
        "id": schedule_ref(row.id),
        "kind": "schedule",
        "key": row.key,
        "name": row.name,
        "username": row.username,
        "description": row.description,
        "args": json.loads(row.args),
        "queue": row.queue,
        "priority": row.priority,
        "every": row.spec if row.kind == "cron" else when.format_interval(float(row.spec)),
        "recurrence": row.kind,
        "timezone": row.timezone,
        "until": iso(row.until),
        "remaining": row.remaining,
        "misfire": row.misfire,
        "misfire_grace": row.misfire_grace,
        "status": row.status,
        "next_due": iso(row.next_due),
        "last_due": iso(row.last_due),
        "created_at": iso(row.created_at),
    }
    if upcoming is not None:
        info["upcoming"] = [iso(t) for t in upcoming]
    return info


def maybe_schedule_info(record: tuple[Any, list[float] | None] | None) -> dict[str, Any] | None:
    """A schedule as get_schedule found it (its row and, when asked, its next due times),
    as schedule_info shows it; None for one that is missing."""
    return None if record is None else schedule_info(*record)
