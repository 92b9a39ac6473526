"""One error hierarchy, rooted in MartinetError, with messages a user can act on.

Control-flow signals raised by handlers (Retry, Fail) are not errors and stand
apart from the hierarchy.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from martinet.submit import TaskId


class MartinetError(Exception):
    """Base class of every error martinet raises on purpose.

    One raised by `execute_many` also has `accepted`, the ids of the tasks committed
    all the same, and `request_id`, the one to call again with (see execute_many).
    """

    # Declared for the type checker only: set on the errors execute_many raises.
    accepted: list[TaskId]
    request_id: str | None


class ConfigError(MartinetError):
    """A setting is missing, unreadable or out of range."""


class BadInput(MartinetError):
    """A request was refused because something in it is invalid."""


class Forbidden(MartinetError):
    """A request the daemon refused for who sent it: the key it came with has no role that
    may make it (an admin's request from a client's key, say)."""


class Busy(MartinetError):
    """The daemon refused a request because its connection sent more a second than the
    daemon's peer_rate allows: slow down, or spread the calls over more connections."""


class BadTime(BadInput):
    """A time expression could not be read, or reads as something unintended."""


class BadSchedule(BadInput):
    """A recurrence (interval or cron expression) could not be read."""


class TaskNotFound(BadInput):
    """No task or schedule has the given id."""


class JournalError(MartinetError):
    """A worker's journal is in use by another worker, unreadable or cannot be written."""


class DaemonUnavailable(MartinetError):
    """The daemon did not answer within the timeout.

    `request_id` is the id of the request that went unanswered (None when none was
    sent). The daemon may have carried it out all the same: a call that creates a
    task or schedule, made again with `request_id=exc.request_id`, returns the one
    that request created, if it did, and never creates a second.
    """

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class ProtocolError(MartinetError):
    """A frame could not be decoded; carries the raw bytes for the log."""

    def __init__(self, message: str, raw: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.raw = raw or []


class StoreError(MartinetError):
    """The database refused an operation or could not be reached."""


class SchemaTooNew(StoreError):
    """The database was upgraded by a newer martinet than this one: refused, not guessed at."""


class TaskFailed(MartinetError):
    """A task ended without success (dead or cancelled); `info` holds its record."""

    def __init__(self, message: str, info: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.info = info or {}

    @classmethod
    def of(cls, info: dict[str, Any]) -> TaskFailed:
        """The error of a task that ended as its record `info` says (not succeeded)."""
        error = info.get("error") or {}
        detail = f": {error.get('type')}: {error.get('message')}" if error else ""
        return cls(f"task {info['id']} {info['name']} ended {info['status']}{detail}", info)


class WaitTimeout(MartinetError):
    """`wait()` gave up before the task reached an end. `status` is the task's state then
    and `waiting` why it had not ended, as `show` says it ("no connected worker handles
    'resize'"), when the daemon said so."""

    def __init__(self, message: str, status: str | None = None, waiting: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.waiting = waiting


class StepFailed(MartinetError):
    """A step of a composed task raised; chained (`__cause__`) to what it raised.

    `index` and `total` give its position (1-based), `step` its name.
    """

    def __init__(self, message: str, index: int = 0, total: int = 0, step: str = "") -> None:
        super().__init__(message)
        self.index = index
        self.total = total
        self.step = step


# ---- control-flow signals raised by handlers (not errors) ----


class Retry(Exception):
    """Raise in a handler to ask for another attempt, optionally after a delay."""

    def __init__(self, in_: float | timedelta | None = None, message: str = "") -> None:
        super().__init__(message or "retry requested")
        if isinstance(in_, timedelta):
            in_ = in_.total_seconds()
        self.in_seconds = in_


class Fail(Exception):
    """Raise in a handler to fail the task for good, without further attempts."""


class Release(Exception):
    """Raise in a handler to give the task back: it returns to its queue (after
    `in_` seconds), no attempt is spent, and its release count goes up."""

    def __init__(self, reason: str = "", in_: float | timedelta | None = None) -> None:
        super().__init__(reason or "released")
        if isinstance(in_, timedelta):
            in_ = in_.total_seconds()
        self.in_seconds = in_


class TaskTimeout(BaseException):
    """Raised inside a handler that ran past its `timeout`.

    A BaseException, like KeyboardInterrupt, so that a handler's broad
    `except Exception` does not swallow it.
    """
