"""How the daemon and workers log: a text line a record (the default), or one JSON
object a line (`--log-format json`, `log_format = "json"`) for a log pipeline. A line
about one task's attempt carries its task id, name, attempt and worker as fields of
their own (`log.info(..., extra=about(...))`); a text line says them in its message."""

from __future__ import annotations

import json
import logging
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
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def setup(level: str, form: str = "text") -> None:
    """Log at `level` to stderr, as text lines or JSON lines (`form`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if form == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
