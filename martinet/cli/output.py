"""What the commands print: JSON or text, tables' shared parts, event lines; and the log's format."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from martinet import logs
from martinet.states import TaskState


def add_logging_options(parser: argparse.ArgumentParser, level: str, form: str) -> None:
    """--log-level and --log-format, as `serve` and `martinet-worker` take them."""
    parser.add_argument("--log-level", help=f"DEBUG, INFO, WARNING or ERROR (default: {level})")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, help=f"log lines as text or JSON (default: {form})"
    )


def setup_logging(level: str, form: str = "text") -> None:
    """Log at `level` to stderr, in text or JSON lines (martinet/logs.py)."""
    logs.setup(level, form)


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else human)


def warn_submitted(warning: str | None) -> None:
    """The daemon's warning about what was just submitted, on stderr (stdout stays the answer)."""
    if warning:
        print(f"martinet: warning: {warning}; it waits until one connects", file=sys.stderr)


STATE_ORDER = tuple(state.value for state in TaskState)  # a task's life, in order


def counts_text(counts: dict[str, int]) -> str:
    order = {state: i for i, state in enumerate(STATE_ORDER)}
    states = sorted(counts, key=lambda state: (order.get(state, len(order)), state))
    return " ".join(f"{state}={counts[state]}" for state in states if counts[state]) or "-"


def event_line(e: dict) -> str:
    """One event as `martinet watch` prints it."""
    kind = e.get("event")
    head = f"{e.get('at', '')} #{e.get('event_id', '-')} {kind}"
    if kind == "gap":
        return f"{head}: events after #{e.get('since')} are no longer kept (oldest kept #{e.get('first')})"
    if kind == "malformed":
        more = f"; {e['suppressed']} more before it not recorded" if e.get("suppressed") else ""
        where = (
            f" on the {e['socket']} socket from {e['peer']} ({e['size']} bytes)" if e.get("socket") else ""
        )
        return f"{head}: {e.get('why')}{where}{more}"
    task = f"{head} task {e.get('id')} {e.get('name')}"
    if e.get("attempt"):
        task += f" attempt {e['attempt']}"
    error = e.get("error") or {}
    if kind == "progress":
        value = e.get("progress")
        detail = " ".join(
            x for x in (f"{value:.0%}" if isinstance(value, float | int) else "", e.get("message") or "") if x
        )
    elif kind == "succeeded":
        detail = f"-> {json.dumps(e.get('result'), default=str)[:200]}"
    elif kind in ("failed", "dead"):
        detail = f"{error.get('type')}: {error.get('message')}"[:300]
        if kind == "failed":
            detail += f"; retry at {e.get('run_at')}"
    else:
        detail = e.get("reason") or ""
    return f"{task}: {detail}" if detail else task
