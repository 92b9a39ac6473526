"""The `martinet` and `martinet-worker` commands.

Errors print one line ("martinet: error: ...") and exit 1; usage errors exit 2.
The commands that wait for a task (wait, execute --wait, watch ID) exit with its
outcome: see EXIT_CODES.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from martinet import config, when
from martinet.errors import MartinetError
from martinet.protocol import EVENT_KINDS
from martinet.query import TIMES, parse_where

WATCH_KINDS = (*EVENT_KINDS, "gap")  # what `watch --status` takes
EPILOG = "Settings also come from --config FILE and MARTINET_* environment variables."

# How a command that waits for tasks ends: a script can tell the outcomes apart.
EXIT_DEAD = 3  # the task failed for good (dead)
EXIT_CANCELLED = 4  # it was cancelled (revoked)
EXIT_NOT_DONE = 5  # --wait-for ran out: it is still waiting or running
EXIT_INTERRUPTED = 130  # Ctrl-C: we stopped waiting (the task goes on)
EXIT_CODES = (
    "exit codes: 0 succeeded, 1 error (no answer from the daemon, a bad input), 2 usage, "
    f"{EXIT_DEAD} dead, {EXIT_CANCELLED} cancelled, {EXIT_NOT_DONE} still running or waiting "
    f"when --wait-for ran out, {EXIT_INTERRUPTED} stopped waiting on Ctrl-C (the task goes on)"
)
ARGS_HELP = "the arguments, a JSON object; @FILE reads it from FILE, - from stdin (default: {})"
_OUTCOME_EXIT = {"succeeded": 0, "dead": EXIT_DEAD, "cancelled": EXIT_CANCELLED}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a TOML config file (see conf/martinet.toml; default: none)")
    p.add_argument(
        "--url", help="the daemon's client address (default: MARTINET_URL, then tcp://127.0.0.1:8008)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="seconds to wait for the daemon's answer to a request, not for a task (default: 10)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (default: text)")


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the task name a worker handles")
    p.add_argument("--args", default="{}", help=ARGS_HELP)
    p.add_argument("--user", dest="username", help="who the task is for (default: none)")
    p.add_argument("--description", help="a line saying what it does (default: none)")
    p.add_argument("--priority", type=int, help="higher runs first (default: 0)")
    p.add_argument(
        "--max-attempts",
        type=int,
        help="attempts before the task is dead (default: the daemon's max_attempts, 3)",
    )
    p.add_argument(
        "--time-limit",
        dest="time_limit",
        type=float,
        help="seconds an attempt may run; Python's time_limit= (default: no limit)",
    )
    p.add_argument("--timezone", help="IANA zone for times without one (default: config, else UTC)")
    p.add_argument("--queue", help='the queue it waits in (default: "default"); see `martinet queues`')
    p.add_argument(
        "--request-id",
        help="an id of your own for this submit: run again with the same one, it never creates twice "
        "(an error with no answer from the daemon names the one it made; default: a new one)",
    )


def _add_queue_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("queues", help="list queues, pause or resume one, or set its limits", epilog=EPILOG)
    _add_common(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("list", help="every queue with its settings and task counts (the default)")
    _add_common(q)
    for action, text in (
        ("pause", "dispatch none of the queue's tasks until resumed (running ones finish)"),
        ("resume", "dispatch the queue's tasks again"),
    ):
        q = actions.add_parser(action, help=text)
        q.add_argument("name", help="a queue name, like default or images")
        _add_common(q)
    q = actions.add_parser("set", help="change a queue's limits, weight or order")
    q.add_argument("name", help="a queue name, like default or images")
    q.add_argument(
        "--concurrency",
        help="at most this many of its tasks run at once, fleet-wide ('none': no cap; default: unchanged)",
    )
    q.add_argument(
        "--rate",
        help='at most this many of its tasks start per period ("100/minute", "5/second"; none: no limit; '
        "default: unchanged)",
    )
    q.add_argument(
        "--weight",
        type=int,
        help="its share of free worker slots against other queues (1 or more; default: unchanged)",
    )
    q.add_argument(
        "--order",
        choices=["fifo", "random"],
        help="which waiting task goes first: fifo (oldest) or random (default: unchanged)",
    )
    _add_common(q)


def _add_list_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="find tasks: filter, sort, page through, or count them", epilog=EPILOG)
    p.add_argument(
        "--status",
        action="append",
        help="only these states (repeatable, or comma-separated: failed,dead; default: all)",
    )
    p.add_argument(
        "--name", help="only this task name, or names starting with a prefix: resize.* (default: all)"
    )
    p.add_argument("--queue", help="only this queue (default: all)")
    p.add_argument("--user", dest="username", help="only this user's tasks (default: all)")
    p.add_argument("--key", help="only tasks with this key (default: all)")
    p.add_argument("--schedule", help="only runs of this schedule (s7; default: all)")
    p.add_argument("--text", help="only tasks whose description contains this (any case; default: all)")
    p.add_argument("--error", help="only tasks whose last error has this type (TimeoutError; default: all)")
    p.add_argument(
        "--where",
        action="append",
        metavar="FIELD=VALUE",
        help="only tasks whose args have this value (image_id=7, user.email=ana@example.com; "
        "repeatable; default: all)",
    )
    p.add_argument(
        "--since", help='only tasks whose --time is at or after this ("2 hours ago"; default: any)'
    )
    p.add_argument("--until", help='only tasks whose --time is before this ("1 hour ago"; default: any)')
    p.add_argument("--time", choices=TIMES, help="the time --since and --until apply to (default: created)")
    p.add_argument(
        "--sort", choices=TIMES, default="created", help="newest first by this time (default: created)"
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    p.add_argument(
        "--after",
        metavar="CURSOR",
        help="the page after this one (the `next` of the last; default: the first)",
    )
    p.add_argument(
        "--count", action="store_true", help="print how many match, by status, not the tasks (default: off)"
    )
    _add_common(p)


def _add_wait_for(p: argparse.ArgumentParser, *more: str) -> None:
    p.add_argument(
        "--wait-for",
        *more,
        dest="wait_for",
        type=float,
        metavar="SECONDS",
        help="stop waiting after this long (exit 5; the task goes on; default: until it ends, "
        "and Ctrl-C stops waiting: exit 130)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="martinet", description="A durable task system.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the scheduler daemon", epilog=EPILOG)
    p.add_argument("--config", help="a TOML config file (default: none)")
    p.add_argument("--db", help="database URL (default: sqlite:///martinet.db)")
    p.add_argument("--bind", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--client-port", type=int, help="client socket port (default: 8008)")
    p.add_argument("--worker-port", type=int, help="worker socket port (default: 8009)")
    p.add_argument("--status-port", type=int, help="status socket port (default: 18009)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")

    p = sub.add_parser("execute", help="run a task now", epilog=f"With --wait, {EXIT_CODES}. {EPILOG}")
    _add_task_options(p)
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the result and print it; --wait-for implies it (default: do not wait)",
    )
    _add_wait_for(p)
    p.add_argument(
        "--many",
        metavar="FILE",
        help="submit one task per line of FILE (JSON objects of args; - for stdin) in bulk "
        "(default: one task, with --args)",
    )
    _add_common(p)

    p = sub.add_parser(
        "schedule", help='run a task later ("in 20 minutes", "tomorrow at 9am")', epilog=EPILOG
    )
    p.add_argument("when", help="when to run it, in English or ISO 8601")
    _add_task_options(p)
    _add_common(p)

    p = sub.add_parser("every", help='run a task repeatedly ("30 minutes")', epilog=EPILOG)
    p.add_argument("spec", help='an interval ("30 minutes", "1 hour 30 minutes") or a cron expression')
    _add_task_options(p)
    p.add_argument(
        "--run-at", help='the first run ("midnight", "in 5 minutes"; default: one interval from now)'
    )
    p.add_argument("--until", help='no run after this time ("2027-01-01", "in 3 days"; default: none)')
    p.add_argument(
        "--count", type=int, help="this many runs, then the schedule is finished (default: no end)"
    )
    p.add_argument("--misfire", choices=["once", "all", "skip"], help="runs missed while the daemon was down: "
                   "run once now (default), run all, or skip to the next")  # fmt: skip
    p.add_argument(
        "--misfire-grace",
        help='how late a missed run is still worth running ("10 minutes"; default: however late)',
    )
    _add_common(p)

    _add_list_command(sub)

    p = sub.add_parser(
        "schedules", help="list, show, pause, resume, update or remove schedules", epilog=EPILOG
    )
    _add_common(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("list", help="every schedule (the default)")
    _add_common(q)
    for action, text in (
        ("show", "a schedule, its next five due times and its recent runs"),
        ("pause", "stop creating runs until resumed"),
        ("resume", "create runs again, from the next due time after now"),
        ("remove", "remove the schedule (its finished runs stay)"),
    ):
        q = actions.add_parser(action, help=text)
        q.add_argument("id", help="a schedule id, like s7")
        _add_common(q)
    q = actions.add_parser("update", help="new args and/or a new spec")
    q.add_argument("id", help="a schedule id, like s7")
    q.add_argument(
        "--args", help="the new arguments, a JSON object; @FILE or - (stdin) read it (default: unchanged)"
    )
    q.add_argument(
        "--every",
        help="a new interval or cron expression; due times start afresh from now (default: unchanged)",
    )
    q.add_argument("--timezone", help="a new IANA time zone (default: unchanged)")
    _add_common(q)

    _add_queue_commands(sub)

    p = sub.add_parser("show", help="a task or schedule with its history", epilog=EPILOG)
    p.add_argument("id", help="a task id (42) or a schedule id (s7)")
    _add_common(p)

    p = sub.add_parser(
        "wait", help="wait for a task to end and print its result", epilog=f"{EXIT_CODES}. {EPILOG}"
    )
    p.add_argument("id", type=int, help="a task id")
    _add_wait_for(p, "--for")
    _add_common(p)

    p = sub.add_parser("revoke", help="cancel a task or remove a schedule", epilog=EPILOG)
    p.add_argument("id", help="a task id (42) or a schedule id (s7)")
    _add_common(p)

    p = sub.add_parser("retry", help="run a dead, stalled or cancelled task again", epilog=EPILOG)
    p.add_argument("id", help="a task id")
    p.add_argument("--attempts", type=int, help="attempts to give it (default: as many as at submit)")
    _add_common(p)

    p = sub.add_parser("stall", help="hold a waiting task until it is retried", epilog=EPILOG)
    p.add_argument("id", help="a task id")
    p.add_argument("--reason", help='why, shown by `martinet show` (default: "stalled by an operator")')
    _add_common(p)

    p = sub.add_parser("update", help="replace the args of a schedule or waiting task", epilog=EPILOG)
    p.add_argument("id", help="a task id (42) or a schedule id (s7)")
    p.add_argument(
        "--args", required=True, help="the new arguments, a JSON object; @FILE or - (stdin) read it"
    )
    _add_common(p)

    p = sub.add_parser(
        "prune", help="delete finished tasks older than an age, with their attempt logs", epilog=EPILOG
    )
    p.add_argument(
        "--older-than", required=True, help='finished more than this long ago ("30 days", "12 hours"; 0: all)'
    )
    p.add_argument(
        "--status",
        action="append",
        help="only these finished states: succeeded, cancelled, dead (repeatable or comma-separated; default: all)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="count what would be deleted; delete nothing (default: delete)"
    )
    _add_common(p)

    p = sub.add_parser(
        "watch",
        help="print events live, one line each: progress, results, errors (tail -f); or one task's, until it ends",
        epilog=f"With a task ID, {EXIT_CODES}. {EPILOG}",
    )
    p.add_argument(
        "task",
        nargs="?",
        metavar="ID",
        help="follow only this task (42, or its key) until it ends, then exit with its outcome "
        "(default: every task, until Ctrl-C)",
    )
    p.add_argument(
        "--name",
        help="only events of this task name, or of names starting with a prefix: resize.* (default: all)",
    )
    p.add_argument(
        "--status",
        action="append",
        help=f"only these kinds of event (repeatable or comma-separated; default: all): {', '.join(WATCH_KINDS)}",
    )
    p.add_argument(
        "--since",
        type=int,
        metavar="ID",
        help="first the events after event ID (while the daemon keeps them; default: from now)",
    )
    _add_common(p)

    p = sub.add_parser(
        "ping",
        help="is the daemon answering, and is its database well? (exit 1 while its database fails)",
        epilog=EPILOG,
    )
    _add_common(p)

    p = sub.add_parser(
        "demo", help="start a daemon and two workers on a fresh SQLite file and show them work"
    )
    p.add_argument(
        "--tasks", type=int, default=2000, help="no-op tasks for the throughput line (default: 2000)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "demo":
            from martinet.demo import run_demo

            return run_demo(args.tasks)
        return _client_command(args)
    except MartinetError as exc:
        rid = getattr(exc, "request_id", None)
        again = f" (here: the same command with --request-id {rid})" if rid and "request_id" in args else ""
        print(f"martinet: error: {exc}{again}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# ---- serve --------------------------------------------------------------------


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve(args: argparse.Namespace) -> int:
    from martinet.daemon import Daemon

    flags = {
        "db": args.db,
        "bind": args.bind,
        "client_port": args.client_port,
        "worker_port": args.worker_port,
        "status_port": args.status_port,
        "log_level": args.log_level,
    }
    settings = config.load(args.config, flags)
    setup_logging(settings.log_level)
    daemon = Daemon(settings)
    daemon.open()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.stop())
    daemon.run()
    return 0


# ---- client commands ---------------------------------------------------------------


def _client_command(args: argparse.Namespace) -> int:
    from martinet.api import Martinet

    settings = config.load(args.config, {"url": args.url, "timeout": args.timeout})
    setup_logging("WARNING")
    m = Martinet.connect(settings.url, settings.timeout)
    try:
        return COMMANDS[args.command](m, args)
    finally:
        m.close()


def _json_arg(text: str, what: str = "--args") -> dict:
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


def _read_args(text: str) -> dict:
    """--args: JSON itself, @FILE (read from FILE) or - (read from stdin), for args too large
    for a command line."""
    if text == "-":
        return _json_arg(sys.stdin.read(), "--args from stdin")
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                content = fh.read()
        except OSError as exc:
            raise MartinetError(f"cannot read --args file {path}: {exc.strerror}") from None
        return _json_arg(content, f"--args file {path}")
    return _json_arg(text)


def _task(args: argparse.Namespace) -> dict[str, Any]:
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


def _queue_list(text: str) -> list[str]:
    """--queues images,default -> ["images", "default"], each name checked."""
    names: list[str] = []
    for part in text.split(","):
        name = config.check_queue_name(part.strip())
        if name not in names:
            names.append(name)
    return names


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else human)


def _warn(warning: str | None) -> None:
    """The daemon's warning about what was just submitted, on stderr (stdout stays the answer)."""
    if warning:
        print(f"martinet: warning: {warning}; it waits until one connects", file=sys.stderr)


