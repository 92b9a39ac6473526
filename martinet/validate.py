"""Checks on what a client submits, shared by the client (early, friendly errors)
and the daemon (the authority). Each failure names the field and the limit."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, TypeGuard, overload

from martinet import recurring, rules, when
from martinet.config import Settings
from martinet.errors import BadInput, BadSchedule
from martinet.protocol import MAX_VALUE_DEPTH, deeper_than


@dataclass(frozen=True)
class Limits:
    """The settings that bound what one request may carry (their defaults are Settings')."""

    max_payload: int = Settings.max_payload
    max_name_length: int = Settings.max_name_length
    min_interval: float = Settings.min_interval  # seconds: the shortest interval a schedule may have


def check_name(name: Any, limits: Limits) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BadInput("task name must be a non-empty string")
    if len(name) > limits.max_name_length:
        raise BadInput(
            f"task name is {len(name)} characters long, over the limit of "
            f"{limits.max_name_length} (max_name_length)"
        )
    if not name.isprintable():
        raise BadInput(f"task name {name[:40]!r} contains control characters")
    return name


@overload
def clean_text(value: None, max_len: int) -> None: ...
@overload
def clean_text(value: str, max_len: int) -> str: ...
@overload
def clean_text(value: Any, max_len: int) -> str | None: ...
def clean_text(value: Any, max_len: int) -> str | None:
    """Text from a worker, made safe to store: a string, no NUL (PostgreSQL refuses it), bounded."""
    if value is None:
        return None
    return str(value).replace("\x00", "")[:max_len]


# What is kept of an error a handler raised: the daemon stores no more, the worker sends
# no more (it cuts first, with a note, so that what is cut is said and a traceback keeps
# its end, where the exception was raised).
MAX_ERROR_MESSAGE = 10_000  # characters
MAX_TRACEBACK = 100_000  # characters


def cut_end(text: str, max_len: int) -> str:
    """`text` in at most `max_len` characters, its start kept and a note of what was cut."""
    if len(text) <= max_len:
        return text
    width = len(f" [... {len(text)} characters cut]")  # the note's length at most
    kept = max(0, max_len - width)
    return text[:kept] + f" [... {len(text) - kept} characters cut]"


def keep_end(text: str, max_len: int) -> str:
    """`text` in at most `max_len` characters, its end kept (a traceback's last lines
    name the exception and where it was raised) below a line saying what was cut."""
    if len(text) <= max_len:
        return text
    width = len(_CUT_START.format(len(text)))  # the note's length at most
    kept = max(0, max_len - width)
    return _CUT_START.format(len(text) - kept) + text[len(text) - kept :]


_CUT_START = "[{} characters cut from the start of this traceback]\n"


def clean_tail(value: Any, max_len: int) -> str | None:
    """clean_text for a traceback: a longer one keeps its end (see keep_end)."""
    if value is None:
        return None
    return keep_end(str(value).replace("\x00", ""), max_len)


def is_worker_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()


# NaN and Infinity are not JSON: the databases' JSON functions would refuse the row. One
# encoder for every call: json.dumps with an option makes a new one each time (~1 us).
_STRICT_JSON = json.JSONEncoder(allow_nan=False)
_TOO_DEEP = f"args nest lists and dicts more than {MAX_VALUE_DEPTH} levels deep (the limit)"


def check_args(args: Any, limits: Limits) -> dict:
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise BadInput(f"args must be a JSON object (a dict), not {type(args).__name__}")
    try:
        text = _STRICT_JSON.encode(args)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"args cannot be written as JSON: {exc}") from None
    except RecursionError:
        raise BadInput(_TOO_DEEP) from None
    if len(text) > limits.max_payload:
        raise BadInput(
            f"args are {len(text)} bytes as JSON, over the limit of {limits.max_payload} (max_payload)"
        )
    if deeper_than(text.encode(), MAX_VALUE_DEPTH):  # see MAX_VALUE_DEPTH for why
        raise BadInput(_TOO_DEEP)
    return args


def _optional_text(h: dict, key: str, max_len: int = 10_000) -> str | None:
    value = h.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise BadInput(f"{key} must be a string of at most {max_len} characters")
    if "\x00" in value:
        raise BadInput(f"{key} must not contain NUL characters")
    return value


