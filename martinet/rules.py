"""The rules on names and limits that several places check, each stated once, with the
message a user sees: a config file and the CLI (early, friendly errors) and the client
API and the daemon (the authority) import them from here.

Each check raises BadInput by default: that is the class a refused request carries over
the wire. Settings and flags pass `error=ConfigError` (what `config` raises): the same rule
and message, in the class a caller of `config.load` expects.
"""

from __future__ import annotations

import math
from typing import Any

from martinet.errors import BadInput, MartinetError

MAX_QUEUE_NAME = 255  # characters; the queue column's width
DEFAULT_QUEUE = "default"  # the queue of a task that names none
QUEUE_ORDERS = ("fifo", "random")  # which waiting task of a queue goes first
# The most a queue's concurrency or weight may be: far beyond any fleet, and small enough
# that the daemon's arithmetic on slots and shares stays in plain integers.
MAX_QUEUE_LIMIT = 1_000_000
MAX_ATTEMPTS = 1000  # attempts a task may be given (max_attempts, retry --attempts)

Error = type[MartinetError]


def _shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut to 60 characters."""
    if isinstance(value, str):
        return repr(value[:60]) + ("..." if len(value) > 60 else "")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _queue_name_fault(name: Any) -> str | None:
    """What is wrong with `name` as a queue name, as "X is not a queue name" needs it; None if nothing."""
    if not isinstance(name, str):
        return f"a value of type {type(name).__name__}"
    if not name:
        return "an empty string"
    if len(name) > MAX_QUEUE_NAME:
        return f"text of {len(name)} characters"
    if not name.isprintable():  # a control character, or any space but " " (none is printable)
        return "text with an unprintable character"
    if " " in name:
        return "text with a space"
    return None


def check_queue_name(name: Any, error: Error = BadInput) -> str:
    """A queue name: 1 to 255 printable characters without spaces."""
    fault = _queue_name_fault(name)
    if fault is not None:
        raise error(
            f"queue name {_shown(name)} refused: {fault} is not a queue name "
            f"(1 to {MAX_QUEUE_NAME} printable characters, no spaces)"
        )
    return name


def is_count(value: Any, most: int | None = None) -> bool:
    """A whole number of 1 or more (and at most `most`): a concurrency, a weight, a liveness."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= 1
        and (most is None or value <= most)
    )


def check_count(
    value: Any,
    what: str,
    *,
    most: int | None = None,
    clears: bool = False,
    whole: bool = True,
    error: Error = BadInput,
) -> int:
    """`value` if is_count(value, most), else `error` naming `what`. `clears`: "none" also
    means no limit (said in the message); `whole=False` leaves out "a whole number of",
    for a flag argparse already made one."""
    if is_count(value, most):
        return value
    if is_count(value):  # over `most`
        raise error(f"{what} must be at most {most:,}, got {value!r}")
    rule = ("a whole number of " if whole else "") + "1 or more" + (" ('none' clears it)" if clears else "")
    raise error(f"{what} must be {rule}, got {_shown(value)}")


def means_none(value: Any) -> bool:
    """ "none" given for a limit (a queue's concurrency or rate): no limit."""
    return isinstance(value, str) and value.strip().lower() == "none"


def is_seconds(value: Any) -> bool:
    """A positive, finite number of seconds: a timeout, a lease, an interval, a backoff."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def check_seconds(value: Any, what: str, error: Error = BadInput) -> float:
    if not is_seconds(value):
        raise error(f"{what} must be a positive number of seconds, got {_shown(value)}")
    return float(value)


def check_event_id(value: Any, what: str = "since") -> int | None:
    """Where a client's events start (None: from now): an event id, 0 or more."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise BadInput(f"{what} must be an event id (a whole number of 0 or more), got {_shown(value)}")
    return value


def check_attempts(value: Any, what: str) -> int | None:
    """A task's attempts (max_attempts at submit, attempts at retry): 1 to MAX_ATTEMPTS, or None."""
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPTS
    ):
        raise BadInput(f"{what} must be an integer from 1 to {MAX_ATTEMPTS}, got {_shown(value)}")
    return value