def _many_lines(path: str) -> list[dict]:
    """The args of `execute --many FILE`: one JSON object per line (blank lines skipped); a
    bad line is named by its file and number."""
    label = "stdin" if path == "-" else path
    try:
        fh = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise MartinetError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return [_json_arg(line, f"{label} line {n}") for n, line in enumerate(fh, 1) if line.strip()]
    finally:
        if fh is not sys.stdin:
            fh.close()


def _outcome(m, tid: int, wait_for: float | None) -> dict[str, Any]:
    """How waiting for task `tid` ended: {"id", "status", and "result" or "error" or "waiting"}.
    KeyboardInterrupt goes up."""
    from martinet.errors import TaskFailed, WaitTimeout

    try:
        return {"id": tid, "status": "succeeded", "result": m.wait(tid, timeout=wait_for)}
    except TaskFailed as exc:
        return {"id": tid, "status": exc.info.get("status"), "error": exc.info.get("error"), "text": str(exc)}
    except WaitTimeout as exc:
        return {"id": tid, "status": exc.status, "waiting": exc.waiting, "timed_out": True, "text": str(exc)}


def _exit_code(outcomes: list[dict]) -> int:
    """The worst of the outcomes: still running, then dead, then cancelled; else 0."""
    if any(o.get("timed_out") for o in outcomes):
        return EXIT_NOT_DONE
    codes = {_OUTCOME_EXIT.get(o["status"], 1) for o in outcomes}
    return EXIT_DEAD if EXIT_DEAD in codes else max(codes, default=0)


