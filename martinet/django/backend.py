"""MartinetBackend: Django's task framework on martinet (docs/django.md).

A Django task's module path ("myapp.tasks.send_welcome") is the martinet task's name;
its args and kwargs travel as the task's args, `{"args": [...], "kwargs": {...}}`, in
JSON; `run_after`, `priority` and `queue_name` are martinet's run_at, priority and
queue. `get_result` reads the martinet task back (results.py says it Django's way).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.utils import timezone  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from martinet import config, rules
from martinet.api import Martinet
from martinet.django.compat import (
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
)
from martinet.django.results import result_of
from martinet.errors import BadInput, ConfigError, TaskNotFound
from martinet.submit import task_fields
from martinet.validate import Limits, check_name, check_task

log = logging.getLogger(__name__)

# What OPTIONS["task_options"] may set for every task of a backend; the rest of a task's
# fields come from Django (name, queue, priority, run_after).
TASK_OPTIONS = ("max_attempts", "time_limit", "retry_base", "retry_factor", "retry_cap")

# Every Django task a MartinetBackend validated in this process (a task's definition is
# validated when its module is imported), by backend alias, then module path: what
# `manage.py martinet_worker` serves, and how results find their task.
DEFINED: dict[str, dict[str, Task]] = {}

# One Martinet handle for each set of settings, shared by the process's backends: Django
# makes a backend per thread, and a handle already keeps a socket per thread.
_handles: dict[str, Martinet] = {}
_handles_lock = threading.Lock()


class MartinetBackend(BaseTaskBackend):
    """Runs Django tasks on martinet: `"BACKEND": "martinet.django.MartinetBackend"` in
    TASKS. OPTIONS: martinet's settings, by the names of its config file (`url`,
    `timeout`, `key_file`, `server_key`, and the worker's `connect`, `worker_port`,
    ...), and `task_options`, submit options for every task (TASK_OPTIONS)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        where = f"TASKS[{alias!r}]['OPTIONS']"
        options = {str(key).lower(): value for key, value in dict(self.options).items()}
        task_options = options.pop("task_options", None) or {}
        if "db" in options:
            raise ImproperlyConfigured(
                f"{where}: 'db' is the daemon's setting; run `martinet serve` and give its 'url'"
            )
        try:
            loaded = config.load(flags=options)  # unknown names and bad values fail here
        except ConfigError as exc:
            raise ImproperlyConfigured(f"{where}: {exc}") from None
        self.limits = Limits(loaded.max_payload, loaded.max_name_length)
        if not isinstance(task_options, dict) or set(task_options) - set(TASK_OPTIONS):
            raise ImproperlyConfigured(
                f"{where}['task_options'] must be a dict of some of {', '.join(TASK_OPTIONS)}, "
                f"not {task_options!r}"
            )
        try:
            check_task(task_fields("x", {}, dict(task_options), self.limits), self.limits, 1)
        except BadInput as exc:
            raise ImproperlyConfigured(f"{where}['task_options']: {exc}") from None
        self.settings: dict[str, Any] = options  # martinet's settings: the client's, and the worker's
        self._handle_key = json.dumps(options, sort_keys=True, default=str)  # (see martinet)
        self.task_options: dict[str, Any] = dict(task_options)

    @property
    def martinet(self) -> Martinet:
        """The Martinet handle of these settings (made at first use, shared in the process)."""
        with _handles_lock:
            handle = _handles.get(self._handle_key)
            if handle is None:
                handle = _handles[self._handle_key] = Martinet.connect(**self.settings)
            return handle

    def worker_settings(self) -> dict[str, Any]:
        """The settings `manage.py martinet_worker` takes from OPTIONS: all of them, and
        `connect` from the host of `url` when OPTIONS name a url and no connect."""
        found = dict(self.settings)
        if "url" in found and "connect" not in found:
            found["connect"] = config.hosts_of(str(found["url"]))
        return found

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        try:
            rules.check_queue_name(task.queue_name)
            check_name(task.module_path, self.limits)
        except BadInput as exc:
            raise InvalidTask(str(exc)) from None
        DEFINED.setdefault(self.alias, {}).setdefault(task.module_path, task)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Submit a run of `task` to martinet; its TaskResult's id is the martinet task's id."""
        self.validate_task(task)
        try:
            args, kwargs = normalize_json(list(args)), normalize_json(dict(kwargs))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the arguments of {task.module_path} cannot travel as JSON ({exc}): "
                "pass ids, text, numbers, booleans, lists and dicts"
            ) from None
        fields = {"name": task.module_path, "queue": task.queue_name, "priority": task.priority}
        payload = {"args": args, "kwargs": kwargs}
        due = self._due(task.run_after)
        if due is None:
            task_id = self.martinet.execute({**fields, **self.task_options}, payload)
        else:
            task_id = self.martinet.schedule(due, {**fields, **self.task_options}, payload)
        if task_id.warning:
            log.warning(
                "Django task %s (martinet task %s): %s; it waits until one does "
                "(does `manage.py martinet_worker` import its module?)",
                task.module_path,
                task_id,
                task_id.warning,
            )
        result: TaskResult = TaskResult(
            task=task,
            id=str(task_id),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        """The martinet task `result_id` as a TaskResult; TaskResultDoesNotExist when there
        is none, or when it is no Django task this process can import."""
        if not str(result_id).isdigit():
            raise TaskResultDoesNotExist(f"{result_id!r} is not a martinet task id")
        try:
            info = self.martinet.show(int(result_id))
        except TaskNotFound:
            raise TaskResultDoesNotExist(f"no martinet task {result_id}") from None
        task = self._task_of(info)
        return result_of(info, task, self.alias, None if settings.USE_TZ else timezone.make_naive)

    def _due(self, run_after: datetime | None) -> datetime | None:
        """When a task runs after: None for now (no run_after, or one already past); a
        naive run_after (USE_TZ off) is in Django's current time zone."""
        if run_after is None:
            return None
        if timezone.is_naive(run_after):
            run_after = timezone.make_aware(run_after)
        return run_after if run_after > datetime.now(UTC) else None

    def _task_of(self, info: dict[str, Any]) -> Task:
        """The Django task a martinet record runs, as it was enqueued (queue, priority)."""
        path = info["name"]
        task = DEFINED.get(self.alias, {}).get(path)
        if task is None:
            try:
                task = import_string(path)
            except ImportError as exc:
                raise TaskResultDoesNotExist(
                    f"martinet task {info['id']} runs {path!r}, no Django task this process can import ({exc})"
                ) from None
            if not isinstance(task, Task):
                raise TaskResultDoesNotExist(
                    f"martinet task {info['id']} runs {path!r}, which is no Django task"
                )
        changes: dict[str, Any] = {}
        if task.backend != self.alias:
            changes["backend"] = self.alias
        if task.queue_name != info.get("queue"):
            changes["queue_name"] = info.get("queue")
        priority = info.get("priority")
        if task.priority != priority and isinstance(priority, int):
            if TASK_MIN_PRIORITY <= priority <= TASK_MAX_PRIORITY:
                changes["priority"] = priority
        if changes:
            try:
                task = task.using(**changes)
            except InvalidTask:  # (a queue the settings no longer name): the task as defined
                pass
        return task


def close_handles() -> None:
    """Close the Martinet handles the backends made (their sockets and listeners): at the
    end of a test, or of a program that stops without ending its process."""
    with _handles_lock:
        handles = list(_handles.values())
        _handles.clear()
    for handle in handles:
        handle.close()
