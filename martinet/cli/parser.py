"""The `martinet` command line: its commands, flags and help."""

from __future__ import annotations

import argparse
from typing import Any

from martinet import __version__, rules
from martinet.cli.output import add_logging_options
from martinet.cli.waiting import EXIT_CODES
from martinet.config import Settings as S
from martinet.protocol import EVENT_KINDS
from martinet.query import TIMES

WATCH_KINDS = (*EVENT_KINDS, "gap")  # what `watch --status` takes
EPILOG = "Settings also come from --config FILE and MARTINET_* environment variables."
ARGS_HELP = "the arguments, a JSON object; @FILE reads it from FILE, - from stdin (default: {})"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="a TOML config file (`martinet config --sample` prints one; default: none)"
    )
    p.add_argument("--url", help=f"the daemon's client address (default: MARTINET_URL, then {S.url})")
    p.add_argument(
        "--timeout",
        type=float,
        help=f"seconds to wait for the daemon's answer to a request, not for a task (default: {S.timeout:g})",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (default: text)")
    add_key_options(p)


class _Completion(argparse.Action):
    """--completion SHELL: print the shell's completion script for this command (shtab,
    imported only then: 40 ms that no other command pays)."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> None:
        import shtab

        print(shtab.complete(parser, shell=values))
        parser.exit()


def add_completion_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--completion", choices=("bash", "zsh", "tcsh"), action=_Completion,
        help="print a completion script for this shell: eval \"$(%(prog)s --completion bash)\" in ~/.bashrc "
        "(default: none)",
    )  # fmt: skip


def add_key_options(p: argparse.ArgumentParser) -> None:
    """A client's or a worker's CURVE keys (docs/security.md)."""
    p.add_argument(
        "--key-file", metavar="FILE", help="this side's key pair, a NAME.key_secret file (default: none)"
    )
    p.add_argument(
        "--server-key",
        metavar="FILE|KEY",
        help="the daemon's public key: its NAME.key file, or the key (default: none)",
    )


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the task name a worker handles")
    p.add_argument("--args", default="{}", help=ARGS_HELP)
    p.add_argument("--user", dest="username", help="who the task is for (default: none)")
    p.add_argument("--description", help="a line saying what it does (default: none)")
    p.add_argument("--priority", type=int, help="higher runs first (default: 0)")
    p.add_argument(
        "--max-attempts",
        type=int,
        help=f"attempts before the task is dead (default: the daemon's max_attempts, {S.max_attempts})",
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
        choices=rules.QUEUE_ORDERS,
        help="which waiting task goes first: fifo (oldest) or random (default: unchanged)",
    )
    _add_common(q)


def _add_limits_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("limits", help="task names' fleet-wide limits: list them, or set one's", epilog=EPILOG)
    _add_common(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("list", help="every task name with limits, and how many of it run (the default)")
    _add_common(q)
    q = actions.add_parser("set", help="change a task name's concurrency or rate (what is not given stays)")
    q.add_argument("name", help="a task name, like charge")
    q.add_argument(
        "--concurrency",
        help="at most this many of it held at once, fleet-wide ('none': no cap; default: unchanged)",
    )
    q.add_argument(
        "--rate", help='at most this many start per period ("10/second"; none: no limit; default: unchanged)'
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
    parser.add_argument("--version", action="version", version=f"martinet {__version__}")
    add_completion_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the scheduler daemon", epilog=EPILOG)
    p.add_argument("--config", help="a TOML config file (default: none)")
    p.add_argument("--db", help=f"database URL (default: {S.db})")
    p.add_argument("--bind", help=f"address to bind (default: {S.bind})")
    p.add_argument("--client-port", type=int, help=f"client socket port (default: {S.client_port})")
    p.add_argument("--worker-port", type=int, help=f"worker socket port (default: {S.worker_port})")
    p.add_argument("--status-port", type=int, help=f"status socket port (default: {S.status_port})")
    add_logging_options(p, S.log_level, S.log_format)
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics (/metrics) and health checks (/healthz, /readyz) there, "
        "e.g. 127.0.0.1:9108 (default: none)",
    )
    p.add_argument(
        "--server-secret-key", metavar="FILE",
        help="the daemon's key pair (NAME.key_secret): every socket is then CURVE (default: none, loopback only)",
    )  # fmt: skip
    for role, may in (
        ("worker", "take tasks"),
        ("client", "submit and read"),
        ("admin", "also change and remove"),
    ):
        p.add_argument(
            f"--{role}-keys", metavar="PATHS",
            help=f"the public keys allowed to {may}: NAME.key files, folders of them or keys, "
            "comma-separated (default: none)",
        )  # fmt: skip
    p.add_argument(
        "--insecure-bind", action="store_true",
        help="bind another address than loopback without keys: anyone reaching the ports may use them "
        "(default: off)",
    )  # fmt: skip

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
    _add_limits_command(sub)

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
        "top",
        help="a live view: queues, workers, running tasks with progress bars, the latest dead tasks (q quits)",
        epilog=EPILOG,
    )
    p.add_argument("--every", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    p.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit, as it does off a terminal (default: redraw until q)",
    )
    _add_common(p)

    p = sub.add_parser(
        "web",
        help="the dashboard in a browser (pip install 'martinet[web]'): tasks, queues, workers, actions",
        epilog=EPILOG,
    )
    p.add_argument("--bind", default="127.0.0.1:8010", help="HOST:PORT to serve on (default: 127.0.0.1:8010)")
    p.add_argument(
        "--token",
        help="a secret every request must carry (?token= once, then a cookie); needed on any address but "
        "loopback (default: MARTINET_WEB_TOKEN, else none)",
    )
    p.add_argument("--read-only", action="store_true", help="show, and offer no action (default: actions)")
    p.add_argument(
        "--hide-args", action="store_true", help="never show a task's args or result (default: shown)"
    )
    _add_common(p)

    p = sub.add_parser(
        "workers",
        help="the workers connected to the daemon: the tasks they run and hold, their slots, when last heard",
        epilog=EPILOG,
    )
    _add_common(p)

    p = sub.add_parser(
        "daemons",
        help="the daemons that use the daemon's database: where each listens, since when, its last heartbeat",
        epilog=EPILOG,
    )
    _add_common(p)

    p = sub.add_parser(
        "demo", help="start a daemon and two workers on a fresh SQLite file and show them work"
    )
    p.add_argument(
        "--tasks", type=int, default=2000, help="no-op tasks for the throughput line (default: 2000)"
    )

    p = sub.add_parser(
        "config", help="print the settings in effect, or a sample file of them all", epilog=EPILOG
    )
    p.add_argument("--config", help="a TOML config file (default: none)")
    p.add_argument(
        "--sample",
        action="store_true",
        help="print the sample file: every setting, its default, what it is for",
    )

    p = sub.add_parser("keys", help="make CURVE key pairs for the daemon, workers and clients", epilog=EPILOG)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("new", help="write NAME.key (public) and NAME.key_secret (its owner's only)")
    q.add_argument("name", help="what the key is for, like daemon, worker-eu or ci")
    q.add_argument("--dir", default=".", help="the folder to write them in (default: the current one)")
    return parser
