"""The `martinet` and `martinet-worker` commands.

parser: the command line and its help; main: what runs each command; tasks, admin,
watch: the client commands; inputs: what they read from their arguments; output: what
they print; waiting: waiting for tasks and the exit codes; worker: `martinet-worker`.
"""

from __future__ import annotations

import signal  # noqa: F401 - tests patch cli.signal.signal to keep pytest's handlers

from martinet.cli.admin import cmd_daemons, cmd_ping, cmd_queues, cmd_schedules
from martinet.cli.inputs import queue_list, task_spec
from martinet.cli.main import COMMANDS, main, serve
from martinet.cli.output import event_line, setup_logging
from martinet.cli.parser import build_parser
from martinet.cli.waiting import EXIT_CANCELLED, EXIT_CODES, EXIT_DEAD, EXIT_INTERRUPTED, EXIT_NOT_DONE
from martinet.cli.worker import build_worker_parser, worker_main

# The names tests and scripts used when this was one module.
_task = task_spec
_queue_list = queue_list

__all__ = [
    "COMMANDS",
    "EXIT_CANCELLED",
    "EXIT_CODES",
    "EXIT_DEAD",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_DONE",
    "build_parser",
    "build_worker_parser",
    "cmd_daemons",
    "cmd_ping",
    "cmd_queues",
    "cmd_schedules",
    "event_line",
    "main",
    "serve",
    "setup_logging",
    "worker_main",
]