def _interrupted(ids: list[int]) -> int:
    which = f"task {ids[0]}" if len(ids) == 1 else f"{len(ids)} tasks"
    again = f"; `martinet wait {ids[0]}` waits again" if len(ids) == 1 else ""
    print(f"martinet: stopped waiting for {which} (it goes on{again})", file=sys.stderr)
    return EXIT_INTERRUPTED


def _wait_and_print(m, args: argparse.Namespace, tid: int) -> int:
    try:
        done = _outcome(m, tid, args.wait_for)
    except KeyboardInterrupt:
        return _interrupted([tid])
    if done["status"] == "succeeded":
        _print(args, {"id": tid, "result": done["result"]}, json.dumps(done["result"]))
        return 0
    if args.json:
        _print(args, {k: v for k, v in done.items() if k not in ("text", "timed_out")}, "")
    print(f"martinet: error: {done['text']}", file=sys.stderr)
    return _exit_code([done])


def _wait_many(m, args: argparse.Namespace, ids: list[int]) -> int:
    """Wait for every task of a batch (within --wait-for in all); one line per task."""
    deadline = None if args.wait_for is None else time.monotonic() + args.wait_for
    outcomes = []
    try:
        for tid in ids:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            outcomes.append(_outcome(m, tid, left))
    except KeyboardInterrupt:
        return _interrupted(ids[len(outcomes) :])
    if args.json:
        _print(
            args, {"ids": ids, "tasks": [{k: v for k, v in o.items() if k != "text"} for o in outcomes]}, ""
        )
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
    return _exit_code(outcomes)


