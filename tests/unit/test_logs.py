"""`--log-format json`: one JSON object a line, with a task's id, name, attempt and worker
as fields where a line is about one (martinet/logs.py)."""

from __future__ import annotations

import json
import logging

import pytest

import martinet
from martinet.config import Settings, check
from martinet.errors import ConfigError
from martinet.logs import JsonLines, about


def as_json(record: logging.LogRecord) -> dict:
    return json.loads(JsonLines().format(record))


def test_a_line_about_a_task_carries_its_fields_and_its_traceback():
    logger = logging.getLogger("martinet.test")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("task %s %s failed", 7, "resize", extra=about(7, "resize", 2, "w1"))
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            logger.exception("a turn failed")
    finally:
        logger.removeHandler(handler)
    line = as_json(records[0])
    assert line["message"] == "task 7 resize failed" and line["level"] == "WARNING"
    assert (line["task_id"], line["task_name"], line["attempt"], line["worker"]) == (7, "resize", 2, "w1")
    assert line["logger"] == "martinet.test" and line["time"].endswith("+00:00")
    crash = as_json(records[1])
    assert "task_id" not in crash and "ZeroDivisionError" in crash["exception"]


def test_the_daemon_and_the_worker_say_which_task_attempt_and_worker(make_live, sqlite_url, caplog):
    live = make_live(sqlite_url, log_level="INFO")
    worker = live.worker(worker_id="w-json")
    with caplog.at_level(logging.INFO, logger="martinet"):
        tid = live.m.execute({"name": "boom", "max_attempts": 1})
        with pytest.raises(martinet.TaskFailed):
            live.m.wait(tid, timeout=20)
    about_it = [as_json(r) for r in caplog.records if getattr(r, "task_id", None) == tid]
    loggers = {line["logger"] for line in about_it}
    assert {"martinet.daemon", "martinet.worker"} <= loggers, about_it
    for line in about_it:
        assert (line["task_name"], line["attempt"], line["worker"]) == ("boom", 1, worker.worker_id)


def test_a_log_format_that_is_neither_text_nor_json_is_refused():
    assert check(Settings(log_format="json")).log_format == "json"
    with pytest.raises(ConfigError, match="'log_format' must be one of text, json, got 'xml'"):
        check(Settings(log_format="xml"))