def _optional_int(h: dict, key: str, low: int, high: int) -> int | None:
    value = h.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInput(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_task(h: dict, limits: Limits, default_max_attempts: int) -> dict[str, Any]:
    """A submit request's fields, checked; returns the spec the store inserts."""
    run_at = h.get("run_at")
    if run_at is not None and (isinstance(run_at, bool) or not isinstance(run_at, (int, float))):
        raise BadInput("run_at must be a UTC timestamp in seconds")
    max_attempts = rules.check_attempts(h.get("max_attempts"), "max_attempts")
    return {
        "name": check_name(h.get("name"), limits),
        "args": check_args(h.get("args"), limits),
        "username": _optional_text(h, "username", 255),
        "description": _optional_text(h, "description"),
        "queue": None if h.get("queue") is None else rules.check_queue_name(h["queue"]),
        "priority": _optional_int(h, "priority", -1_000_000, 1_000_000) or 0,
        "max_attempts": max_attempts or default_max_attempts,
        "run_at": float(run_at) if run_at is not None else None,
        "request_id": _optional_text(h, "request_id", 64),
        "timeout": _optional_positive(h, "timeout"),
        "key": _optional_key(h),
        "unique": _unique_mode(h),
        "after": _after(h),
        "retry_base": _optional_positive(h, "retry_base"),
        "retry_factor": _optional_positive(h, "retry_factor"),
        "retry_cap": _optional_positive(h, "retry_cap"),
    }


UNIQUE_MODES = ("active", "always")


def _optional_key(h: dict) -> str | None:
    key = h.get("key")
    if key is None:
        return None
    if not isinstance(key, str) or not 0 < len(key) <= 255 or not key.isprintable():
        raise BadInput(f"key must be printable text of 1 to 255 characters, got {str(key)[:60]!r}")
    return key


def _unique_mode(h: dict) -> str:
    mode = h.get("unique") or "active"
    if mode not in UNIQUE_MODES:
        raise BadInput(f"unique must be 'active' or 'always', not {str(mode)[:40]!r}")
    return mode


def _after(h: dict) -> list[int]:
    after = h.get("after") or []
    if isinstance(after, int) and not isinstance(after, bool):
        after = [after]
    if (
        not isinstance(after, list)
        or len(after) > 1000
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i < 2**63 for i in after)
    ):
        raise BadInput(f"after must be a list of task ids, got {str(after)[:60]}")
    return sorted(set(after))


def _optional_positive(h: dict, key: str) -> float | None:
    value = h.get(key)
    return None if value is None else rules.check_seconds(value, key)


def check_every(h: dict, limits: Limits, default_tz: str) -> tuple[dict[str, Any], when.Recurrence]:
    """An `every` request: a task spec plus a recurrence the daemon can compute."""
    spec = check_task(h, limits, 1)
    spec["max_attempts"] = rules.check_attempts(h.get("max_attempts"), "max_attempts")
    if spec.pop("after"):
        raise BadInput("a schedule cannot wait on other tasks (after); its runs start on their due times")
    if h.get("unique"):
        raise BadInput("unique applies to tasks; a schedule's key always names one schedule")
    tz = when.check_timezone(h.get("timezone") or default_tz)
    every = h.get("every")
    if not isinstance(every, (str, int, float)) or isinstance(every, bool):
        raise BadInput("every must be an interval like '30 minutes' or a cron expression")
    recurrence = when.parse_every(every, tz, limits.min_interval)
    misfire = h.get("misfire") or "once"
    if misfire not in recurring.POLICIES:
        raise BadSchedule(f"misfire policy must be one of {', '.join(recurring.POLICIES)}, not {misfire!r}")
    spec.update(
        kind=recurrence.kind,
        spec=recurrence.spec,
        timezone=tz,
        first_due=_optional_timestamp(h, "first_due"),
        until=_optional_timestamp(h, "until"),
        count=_optional_int(h, "count", 1, 1_000_000_000),
        misfire=misfire,
        misfire_grace=_optional_seconds(h, "misfire_grace"),
    )
    return spec, recurrence


def _optional_timestamp(h: dict, key: str) -> float | None:
    value = h.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{key} must be a UTC timestamp in seconds")
    return float(value)


def _optional_seconds(h: dict, key: str) -> float | None:
    value = h.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise BadInput(f"{key} must be a number of seconds, zero or more, got {value!r}")
    return float(value)


def is_rate(value: Any) -> TypeGuard[list[Any]]:
    """A rate as a worker sends it: [count, period seconds]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and rules.is_count(value[0], MAX_ID)
        and rules.is_seconds(value[1])
    )


MAX_ID = 2**63 - 1  # the largest id any of our databases can hold


def is_id(value: Any) -> TypeGuard[int]:
    """A whole number the database can hold (task ids, attempt numbers)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


def finite(value: Any) -> float | None:
    """A finite float, or None for anything else (JSON allows NaN and Infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def parse_ref(ref: Any) -> tuple[str, int]:
    """42 or "42" is a task; "s7" is a schedule."""
    kind, num = None, None
    if is_id(ref):
        kind, num = "task", ref
    elif isinstance(ref, str) and len(ref) <= 20:
        text = ref.strip()
        if text.isdigit():
            kind, num = "task", int(text)
        elif text[:1] in ("s", "S") and text[1:].isdigit():
            kind, num = "schedule", int(text[1:])
    if kind is None or not is_id(num):
        raise BadInput(f"{str(ref)[:40]!r} is not a task id (like 42) or a schedule id (like s7)")
    return kind, num
