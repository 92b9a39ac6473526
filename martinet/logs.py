"""How the daemon and workers log: a text line a record (the default), or one JSON
object a line (`--log-format json`, `log_format = "json"`) for a log pipeline. A line
about one task's attempt carries its task id, name, attempt and worker as fields of
their own (`log.info(..., extra=about(...))`); a text line says them in its message.

What a line says is part of the interface, and so is what it does not: a task's args, result
and error (its message and traceback) often hold tokens and personal data, so a line at
INFO or above says their type and size only (`told`, `size`); the text itself is logged at
DEBUG. Whatever a line says, the handlers `setup` installs mask what is a secret anyway
(`Secrets`): a password in a database URL or connection string, a CURVE secret key, and
the parameters of the SQL statements peewee logs at DEBUG (a task's args among them)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = ("task_id", "task_name", "attempt", "worker", "queue")  # what about() may set


def about(
    task_id: int, name: str | None = None, attempt: int | None = None, worker: str | None = None
) -> dict[str, Any]:
    """The fields of a line about one task's attempt, for a logging call's `extra`."""
    fields = {"task_id": task_id, "task_name": name, "attempt": attempt, "worker": worker}
    return {key: value for key, value in fields.items() if value is not None}


class JsonLines(logging.Formatter):
    """A record as one JSON object: time (ISO 8601, UTC), level, logger, message, the
    task's fields when the line is about one, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # (as masked by Secrets, when it was)
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def size(value: Any) -> int:
    """Bytes of a value, for a line that says its size in its place: a text's in UTF-8,
    anything else's as JSON (as the wire carries args and results)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    try:
        return len(json.dumps(value, separators=(",", ":"), default=str).encode())
    except (TypeError, ValueError, RecursionError):
        return len(str(value).encode("utf-8", "replace"))


def told(error: Any) -> str:
    """A task's error as a line at INFO or above says it: its type and the size of its
    message and traceback, never their text ("ValueError (312 bytes of error)")."""
    if not isinstance(error, dict) or not error.get("type"):
        return "no error"
    text = sum(size(error[key]) for key in ("message", "traceback") if isinstance(error.get(key), str))
    return f"{error['type']} ({text} bytes of error)"


# What Secrets masks. Z85 (ZeroMQ's encoding of CURVE keys) writes a 32-byte key in 40 of these.
Z85 = r"0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#"
MASKS = (
    # scheme://user:PASSWORD@host (a password holds no /, @ or space unless percent-encoded)
    ("://", re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)[^\s/@]+@"), r"\1***@"),
    # password=... in a libpq connection string, a keyword argument or a query string
    ("pass", re.compile(r"(?i)(\bpass(?:word|wd)?\s*=\s*)('[^']*'|\"[^\"]*\"|[^\s,;&)]+)"), r"\1***"),
    # 'password': '...' in a repr of connection parameters
    ("pass", re.compile(r"(?i)(['\"]pass(?:word|wd)?['\"]\s*:\s*)('[^']*'|\"[^\"]*\")"), r"\1'***'"),
    # a CURVE secret key after the word "secret" (a key file's secret-key = "...", a flag, a
    # field): 40 characters of Z85 standing alone, or after = or :
    (
        "secret",
        re.compile(rf"(?i)(secret[^\n]{{0,32}}?(?:(?<![{Z85}])|(?<=[=:])))[{Z85}]{{40}}(?![{Z85}])"),
        r"\1***",
    ),
)


def mask(text: str) -> str:
    """`text` with what looks like a secret (MASKS) as ***."""
    lowered = text.lower()
    for hint, pattern, replacement in MASKS:
        if hint in lowered:
            text = pattern.sub(replacement, text)
    return text


class Secrets(logging.Filter):
    """On a handler, a filter that lets every record through with its secrets masked: the
    message and traceback of any logger's record (mask), and the parameters of the SQL
    statements peewee logs at DEBUG, replaced by their count and size."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "peewee" and isinstance(record.msg, tuple) and len(record.msg) == 2:
            sql, params = record.msg
            count = len(params) if isinstance(params, (list, tuple, dict)) else int(params is not None)
            record.msg, record.args = "%s -- %d parameter(s), %d bytes", (sql, count, size(params))
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - the handler's emit reports a record it cannot format
            return True
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def setup(level: str, form: str = "text") -> None:
    """Log at `level` to stderr, as text lines or JSON lines (`form`), secrets masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if form == "json" else logging.Formatter(TEXT))
    handler.addFilter(Secrets())
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


class Once:
    """Keys whose line was logged: `first(key)` is True the first time only. Bounded: past
    `most` keys it forgets them all (a line may then be said again), so memory stays flat."""

    def __init__(self, most: int = 10_000) -> None:
        self.most = most
        self._seen: set[Any] = set()

    def first(self, key: Any) -> bool:
        if key in self._seen:
            return False
        if len(self._seen) >= self.most:
            self._seen.clear()
        self._seen.add(key)
        return True