def cmd_execute(m, args) -> int:
    wait = args.wait or args.wait_for is not None
    if args.many:
        ids = m.execute_many([(_task(args), a) for a in _many_lines(args.many)], request_id=args.request_id)
        summary = f"{len(ids)} tasks accepted" + (f" ({ids[0]}..{ids[-1]})" if ids else "")
        warnings = list(dict.fromkeys(t.warning for t in ids if t.warning))  # one per name and queue
        if wait:
            print(summary, file=sys.stderr)
        else:
            _print(args, {"ids": ids, **({"warnings": warnings} if warnings else {})}, summary)
        for warning in warnings:
            _warn(warning)
        return _wait_many(m, args, ids) if wait else 0
    tid = m.execute(_task(args), _read_args(args.args), request_id=args.request_id)
    _warn(tid.warning)
    if not wait:
        _print(args, {"id": tid, **({"warning": tid.warning} if tid.warning else {})}, f"task {tid} accepted")
        return 0
    return _wait_and_print(m, args, tid)


def cmd_schedule(m, args) -> int:
    tid = m.schedule(args.when, _task(args), _read_args(args.args), request_id=args.request_id)
    item = m.get(tid)
    data = {"id": tid, "run_at": item["run_at"], **({"warning": tid.warning} if tid.warning else {})}
    _print(args, data, f"task {tid} scheduled for {item['run_at']}")
    _warn(tid.warning)
    return 0


