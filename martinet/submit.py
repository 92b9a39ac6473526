"""What a call that creates a task or schedule sends and returns: its fields (read
and checked in the client: time expressions become UTC timestamps here, so the
daemon's loop never runs the English parser), request ids, and the ids returned."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta
from typing import Any

from martinet import when
from martinet.errors import BadInput, DaemonUnavailable
from martinet.validate import Limits, check_args, check_name

TaskSpec = str | dict[str, Any]
When = str | datetime | timedelta | int | float
TASK_KEYS = {
    "name",
    "username",
    "description",
    "queue",
    "priority",
    "max_attempts",
    "run_at",
    "timezone",
    "timeout",
    "time_limit",
    "retry_base",
    "retry_factor",
    "retry_cap",
    "key",
    "unique",
    "after",
}


def new_request_id() -> str:
    """A request id that sorts by time: microseconds since the epoch, then 64 random bits.
    The database's unique index on request ids takes new ones at its end; random ones
    (uuid4) landed on a different page of it for every task, each page rewritten on commit."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(8)}"


BATCH = 1000  # tasks per execute_many request: well under the daemon's limits
EVERY_KEYS = {"until", "count", "misfire", "misfire_grace"}


def made_here(created: bool, made_rid: bool, keyed: bool) -> bool:
    """Whether a call created its task, from the daemon's `created`: a call that made its
    own request id (none given) and has no key did, even when the daemon says the id was
    known. No one else knows that id: the daemon knew it from this call's own earlier
    copy, committed but answered too late (the client then sent it again). A key in
    use could be another task's, and a request id given may be another call's: for
    those the daemon's word stands."""
    return created or (made_rid and not keyed)


class TaskId(int):
    """A task's id; `.created` says whether this call created it (False: a known
    request_id or a key in use returned the existing task). A call that gives its own
    request_id learns False also when the daemon knew that id from this very call's
    earlier copy, whose reply was lost (or from an earlier call that raised
    DaemonUnavailable); a call that makes its request id (the default) and has no
    key is told True then (made_here). `.warning` is the daemon's
    word when no connected worker would run it ("no connected worker handles
    'resize'": a typo, or no worker started for that name or queue), else None."""

    created: bool = True
    warning: str | None = None

    def __new__(cls, value: int, created: bool = True, warning: str | None = None) -> TaskId:
        obj = super().__new__(cls, value)
        obj.created = created
        obj.warning = warning
        return obj


class ScheduleId(str):
    """A schedule's id ("s3"); `.created` is False when a key named an existing schedule;
    `.warning` as for TaskId (no connected worker runs its task now)."""

    created: bool = True
    warning: str | None = None

    def __new__(cls, value: str, created: bool = True, warning: str | None = None) -> ScheduleId:
        obj = super().__new__(cls, value)
        obj.created = created
        obj.warning = warning
        return obj


def task_fields(
    task: TaskSpec,
    args: dict[str, Any] | None,
    options: dict[str, Any],
    limits: Limits,
    known: set[str] = TASK_KEYS,
) -> dict[str, Any]:
    """A task's fields for a request: its name or dict, `options` (request_id popped from
    them, made here when missing), its args checked (`limits`)."""
    if isinstance(task, str):
        fields: dict[str, Any] = {"name": task}
    elif isinstance(task, dict):
        unknown = set(task) - known
        if unknown:
            raise BadInput(
                f"unknown task field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
            )
        fields = dict(task)
    else:
        raise BadInput(f"task must be a name or a dict with a 'name', not {type(task).__name__}")
    request_id = options.pop("request_id", None) or new_request_id()
    unknown = set(options) - known
    if unknown:
        raise BadInput(f"unknown option(s) {', '.join(sorted(unknown))}")
    fields.update({k: v for k, v in options.items() if v is not None})
    if "time_limit" in fields:  # the name the CLI uses (--time-limit); "timeout" on the wire
        limit = fields.pop("time_limit")
        if fields.get("timeout") is not None and limit is not None and fields["timeout"] != limit:
            raise BadInput(f"time_limit={limit!r} and timeout={fields['timeout']!r} disagree; give one")
        if limit is not None:
            fields["timeout"] = limit
    check_name(fields.get("name"), limits)
    fields["args"] = check_args(args, limits)
    fields["request_id"] = str(request_id)
    return fields


def read_run_at(fields: dict[str, Any], default_tz: str) -> None:
    """English, a datetime or a delay in `run_at`, read in the task's zone, to a UTC
    timestamp: time is read here, never in the daemon's loop."""
    tz = fields.pop("timezone", None) or default_tz
    if fields.get("run_at") is not None:
        now = when.utcnow()
        due = when.parse_when(fields["run_at"], now, tz)
        when.warn_if_past(due, now, f"run_at {fields['run_at']!r}")
        fields["run_at"] = due.timestamp()


def unconfirmed(exc: DaemonUnavailable, what: str, request_id: str, same: str = "") -> DaemonUnavailable:
    """The error of a call that creates something and got no answer: it may be in all the
    same (the daemon may have committed it, or may read a copy of it when it resumes)."""
    return DaemonUnavailable(
        f"{exc}; {what} may have been accepted all the same: call again with {same}"
        f"request_id={request_id!r}, which never creates anything twice",
        request_id=request_id,
    )
