"""Finding tasks: the filters of a search, checked, and its page cursor (pure).

A search arrives from a client as a map of filters (see FILTERS), a sort, a
page size and maybe a cursor. `check_search` turns it into a `Search` the
store can run, refusing anything it cannot read with a `BadInput` that quotes
it; the store builds the SQL. Times arrive as UTC timestamps: the client reads
English ("2 hours ago") with `when.parse_when`, never the daemon's loop.

Pages are keyset pages: rows are ordered by (sort column, id), newest first,
and a cursor holds the (value, id) of the last row shown, so a page starts
strictly after it whatever was inserted meanwhile. A cursor is opaque text
(base64 of a small JSON object with a checksum): an edited or truncated one
is refused, never misread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from martinet.errors import BadInput
from martinet.validate import is_id, parse_ref

FILTERS = (
    "status",
    "name",
    "queue",
    "username",
    "key",
    "schedule",
    "text",
    "error",
    "since",
    "until",
    "time",
    "where",
)
TIMES = ("created", "due", "finished")  # the times a range or a sort can apply to
MAX_LIMIT = 10_000  # rows in one page
MAX_WHERE = 16  # payload conditions in one search
MAX_DEPTH = 8  # levels of a payload path
MAX_TEXT = 1000  # characters of a filter's text
# A payload path is made of object keys like these: safe to write into SQL as
# literals (which lets an expression index on that path serve the search).
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CURSOR_VERSION = 1

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Search:
    """What to find; empty fields do not filter. `where` holds (path, value) pairs."""

    statuses: tuple[str, ...] = ()
    name: str | None = None
    name_prefix: str | None = None  # "resize.*" finds names starting with "resize."
    queue: str | None = None
    username: str | None = None
    key: str | None = None
    schedule_id: int | None = None
    text: str | None = None  # in the description, ignoring case
    error: str | None = None  # the type of the last error, like "TimeoutError"
    since: float | None = None  # the `time` of the task is at or after this
    until: float | None = None  # ... and before this
    time: str = "created"
    where: tuple[tuple[tuple[str, ...], Scalar], ...] = ()
    sort: str = "created"
    after: tuple[float, int] | None = None  # the (sort value, id) of the last row already seen


@dataclass(frozen=True)
class Page:
    """One page of a search: its tasks, and `next`, the cursor of the page after it
    (pass it as `after=`), or None when this is the last page."""

    items: list[dict[str, Any]]
    next: str | None


def check_filter_names(filters: Any) -> dict[str, Any]:
    """The filters map itself: a dict whose keys are all known filters."""
    if not isinstance(filters, dict):
        raise BadInput(f"filters must be a map of filter names to values, not {_show(filters)}")
    unknown = sorted((k for k in filters if k not in FILTERS), key=str)
    if unknown:
        raise BadInput(f"unknown filter {_show(unknown[0])}; filters are {', '.join(FILTERS)}")
    return filters


def check_search(h: dict[str, Any]) -> tuple[Search, int]:
    """A list request's filters, sort, cursor and page size, checked."""
    filters = check_filter_names(h.get("filters") or {})
    sort = _choice(h.get("sort"), "sort", TIMES)
    name = _text(filters, "name")
    search = Search(
        statuses=_statuses(filters.get("status")),
        name=None if name is None or name.endswith("*") else name,
        name_prefix=name[:-1] if name is not None and name.endswith("*") else None,
        queue=_text(filters, "queue"),
        username=_text(filters, "username"),
        key=_text(filters, "key"),
        schedule_id=_schedule(filters.get("schedule")),
        text=_text(filters, "text"),
        error=_text(filters, "error"),
        since=_timestamp(filters, "since"),
        until=_timestamp(filters, "until"),
        time=_choice(filters.get("time"), "time", TIMES),
        where=check_where(filters.get("where")),
        sort=sort,
        after=None if h.get("after") is None else decode_cursor(h["after"], sort),
    )
    if search.since is not None and search.until is not None and search.since >= search.until:
        since, until = (datetime.fromtimestamp(t, UTC).isoformat() for t in (search.since, search.until))
        raise BadInput(f"since ({since}) is not before until ({until}): no task can match; swap them?")
    return search, _limit(h.get("limit", 50))


