"""The worker side of martinet.django: `manage.py martinet_worker` (run_worker) imports
each installed app's tasks module, serves the Django tasks they define on a martinet
Worker built as `martinet-worker` builds one, and closes Django's old database
connections around every attempt (worker hooks)."""

from __future__ import annotations

import argparse
import logging
import traceback
from typing import Any

from django import db  # type: ignore[import-untyped]
from django.apps import apps  # type: ignore[import-untyped]
from django.utils import timezone  # type: ignore[import-untyped]
from django.utils.module_loading import module_has_submodule  # type: ignore[import-untyped]

from martinet import registry
from martinet.attempt import TaskContext as MartinetContext
from martinet.cli.worker import make_worker, serve
from martinet.django.backend import DEFINED, MartinetBackend
from martinet.django.compat import (
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    normalize_json,
    task_backends,
    task_finished,
    task_started,
)
from martinet.errors import Fail, MartinetError
from martinet.worker import Handler

log = logging.getLogger(__name__)


def run_worker(options: dict[str, Any]) -> None:
    """`manage.py martinet_worker`'s work, its options parsed: serve the Django tasks of
    backend options["backend"] (and what @martinet.task registered) until SIGINT or
    SIGTERM; raises MartinetError."""
    alias = options["backend"]
    try:
        backend = task_backends[alias]
    except Exception as exc:  # noqa: BLE001 - Django's InvalidTaskBackend(Error), by version
        raise MartinetError(f"no task backend {alias!r}: {exc}") from None
    if not isinstance(backend, MartinetBackend):
        raise MartinetError(
            f"TASKS[{alias!r}] is {type(backend).__module__}.{type(backend).__name__}, "
            "not martinet.django.MartinetBackend"
        )
    args = argparse.Namespace(**options)
    args.modules = tasks_modules(list(options.get("modules") or ()))
    runner = Runner(alias)
    install_hooks()
    worker, host = make_worker(args, backend.worker_settings(), runner.handlers)
    runner.worker_id = worker.worker_id
    serve(worker, host)


def tasks_modules(extra: list[str]) -> list[str]:
    """The modules a worker imports: the `tasks` module of each installed app that has
    one, then `extra` (an error in one of them stops the worker, naming it)."""
    found = [
        f"{app.name}.tasks" for app in apps.get_app_configs() if module_has_submodule(app.module, "tasks")
    ]
    return found + [module for module in extra if module not in found]


class Runner:
    """The handlers of the Django tasks of backend `alias`, by module path: each runs the
    task this worker's modules defined under that path."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.worker_id = ""  # set once the Worker is made (a task's context names it)

    def handlers(self) -> dict[str, Handler]:
        """What the worker serves, once its modules are imported: each Django task they
        defined for this backend, and the handlers @martinet.task registered."""
        tasks = DEFINED.get(self.alias, {})
        if not tasks and not registry.REGISTRY:
            raise MartinetError(
                f"no Django task of backend {self.alias!r} found in the installed apps' tasks modules "
                "or the modules named; define them with @task in myapp/tasks.py, or name their modules"
            )
        if not tasks:
            log.warning(
                "no Django task of backend %r found; serving @martinet.task handlers only", self.alias
            )
        return {**registry.REGISTRY, **{path: self._handler(task) for path, task in sorted(tasks.items())}}

    def _handler(self, task: Task) -> Handler:
        def run_django_task(ctx: MartinetContext, args: Any = (), kwargs: Any = None) -> Any:
            return self.run(task, ctx, list(args), dict(kwargs or {}))

        return run_django_task

    def run(self, task: Task, ctx: MartinetContext, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """One attempt of `task`: its signals sent, its context given if it takes one, its
        return value made JSON as Django does; what it raises, raised."""
        now = timezone.now()
        result: TaskResult = TaskResult(
            task=task,
            id=str(ctx.id),
            status=TaskResultStatus.RUNNING,
            enqueued_at=None,
            started_at=now,
            finished_at=None,
            last_attempted_at=now,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            # One a started attempt (Django counts a context's attempts so); the workers of
            # the earlier ones are in get_result's, not known here.
            worker_ids=[""] * max(0, ctx.attempt - 1) + [self.worker_id],
        )
        sender = MartinetBackend
        task_started.send(sender, task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            try:
                value = normalize_json(value)
            except (TypeError, ValueError) as exc:
                raise Fail(
                    f"the return value of {task.module_path} cannot be stored as JSON: {exc}"
                ) from None
        except BaseException as exc:
            result.errors.append(
                TaskError(
                    exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
                    traceback="".join(traceback.format_exception(exc)),
                )
            )
            _end(result, TaskResultStatus.FAILED)
            task_finished.send(sender, task_result=result)
            raise
        _end(result, TaskResultStatus.SUCCESSFUL, value)
        task_finished.send(sender, task_result=result)
        return value


def _end(result: TaskResult, status: Any, value: Any = None) -> None:
    object.__setattr__(result, "status", status)  # (frozen, as Django's backends do)
    object.__setattr__(result, "finished_at", timezone.now())
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", value)


def _before(task: Any) -> None:
    """Before every attempt, in its thread, what Django does before a request: its
    connections that are broken or older than CONN_MAX_AGE closed (all of them with the
    default of 0), and the query log DEBUG keeps emptied."""
    db.reset_queries()
    db.close_old_connections()


def _after(task: Any, outcome: str) -> None:
    """After every attempt, in its thread, what Django does after a request."""
    db.close_old_connections()


def install_hooks() -> None:
    """Register the worker hooks that close Django's old connections (once a process)."""
    if _before not in registry.BEFORE:
        registry.before_task(_before)
    if _after not in registry.AFTER:
        registry.after_task(_after)
