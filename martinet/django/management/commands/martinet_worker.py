"""`python manage.py martinet_worker [modules] [--queues ...] [--concurrency N] ...`: a
martinet worker, Django set up, serving the Django tasks of a MartinetBackend (each
installed app's tasks module imported) with `martinet-worker`'s options."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser  # type: ignore[import-untyped]

from martinet.cli.worker import add_worker_options
from martinet.django.compat import DEFAULT_TASK_BACKEND_ALIAS
from martinet.errors import MartinetError


class Command(BaseCommand):
    help = (
        "Run a martinet worker for the Django tasks of a MartinetBackend: it imports each installed "
        "app's tasks module (and the modules named), and closes Django's old database connections "
        "before and after every task."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "modules", nargs="*", help="more modules to import, besides each installed app's tasks module"
        )
        parser.add_argument(
            "--backend",
            default=DEFAULT_TASK_BACKEND_ALIAS,
            help="the TASKS alias whose tasks it runs and whose OPTIONS it reads "
            f"(default: {DEFAULT_TASK_BACKEND_ALIAS})",
        )
        add_worker_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        from martinet.django.runner import run_worker

        try:
            run_worker(options)
        except MartinetError as exc:
            raise CommandError(str(exc)) from None