def _show(value: Any) -> str:
    """A value as an error message quotes it: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if value is None:
        return choices[0]
    if value not in choices:
        raise BadInput(f"unknown {what} {_show(value)}; choose {', '.join(choices)}")
    return value


def _limit(value: Any) -> int:
    if not is_id(value) or not 1 <= value <= MAX_LIMIT:
        raise BadInput(f"limit must be an integer from 1 to {MAX_LIMIT}, got {_show(value)}")
    return value


def _text(filters: dict, key: str) -> str | None:
    value = filters.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or "\x00" in value:
        raise BadInput(f"{key} must be text of 1 to {MAX_TEXT} characters, got {_show(value)}")
    return value


def _statuses(value: Any) -> tuple[str, ...]:
    from martinet.models import STATES  # here: clients import this module without peewee

    if value is None or value == []:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise BadInput(f"status must be a state or a list of states, got {_show(value)}")
    for status in items:
        if status not in STATES:
            raise BadInput(f"unknown status {_show(status)}; states are {', '.join(STATES)}")
    return tuple(dict.fromkeys(items))


def _schedule(value: Any) -> int | None:
    if value is None:
        return None
    try:
        _kind, num = parse_ref(value)  # "s7", or plainly 7
    except BadInput:
        raise BadInput(f"schedule must be a schedule id like s7, got {_show(value)}") from None
    return num


def _timestamp(filters: dict, key: str) -> float | None:
    value = filters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput(f"{key} must be a UTC timestamp in seconds, got {_show(value)}")
    return float(value)


# ---- payload conditions ------------------------------------------------------------


def parse_where(text: str) -> tuple[str, Scalar]:
    """`--where user.email=ana@example.com` -> ("user.email", "ana@example.com").

    The value is read as JSON when it is a JSON scalar (7, 2.5, true, false,
    null, "7"), else taken as plain text.
    """
    field, sep, raw = text.partition("=")
    if not sep or not field.strip():
        raise BadInput(f"--where {_show(text)} must look like FIELD=VALUE, e.g. image_id=7")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to be a scalar anyway
        return field.strip(), raw
    if isinstance(value, (dict, list)):
        return field.strip(), raw
    return field.strip(), value


def check_where(where: Any) -> tuple[tuple[tuple[str, ...], Scalar], ...]:
    """Payload conditions as (path, value) pairs, from a map whose keys are paths
    ("user.email") or whose values nest ({"user": {"email": ...}})."""
    if where is None:
        return ()
    if not isinstance(where, dict):
        raise BadInput(f"where must be a map of payload fields to values, not {_show(where)}")
    pairs: list[tuple[tuple[str, ...], Scalar]] = []
    _flatten(where, (), pairs)
    if len(pairs) > MAX_WHERE:
        raise BadInput(f"where has {len(pairs)} conditions, over the limit of {MAX_WHERE}")
    return tuple(pairs)


def _flatten(where: dict, prefix: tuple[str, ...], out: list) -> None:
    for field, value in where.items():
        if not isinstance(field, str):
            raise BadInput(f"where field {_show(field)} must be text")
        path = (*prefix, *field.split("."))
        bad = next((seg for seg in path if not _SEGMENT.fullmatch(seg)), None)
        if bad is not None or len(path) > MAX_DEPTH:
            raise BadInput(
                f"where field {_show('.'.join(path))} is not a payload path: up to {MAX_DEPTH} keys "
                f"of letters, digits, _ and -, joined by dots (like user.email)"
            )
        if isinstance(value, dict) and value:
            _flatten(value, path, out)
        else:
            out.append((path, _scalar(".".join(path), value)))


def _scalar(field: str, value: Any) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise BadInput(f"where {field}: {value} is too large to compare")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadInput(f"where {field}: {value} is not a number JSON can hold")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT or "\x00" in value:
            raise BadInput(f"where {field}: the text {_show(value)} is too long or holds NUL")
        return value
    raise BadInput(f"where {field} must equal a string, number, true, false or null, not {_show(value)}")


# ---- cursors ---------------------------------------------------------------------


def encode_cursor(sort: str, value: float, task_id: int) -> str:
    """An opaque cursor for the page after the row (value, task_id) of a `sort` listing."""
    body = {"v": _CURSOR_VERSION, "s": sort, "k": value, "i": task_id}
    body["c"] = _checksum(body)
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: Any, sort: str) -> tuple[float, int]:
    """The (sort value, id) a cursor holds; BadInput if it was altered or belongs to another sort."""
    refused = BadInput(
        f"cursor {_show(cursor)} was altered or is not a martinet cursor; "
        f"pass the `next` value of the previous page as is"
    )
    if not isinstance(cursor, str) or not 0 < len(cursor) <= 200:
        raise refused
    try:
        body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error):
        raise refused from None
    if not isinstance(body, dict) or set(body) != {"v", "s", "k", "i", "c"}:
        raise refused
    check = body.pop("c")
    if check != _checksum(body) or body["v"] != _CURSOR_VERSION:
        raise refused
    value, task_id = body["k"], body["i"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not is_id(task_id):
        raise refused
    if body["s"] != sort:
        raise BadInput(
            f"cursor {_show(cursor)} continues a listing sorted by {body['s']}, not {sort}; "
            f"give the same sort as for the first page"
        )
    return float(value), task_id


def _checksum(body: dict) -> str:
    """Catches edits and copy-paste accidents; not a secret (a cursor grants nothing)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(b"martinet cursor\x00" + text.encode()).hexdigest()[:16]
