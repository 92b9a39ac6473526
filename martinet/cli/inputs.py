"""What the commands read from their arguments: JSON args (inline, @FILE, stdin), the task
spec of execute/schedule/every, queue lists and list filters."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from martinet import config
from martinet.errors import MartinetError
from martinet.query import parse_where


def json_arg(text: str, what: str = "--args") -> dict:
    """A JSON object given on the command line; `what` names where it came from in errors."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise MartinetError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise MartinetError(f"{what} nests lists and dicts too deeply to be read") from None
    if not isinstance(value, dict):
        shown = text.strip()
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise MartinetError(f"{what} must be a JSON object like '{{\"image_id\": 7}}', not {shown!r}")
    return value


def read_args(text: str) -> dict:
    """--args: JSON itself, @FILE (read from FILE) or - (read from stdin), for args too large
    for a command line."""
    if text == "-":
        return json_arg(sys.stdin.read(), "--args from stdin")
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                content = fh.read()
        except OSError as exc:
            raise MartinetError(f"cannot read --args file {path}: {exc.strerror}") from None
        return json_arg(content, f"--args file {path}")
    return json_arg(text)


def task_spec(args: argparse.Namespace) -> dict[str, Any]:
    task = {
        "name": args.name,
        "username": args.username,
        "description": args.description,
        "priority": args.priority,
        "max_attempts": args.max_attempts,
        "time_limit": args.time_limit,
        "timezone": args.timezone,
        "queue": None if args.queue is None else config.check_queue_name(args.queue),
    }
    return {k: v for k, v in task.items() if v is not None}


def queue_list(text: str) -> list[str]:
    """--queues images,default -> ["images", "default"], each name checked."""
    names: list[str] = []
    for part in text.split(","):
        name = config.check_queue_name(part.strip())
        if name not in names:
            names.append(name)
    return names


def many_lines(path: str) -> list[dict]:
    """The args of `execute --many FILE`: one JSON object per line (blank lines skipped); a
    bad line is named by its file and number."""
    label = "stdin" if path == "-" else path
    try:
        fh = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise MartinetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return [json_arg(line, f"{label} line {n}") for n, line in enumerate(fh, 1) if line.strip()]
    finally:
        if fh is not sys.stdin:
            fh.close()


def list_filters(args: argparse.Namespace) -> dict[str, Any]:
    statuses = [s.strip() for text in args.status or [] for s in text.split(",") if s.strip()]
    where: dict[str, Any] = {}
    for text in args.where or []:
        field, value = parse_where(text)
        if field in where:
            raise MartinetError(f"--where names {field!r} twice; a field can equal one value")
        where[field] = value
    return {
        "status": statuses or None,
        "name": args.name,
        "queue": args.queue,
        "username": args.username,
        "key": args.key,
        "schedule": args.schedule,
        "text": args.text,
        "error": args.error,
        "where": where or None,
        "since": args.since,
        "until": args.until,
        "time": args.time,
    }