def cmd_every(m, args) -> int:
    task = _task(args)
    for key in ("run_at", "until", "count", "misfire", "misfire_grace"):
        if getattr(args, key) is not None:
            task[key] = getattr(args, key)
    sid = m.every(args.spec, task, _read_args(args.args), request_id=args.request_id)
    item = m.get(sid)
    _print(
        args,
        {"id": sid, "next_due": item["next_due"], **({"warning": sid.warning} if sid.warning else {})},
        f"schedule {sid} created; first run at {item['next_due']}",
    )
    _warn(sid.warning)
    return 0


def _list_filters(args: argparse.Namespace) -> dict[str, Any]:
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


def cmd_list(m, args) -> int:
    filters = _list_filters(args)
    if args.count:
        counts = m.count(**filters)
        total = sum(counts.values())
        if args.json:
            _print(args, {"counts": counts, "total": total}, "")
            return 0
        for state in sorted(counts, key=_STATE_ORDER.index):
            print(f"{state:<10} {counts[state]:>10}")
        print(f"{'total':<10} {total:>10}")
        return 0
    page = m.search(limit=args.limit, after=args.after, sort=args.sort, **filters)
    if args.json:
        _print(args, {"items": page.items, "next": page.next}, "")
        return 0
    if not page.items:
        print("no tasks")
        return 0
    column = {"created": "created_at", "due": "run_at", "finished": "finished_at"}[args.sort]
    print(f"{'ID':>8}  {'STATUS':<10} {'NAME':<20} {'USER':<12} {'ATTEMPT':<8} {column.upper():<29}")
    for t in page.items:
        attempts = f"{t['attempt']}/{t['max_attempts']}"
        print(
            f"{t['id']:>8}  {t['status']:<10} {t['name'][:20]:<20} {(t['username'] or '-')[:12]:<12} "
            f"{attempts:<8} {t[column]:<29}"
        )
    if page.next:
        print(f"more: martinet list ... --after {page.next}")
    return 0


def cmd_schedules(m, args) -> int:
    action = args.action or "list"
    if action == "show":
        return cmd_show(m, args)
    if action == "update":
        new_args = _read_args(args.args) if args.args is not None else None
        m.update(args.id, new_args, every=args.every, timezone=args.timezone)
        _print(args, {"id": args.id, "status": "updated"}, f"{args.id}: updated")
        return 0
    if action in ("pause", "resume", "remove"):
        {"pause": m.pause, "resume": m.resume, "remove": m.revoke}[action](args.id)
        done = {"pause": "paused", "resume": "resumed", "remove": "removed"}[action]
        _print(args, {"id": args.id, "status": done}, f"{args.id}: {done}")
        return 0
    items = m.schedules()
    if args.json:
        _print(args, items, "")
        return 0
    if not items:
        print("no schedules")
        return 0
    print(f"{'ID':>6}  {'STATUS':<8} {'NAME':<20} {'EVERY':<20} {'ZONE':<16} {'NEXT DUE':<30}")
    for s in items:
        print(
            f"{s['id']:>6}  {s['status']:<8} {s['name'][:20]:<20} {s['every'][:20]:<20} "
            f"{s['timezone'][:16]:<16} {s['next_due'] or '-':<30}"
        )
    return 0


