"""Waiting for tasks (wait, execute --wait, watch ID) and the exit codes it ends with: a
script can tell the outcomes apart."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from martinet.cli.output import emit

EXIT_DEAD = 3  # the task failed for good (dead)
EXIT_CANCELLED = 4  # it was cancelled (revoked)
EXIT_NOT_DONE = 5  # --wait-for ran out: it is still waiting or running
EXIT_INTERRUPTED = 130  # Ctrl-C: we stopped waiting (the task goes on)
EXIT_CODES = (
    "exit codes: 0 succeeded, 1 error (no answer from the daemon, a bad input), 2 usage, "
    f"{EXIT_DEAD} dead, {EXIT_CANCELLED} cancelled, {EXIT_NOT_DONE} still running or waiting "
    f"when --wait-for ran out, {EXIT_INTERRUPTED} stopped waiting on Ctrl-C (the task goes on)"
)
OUTCOME_EXIT = {"succeeded": 0, "dead": EXIT_DEAD, "cancelled": EXIT_CANCELLED}


def outcome(m, tid: int, wait_for: float | None) -> dict[str, Any]:
    """How waiting for task `tid` ended: {"id", "status", and "result" or "error" or "waiting"}.
    KeyboardInterrupt goes up."""
    from martinet.errors import TaskFailed, WaitTimeout

    try:
        return {"id": tid, "status": "succeeded", "result": m.wait(tid, timeout=wait_for)}
    except TaskFailed as exc:
        return {"id": tid, "status": exc.info.get("status"), "error": exc.info.get("error"), "text": str(exc)}
    except WaitTimeout as exc:
        return {"id": tid, "status": exc.status, "waiting": exc.waiting, "timed_out": True, "text": str(exc)}


def exit_code(outcomes: list[dict]) -> int:
    """The worst of the outcomes: still running, then dead, then cancelled; else 0."""
    if any(o.get("timed_out") for o in outcomes):
        return EXIT_NOT_DONE
    codes = {OUTCOME_EXIT.get(o["status"], 1) for o in outcomes}
    return EXIT_DEAD if EXIT_DEAD in codes else max(codes, default=0)


def interrupted(ids: list[int]) -> int:
    which = f"task {ids[0]}" if len(ids) == 1 else f"{len(ids)} tasks"
    again = f"; `martinet wait {ids[0]}` waits again" if len(ids) == 1 else ""
    print(f"martinet: stopped waiting for {which} (it goes on{again})", file=sys.stderr)
    return EXIT_INTERRUPTED


def wait_and_print(m, args: argparse.Namespace, tid: int) -> int:
    try:
        done = outcome(m, tid, args.wait_for)
    except KeyboardInterrupt:
        return interrupted([tid])
    if done["status"] == "succeeded":
        emit(args, {"id": tid, "result": done["result"]}, json.dumps(done["result"]))
        return 0
    if args.json:
        emit(args, {k: v for k, v in done.items() if k not in ("text", "timed_out")}, "")
    print(f"martinet: error: {done['text']}", file=sys.stderr)
    return exit_code([done])


def wait_many(m, args: argparse.Namespace, ids: list[int]) -> int:
    """Wait for every task of a batch (within --wait-for in all); one line per task."""
    deadline = None if args.wait_for is None else time.monotonic() + args.wait_for
    outcomes = []
    try:
        for tid in ids:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            outcomes.append(outcome(m, tid, left))
    except KeyboardInterrupt:
        return interrupted(ids[len(outcomes) :])
    if args.json:
        emit(args, {"ids": ids, "tasks": [{k: v for k, v in o.items() if k != "text"} for o in outcomes]}, "")
    else:
        for o in outcomes:
            if o["status"] == "succeeded":
                detail = json.dumps(o["result"], default=str)
            elif o.get("timed_out"):
                detail = f"still {o['status']}" + (f": {o['waiting']}" if o.get("waiting") else "")
            else:
                error = o.get("error") or {}
                detail = f"{error.get('type')}: {error.get('message')}" if error else ""
            print(f"{o['id']} {'not done' if o.get('timed_out') else o['status']} {detail}".rstrip())
    return exit_code(outcomes)
