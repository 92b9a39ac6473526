"""`martinet`: parse, then serve, run the demo, or send a client command to the daemon.

Errors print one line ("martinet: error: ...") and exit 1; usage errors exit 2.
The commands that wait for a task (wait, execute --wait, watch ID) exit with its
outcome: see waiting.EXIT_CODES.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib import resources
from typing import Any

from martinet import config
from martinet.cli.admin import cmd_daemons, cmd_limits, cmd_ping, cmd_queues, cmd_schedules, cmd_workers
from martinet.cli.output import setup_logging
from martinet.cli.parser import build_parser
from martinet.cli.tasks import (
    cmd_every,
    cmd_execute,
    cmd_list,
    cmd_prune,
    cmd_retry,
    cmd_revoke,
    cmd_schedule,
    cmd_show,
    cmd_stall,
    cmd_update,
    cmd_wait,
)
from martinet.cli.top import cmd_top
from martinet.cli.watch import cmd_watch
from martinet.errors import MartinetError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        if args.command == "demo":
            from martinet.demo import run_demo

            return run_demo(args.tasks)
        if args.command == "keys":
            return new_keys(args)
        if args.command == "config":
            return show_config(args)
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


def serve(args: argparse.Namespace) -> int:
    from martinet.server.loop import Daemon

    flags = {
        "db": args.db,
        "bind": args.bind,
        "client_port": args.client_port,
        "worker_port": args.worker_port,
        "status_port": args.status_port,
        "log_level": args.log_level,
        "metrics": args.metrics,
        "log_format": args.log_format,
        "server_secret_key": args.server_secret_key,
        "worker_keys": args.worker_keys,
        "client_keys": args.client_keys,
        "admin_keys": args.admin_keys,
        "insecure_bind": args.insecure_bind or None,
    }
    settings = config.load(args.config, flags)
    setup_logging(settings.log_level, settings.log_format)
    daemon = Daemon(settings)

    def stop(*_: object) -> None:
        if daemon.core is None:  # still opening: it stops there (open undoes what it made)
            raise KeyboardInterrupt
        daemon.stop()  # (before run: run returns at once, and marks the daemon stopped)

    # In place before it opens: a signal sent once it says it serves (its log line, its
    # ports answering) stops it as any other, instead of killing it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_keys())
    daemon.open()
    daemon.run()
    return 0


def show_config(args: argparse.Namespace) -> int:
    """The sample file (every setting, its default, what it is for), or the settings in
    effect here (file, environment), as a TOML file would set them, passwords masked."""
    if args.sample:
        print(resources.files("martinet").joinpath("sample.toml").read_text(encoding="utf-8"), end="")
        return 0
    print(config.as_toml(config.load(args.config)), end="")
    return 0


def new_keys(args: argparse.Namespace) -> int:
    from martinet.keys import load_pair, new_pair

    public, secret = new_pair(args.name, args.dir)
    print(f"public key: {public} ({load_pair(secret).public.decode()})")
    print(f"secret key: {secret} (readable by you only: give it to the {args.name} side alone)")
    return 0


def cmd_web(m: Any, args: argparse.Namespace) -> int:
    from martinet.web.serve import cmd_web as serve_web  # (starlette and uvicorn: only here)

    return serve_web(m, args)


def _client_command(args: argparse.Namespace) -> int:
    from martinet.api import Martinet

    flags = {
        "url": args.url,
        "timeout": args.timeout,
        "key_file": args.key_file,
        "server_key": args.server_key,
    }
    settings = config.load(args.config, flags)
    setup_logging("WARNING")
    m = Martinet.connect(
        settings.url, settings.timeout, key_file=settings.key_file, server_key=settings.server_key
    )
    try:
        return COMMANDS[args.command](m, args)
    finally:
        m.close()


COMMANDS = {
    "ping": cmd_ping,
    "daemons": cmd_daemons,
    "workers": cmd_workers,
    "top": cmd_top,
    "web": cmd_web,
    "execute": cmd_execute,
    "schedule": cmd_schedule,
    "every": cmd_every,
    "list": cmd_list,
    "schedules": cmd_schedules,
    "queues": cmd_queues,
    "limits": cmd_limits,
    "show": cmd_show,
    "wait": cmd_wait,
    "revoke": cmd_revoke,
    "retry": cmd_retry,
    "stall": cmd_stall,
    "update": cmd_update,
    "prune": cmd_prune,
    "watch": cmd_watch,
}
