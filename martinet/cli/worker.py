"""`martinet-worker`: import the modules that register tasks, then serve them until stopped."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from martinet import __version__, config
from martinet.cli.inputs import queue_list
from martinet.cli.output import add_logging_options, setup_logging
from martinet.cli.parser import EPILOG, add_completion_option, add_key_options
from martinet.config import Settings as S
from martinet.errors import MartinetError

if TYPE_CHECKING:
    from martinet.worker import Handler, Worker


def build_worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="martinet-worker",
        description="Import modules that register tasks with @martinet.task and serve them.",
        epilog=EPILOG,
    )
    parser.add_argument("modules", nargs="+", help="modules to import, e.g. myapp.tasks")
    add_worker_options(parser)
    parser.add_argument("--version", action="version", version=f"martinet-worker {__version__}")
    add_completion_option(parser)
    return parser


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """The options of `martinet-worker` but its modules, --version and --completion (Django's
    `manage.py martinet_worker` takes them too)."""
    from martinet.worker import PREFETCH_DEEP, PREFETCH_MIN, PREFETCH_PER_THREAD, WorkerOptions

    parser.add_argument("--config", help="a TOML config file (default: none)")
    parser.add_argument(
        "--connect",
        help="the daemon's host, or tcp://HOST:PORT with its worker port (the status port is then "
        f"PORT + {S.status_port - S.worker_port} unless --status-port says otherwise); several daemons on one "
        f"database, comma-separated: the worker moves to the next when its own goes silent (default: {S.connect})",
    )
    parser.add_argument(
        "--worker-port", type=int, help=f"the daemon's worker port (default: {S.worker_port})"
    )
    parser.add_argument(
        "--status-port", type=int, help=f"the daemon's status port (default: {S.status_port})"
    )
    parser.add_argument(
        "--concurrency", type=int, help=f"tasks run at once, one thread each (default: {S.concurrency})"
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        help="tasks held beyond --concurrency, ready for the next free thread; 0 holds none "
        f"(default: {PREFETCH_PER_THREAD} per thread, --concurrency x {PREFETCH_PER_THREAD}, "
        f"and at least {PREFETCH_MIN}; deeper while tasks are short, up to {PREFETCH_DEEP})",
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
        "--grace",
        type=float,
        default=WorkerOptions.grace,
        help=f"seconds to finish running tasks on SIGTERM (default: {WorkerOptions.grace:g})",
    )
    add_logging_options(parser, S.log_level, S.log_format)
    parser.add_argument(
        "--health",
        metavar="HOST:PORT",
        help="serve health checks there for an orchestrator: /healthz (the worker runs), /readyz "
        "(a daemon welcomed it), e.g. 127.0.0.1:9109 (default: none)",
    )
    add_key_options(parser)


def worker_main(argv: list[str] | None = None) -> int:
    args = build_worker_parser().parse_args(argv)
    try:
        serve(*make_worker(args))
    except MartinetError as exc:
        print(f"martinet-worker: error: {exc}", file=sys.stderr)
        return 1
    return 0


def make_worker(
    args: argparse.Namespace,
    given: dict[str, Any] | None = None,
    handlers: Callable[[], dict[str, Handler]] | None = None,
) -> tuple[Worker, str]:
    """The Worker that `args` (the options of add_worker_options, and `modules`) ask for,
    its modules imported; raises MartinetError. `given`: settings given in code (a Django
    backend's OPTIONS), below the command line's and above the config file and MARTINET_*
    variables; `handlers`, called once the modules are imported, says what it serves
    (default: what @martinet.task registered). With the daemon's host(s) it connects to."""
    flags = {
        "connect": args.connect,
        "worker_port": args.worker_port,
        "status_port": args.status_port,
        "concurrency": args.concurrency,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "health": args.health,
        "key_file": args.key_file,
        "server_key": args.server_key,
    }
    settings = config.load(
        args.config, {**(given or {}), **{k: v for k, v in flags.items() if v is not None}}
    )
    queues = None if args.queues is None else queue_list(args.queues)
    if args.prefetch is not None and args.prefetch < 0:
        raise MartinetError(f"--prefetch must be 0 or more, got {args.prefetch}")
    host, worker_port, status_port = config.worker_endpoint(settings)
    setup_logging(settings.log_level, settings.log_format)
    for one in config.daemons(host):
        _warn_if_unresolvable(one)
    sys.path.insert(0, os.getcwd())
    for module in args.modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MartinetError(f"cannot import {module!r}: {exc}") from None
    served = handlers() if handlers is not None else {}
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
            health=settings.health,
            key_file=settings.key_file,
            server_key=settings.server_key,
            handlers=served,
        )
    )
    if not worker.handlers:
        raise MartinetError(
            f"no tasks registered by {', '.join(args.modules)}; decorate handlers with @martinet.task"
        )
    return worker, host


def serve(worker: Worker, host: str) -> None:
    """Run `worker` until SIGINT or SIGTERM stops it (gracefully); raises MartinetError."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    import zmq

    try:
        worker.run()  # a MartinetError is raised before it connects (a composition names a missing step)
    except zmq.ZMQError as exc:  # an address ZeroMQ cannot use: one line, not a traceback
        raise MartinetError(f"cannot connect to {host}: {exc}") from None


def _warn_if_unresolvable(host: str) -> None:
    """ZeroMQ retries a host it cannot resolve in silence: say so once (it may appear later)."""
    try:
        socket.getaddrinfo(host.strip("[]"), None)
    except (OSError, UnicodeError) as exc:
        logging.getLogger("martinet.worker").warning(
            "cannot resolve the daemon's host %r (%s); the worker keeps trying", host, exc
        )