# Task states in the order they happen, for the per-queue counts.
_STATE_ORDER = (
    "waiting",
    "scheduled",
    "queued",
    "leased",
    "running",
    "succeeded",
    "failed",
    "dead",
    "cancelled",
    "stalled",
)


def _counts_text(counts: dict[str, int]) -> str:
    order = {state: i for i, state in enumerate(_STATE_ORDER)}
    states = sorted(counts, key=lambda state: (order.get(state, len(order)), state))
    return " ".join(f"{state}={counts[state]}" for state in states if counts[state]) or "-"


def cmd_queues(m, args) -> int:
    action = args.action or "list"
    if action in ("pause", "resume"):
        (m.pause_queue if action == "pause" else m.resume_queue)(args.name)
        done = {"pause": "paused", "resume": "resumed"}[action]
        _print(args, {"name": args.name, "status": done}, f"{args.name}: {done}")
        return 0
    if action == "set":
        changes = {
            "concurrency": args.concurrency,
            "rate": args.rate,
            "weight": args.weight,
            "order": args.order,
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            raise MartinetError("nothing to set; give --concurrency, --rate, --weight or --order")
        if args.concurrency is not None and args.concurrency.lower() != "none":
            if not args.concurrency.isdigit() or int(args.concurrency) < 1:
                raise MartinetError(
                    f"--concurrency must be 1 or more, or 'none' (no cap), got {args.concurrency!r}"
                )
            changes["concurrency"] = int(args.concurrency)
        if args.weight is not None and args.weight < 1:
            raise MartinetError(f"--weight must be 1 or more, got {args.weight}")
        if args.rate is not None and args.rate.strip().lower() != "none":
            when.parse_rate(args.rate)  # a friendly error before the round trip
        m.set_queue(args.name, **changes)
        _print(args, {"name": args.name, "status": "updated", **changes}, f"{args.name}: updated")
        return 0
    items = m.queues()
    if args.json:
        _print(args, items, "")
        return 0
    if not items:
        print("no queues")
        return 0
    print(
        f"{'NAME':<16} {'PAUSED':<6} {'WEIGHT':>6} {'ORDER':<6} {'CONCURRENCY':>11} {'RATE':<12} "
        f"{'RUNNING':>7} {'WAITING':>7} {'OLDEST':>9}  COUNTS"
    )
    for q in items:
        counts = q.get("counts") or {}
        oldest = q.get("oldest_waiting_seconds")
        concurrency = q.get("concurrency")
        print(
            f"{q['name'][:16]:<16} {'yes' if q.get('paused') else 'no':<6} {q.get('weight', 1):>6} "
            f"{q.get('order') or 'fifo':<6} {'-' if concurrency is None else concurrency:>11} "
            f"{(q.get('rate') or '-')[:12]:<12} {counts.get('running', 0):>7} {counts.get('queued', 0):>7} "
            f"{'-' if oldest is None else f'{oldest:.1f}s':>9}  {_counts_text(counts)}"
        )
    return 0


def cmd_show(m, args) -> int:
    item = m.show(args.id)
    if args.json:
        _print(args, item, "")
        return 0
    skip = {"attempts", "recent_runs", "upcoming", "error", "kind", "progress_message"}
    for key, value in item.items():
        if key == "progress" and (value is not None or item.get("progress_message")):
            percent = "-" if value is None else f"{value:.0%}"
            print(
                f"{key:>17}: {percent}"
                + (f" {item['progress_message']}" if item.get("progress_message") else "")
            )
        elif key not in skip and value is not None:
            print(f"{key:>17}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    error = item.get("error")
    if error:
        label = "earlier error" if item.get("status") == "succeeded" else "error"  # a retry then succeeded
        print(f"{label:>17}: {error['type']}: {error['message']}")
        if error.get("traceback"):
            print("\n".join("    " + line for line in error["traceback"].rstrip().splitlines()))
    if item.get("kind") == "task":
        attempts = item.get("attempts", [])
        print(f"attempts ({len(attempts)}):" if attempts else "attempts: none finished yet")
        for a in attempts:
            took = "" if a["duration"] is None else f" ({a['duration']:.3f}s)"
            outcome = a["outcome"] + (
                f": {a['error']['type']}: {a['error']['message']}" if a["error"] else ""
            )
            print(
                f"  attempt {a['attempt']} on {a['worker'] or '-'}: {a['started_at'] or '?'} -> {a['ended_at']}"
                f"{took} {outcome}"
            )
        return 0
    print("upcoming:" if item.get("upcoming") else "upcoming: none")
    for due in item.get("upcoming", []):
        print(f"  next due {due}")
    runs = item.get("recent_runs", [])
    print(f"recent runs ({len(runs)}, newest first):" if runs else "recent runs: none")
    for r in runs:
        error = f" ({r['error_type']})" if r.get("error_type") else ""
        finished = f", finished {r['finished_at']}" if r.get("finished_at") else ""
        print(f"  run {r['id']} due {r['due_at']}: {r['status']}{error}{finished}")
    return 0


def cmd_wait(m, args) -> int:
    return _wait_and_print(m, args, args.id)


def cmd_revoke(m, args) -> int:
    status = m.revoke(args.id)
    _print(args, {"id": args.id, "status": status}, f"{args.id}: {status}")
    return 0


def cmd_retry(m, args) -> int:
    m.retry(args.id, args.attempts)
    _print(args, {"id": args.id, "status": "queued"}, f"{args.id}: queued")
    return 0


def cmd_stall(m, args) -> int:
    m.stall(args.id, args.reason)
    _print(args, {"id": args.id, "status": "stalled"}, f"{args.id}: stalled")
    return 0


def cmd_update(m, args) -> int:
    m.update(args.id, _read_args(args.args))
    _print(args, {"id": args.id, "status": "updated"}, f"{args.id}: updated")
    return 0


def cmd_prune(m, args) -> int:
    statuses = [s.strip() for text in args.status or [] for s in text.split(",") if s.strip()]
    done = m.prune(args.older_than, statuses or None, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    _print(
        args,
        done,
        f"{verb} {done['tasks']:,} tasks and {done['attempts']:,} attempt rows "
        f"(finished before {done['before']})",
    )
    return 0


def _watch_filter(args: argparse.Namespace) -> Callable[[dict], bool]:
    """Which events `watch` prints, from --name and --status, checked before connecting."""
    kinds = {k.strip() for text in args.status or [] for k in text.split(",") if k.strip()}
    unknown = sorted(kinds - set(WATCH_KINDS))
    if unknown:
        raise MartinetError(f"unknown status {unknown[0]!r} for watch; events are {', '.join(WATCH_KINDS)}")
    if args.since is not None and args.since < 0:
        raise MartinetError(f"--since must be an event id (0 or more), got {args.since}")
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
    interrupted = threading.Event()

    def on_signal(*_: Any) -> None:
        interrupted.set()
        stop.set()

    def show(event: dict) -> None:
        if task_id is not None and event.get("event") != "gap" and event.get("id") != task_id:
            return
        if wanted(event):
            print(json.dumps(event, default=str) if args.json else event_line(event), flush=True)
        if task_id is not None and event.get("event") in _OUTCOME_EXIT:
            ended.append(event["event"])
            stop.set()

    def ready(_reply: dict) -> None:
        # Subscribed: what ends from now on comes as an event. It may have ended before.
        if task_id is not None:
            item = m.get(task_id)
            if item["status"] in _OUTCOME_EXIT:
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
        return _OUTCOME_EXIT[ended[0]]
    return _interrupted([task_id]) if interrupted.is_set() else 0


def cmd_ping(m, args) -> int:
    """The daemon's epoch, protocol and workers, its database's identity, and the database's
    last failure while it lasts."""
    reply = m.ping()
    trouble = reply.get("database")
    data = {k: reply.get(k) for k in ("epoch", "version", "workers", "database", "database_id")}
    human = (
        f"daemon: answering (epoch {reply.get('epoch')}, protocol {reply.get('version')}, "
        f"database id {reply.get('database_id')}), {reply.get('workers')} worker(s) connected\n"
    )
    if trouble:
        human += (
            f"database: {trouble.get('error')} since {trouble.get('since')} "
            f"({trouble.get('failures')} turn(s) failed; nothing of them was committed)"
        )
    else:
        human += "database: ok"
    _print(args, data, human)
    return 1 if trouble else 0


COMMANDS = {
    "ping": cmd_ping,
    "execute": cmd_execute,
    "schedule": cmd_schedule,
    "every": cmd_every,
    "list": cmd_list,
    "schedules": cmd_schedules,
    "queues": cmd_queues,
    "show": cmd_show,
    "wait": cmd_wait,
    "revoke": cmd_revoke,
    "retry": cmd_retry,
    "stall": cmd_stall,
    "update": cmd_update,
    "prune": cmd_prune,
    "watch": cmd_watch,
}


# ---- martinet-worker --------------------------------------------------------------


def build_worker_parser() -> argparse.ArgumentParser:
    from martinet.worker import PREFETCH_PER_THREAD

    parser = argparse.ArgumentParser(
        prog="martinet-worker",
        description="Import modules that register tasks with @martinet.task and serve them.",
        epilog=EPILOG,
    )
    parser.add_argument("modules", nargs="+", help="modules to import, e.g. myapp.tasks")
    parser.add_argument("--config", help="a TOML config file (default: none)")
    parser.add_argument(
        "--connect",
        help="the daemon's host, or tcp://HOST:PORT with its worker port (the status port is then "
        "PORT + 10000 unless --status-port says otherwise) (default: 127.0.0.1)",
    )
    parser.add_argument("--worker-port", type=int, help="the daemon's worker port (default: 8009)")
    parser.add_argument("--status-port", type=int, help="the daemon's status port (default: 18009)")
    parser.add_argument("--concurrency", type=int, help="tasks run at once, one thread each (default: 4)")
    parser.add_argument(
        "--prefetch",
        type=int,
        help="tasks held beyond --concurrency, ready for the next free thread; 0 holds none "
        f"(default: {PREFETCH_PER_THREAD} per thread, --concurrency x {PREFETCH_PER_THREAD})",
    )
    parser.add_argument(
        "--worker-id",
        help="a name for this worker (default: the one in its journal, else host-pid-random)",
    )
    journal = parser.add_mutually_exclusive_group()
    journal.add_argument(
        "--journal",
        metavar="PATH",
        help="the file where the worker keeps its id and the results the daemon has not "
        "acknowledged, to send them after a crash and restart (default: HOST-PORT/worker-ID.journal, HOST-PORT the daemon's, "
        "in $MARTINET_STATE_DIR, else $XDG_STATE_HOME/martinet or ~/.local/state/martinet)",
    )
    journal.add_argument(
        "--no-journal",
        action="store_true",
        help="keep them in memory only: a crash loses them (default: journal them)",
    )
    parser.add_argument(
        "--queues",
        help="serve only these queues, comma-separated, e.g. images,default (default: every queue)",
    )
    parser.add_argument(
        "--grace", type=float, default=30.0, help="seconds to finish running tasks on SIGTERM (default: 30)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    return parser


def worker_main(argv: list[str] | None = None) -> int:
    args = build_worker_parser().parse_args(argv)
    try:
        settings = config.load(
            args.config,
            {
                "connect": args.connect,
                "worker_port": args.worker_port,
                "status_port": args.status_port,
                "concurrency": args.concurrency,
                "log_level": args.log_level,
            },
        )
        queues = None if args.queues is None else _queue_list(args.queues)
        if args.prefetch is not None and args.prefetch < 0:
            raise MartinetError(f"--prefetch must be 0 or more, got {args.prefetch}")
        host, worker_port, status_port = config.worker_endpoint(settings)
        setup_logging(settings.log_level)
        _warn_if_unresolvable(host)
        sys.path.insert(0, os.getcwd())
        for module in args.modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise MartinetError(f"cannot import {module!r}: {exc}") from None
        from martinet.worker import Worker, WorkerOptions

        worker = Worker(
            WorkerOptions(
                connect=host,
                worker_port=worker_port,
                status_port=status_port,
                concurrency=settings.concurrency,
                prefetch=args.prefetch,
                worker_id=args.worker_id,
                heartbeat_interval=settings.heartbeat_interval,
                liveness=settings.liveness,
                grace=args.grace,
                timeout_grace=settings.timeout_grace,
                queues=queues,
                journal=False if args.no_journal else args.journal or True,
            )
        )
        if not worker.handlers:
            raise MartinetError(
                f"no tasks registered by {', '.join(args.modules)}; decorate handlers with @martinet.task"
            )
    except MartinetError as exc:
        print(f"martinet-worker: error: {exc}", file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    import zmq

    try:
        worker.run()
    except MartinetError as exc:  # raised before it connects, e.g. a composition names a missing step
        print(f"martinet-worker: error: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:  # an address ZeroMQ cannot use: one line, not a traceback
        print(f"martinet-worker: error: cannot connect to {host}: {exc}", file=sys.stderr)
        return 1
    return 0


def _warn_if_unresolvable(host: str) -> None:
    """ZeroMQ retries a host it cannot resolve in silence: say so once (it may appear later)."""
    try:
        socket.getaddrinfo(host.strip("[]"), None)
    except (OSError, UnicodeError) as exc:
        logging.getLogger("martinet.worker").warning(
            "cannot resolve the daemon's host %r (%s); the worker keeps trying", host, exc
        )
