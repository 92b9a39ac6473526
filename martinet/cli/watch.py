"""`martinet watch`: events live, every task's until Ctrl-C or one task's until it ends."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Callable
from typing import Any

from martinet import rules
from martinet.cli.output import event_line
from martinet.cli.parser import WATCH_KINDS
from martinet.cli.waiting import OUTCOME_EXIT, interrupted
from martinet.errors import MartinetError


def _watch_filter(args: argparse.Namespace) -> Callable[[dict], bool]:
    """Which events `watch` prints, from --name and --status, checked before connecting."""
    kinds = {k.strip() for text in args.status or [] for k in text.split(",") if k.strip()}
    unknown = sorted(kinds - set(WATCH_KINDS))
    if unknown:
        raise MartinetError(f"unknown status {unknown[0]!r} for watch; events are {', '.join(WATCH_KINDS)}")
    rules.check_event_id(args.since, "--since")
    name = args.name
    prefix = name[:-1] if name and name.endswith(".*") else None

    def wanted(event: dict) -> bool:
        kind = event.get("event")
        if kind == "gap":
            return True  # whatever the filters: the operator must know events were missed
        if kinds and kind not in kinds:
            return False
        if name is None:
            return True
        task_name = event.get("name")
        return isinstance(task_name, str) and (task_name.startswith(prefix) if prefix else task_name == name)

    return wanted


def _ended_event(item: dict) -> dict:
    """A task that had ended before `watch ID` began, told as its last event would have been."""
    return {
        "event": item["status"],
        "id": item["id"],
        "name": item["name"],
        "attempt": item.get("attempt"),
        "result": item.get("result"),
        "error": item.get("error"),
        "at": item.get("finished_at"),
    }


def cmd_watch(m, args) -> int:
    """Every event live until Ctrl-C; or, given a task, its events until it ends, then exit
    with its outcome (EXIT_CODES)."""
    from martinet.client import EventStream

    wanted = _watch_filter(args)
    task_id = None if args.task is None else m.get(args.task)["id"]  # no such task: said at once
    stop = threading.Event()
    ended: list[str] = []
    signalled = threading.Event()

    def on_signal(*_: Any) -> None:
        signalled.set()
        stop.set()

    def show(event: dict) -> None:
        if task_id is not None and event.get("event") != "gap" and event.get("id") != task_id:
            return
        if wanted(event):
            print(json.dumps(event, default=str) if args.json else event_line(event), flush=True)
        if task_id is not None and event.get("event") in OUTCOME_EXIT:
            ended.append(event["event"])
            stop.set()

    def ready(_reply: dict) -> None:
        # Subscribed: what ends from now on comes as an event. It may have ended before.
        if task_id is not None:
            item = m.get(task_id)
            if item["status"] in OUTCOME_EXIT:
                show(_ended_event(item))

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        EventStream(m.client, args.since).run(show, stop, ready)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if task_id is None:
        return 0
    if ended:
        return OUTCOME_EXIT[ended[0]]
    return interrupted([task_id]) if signalled.is_set() else 0
