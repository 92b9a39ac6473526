"""The `Martinet` object: every public call, against a remote or an embedded daemon,
on blocking sockets. What each call sends and what its reply gives is calls.py's
(`Handle`), shared with martinet.aio's `AsyncMartinet`.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from martinet.calls import Call, Handle, Many, Plan, T
from martinet.client import Client, EventListener
from martinet.errors import MartinetError
from martinet.hooks import EventHooks, Hook
from martinet.query import Page
from martinet.submit import ScheduleId, TaskId, TaskSpec, When
from martinet.validate import check_task

log = logging.getLogger(__name__)


class Martinet(Handle, EventHooks):
    """A handle on a martinet daemon.

    `Martinet.connect(url)` talks to a running `martinet serve`;
    `Martinet(db="sqlite:///app.db")` starts a daemon inside this process
    (in a thread, reached through its socket like any other client).
    """

    def __init__(
        self, db: str | None = None, *, url: str | None = None, timeout: float | None = None, **settings: Any
    ) -> None:
        super().__init__(db, url, timeout, settings)
        self._hooks: list[tuple[tuple[str, ...], str | None, Hook]] = []  # (kinds, name, fn)
        self._listener: EventListener | None = None
        self._since: int | None = None  # where a stopped listener left off
        self.client = Client(self._target, self.settings.timeout, self._keys)

    @classmethod
    def connect(cls, url: str | None = None, timeout: float | None = None, **settings: Any) -> Martinet:
        """A handle on the daemon at `url` (default: MARTINET_URL, then tcp://127.0.0.1:8008)."""
        return cls(url=url, timeout=timeout, **settings)

    def close(self) -> None:
        """Stop the event listener and, when embedded, the daemon (after committing its turn)."""
        self.stop_listening()
        self.client.close()
        self._stop_embedded()

    def __enter__(self) -> Martinet:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self, plan: Plan[T]) -> T:
        """Make a plan's requests one after the other; each reply goes back to it, and so
        does the error a request raised."""
        resume: Callable[[Any], Call] = plan.send
        answer: Any = None
        while True:
            try:
                call = resume(answer)
            except StopIteration as done:
                return done.value
            try:
                answer = self.client.request(call.op, call.fields, timeout=call.timeout, resend=call.resend)
                resume = plan.send
            except MartinetError as exc:
                answer, resume = exc, plan.throw

    # ---- submitting ----------------------------------------------------------

    def execute(self, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any) -> TaskId:
        """Run a task as soon as a worker is free; returns its id once it is committed.

        `task` is a name ("resize") or a dict with "name" and optionally
        "username", "description", "queue", "priority", "max_attempts",
        "time_limit" (seconds an attempt may run, the CLI's --time-limit; "timeout"
        is its older name), "retry_base", "retry_factor", "retry_cap". Options: the
        same keys, plus `request_id` (a retried call never creates twice),
        `key` with `unique` ("active": one unfinished task per key; "always":
        one task per key ever) and `after` (task ids that must succeed first).

        The returned id's `.warning` says when no connected worker would run the task.

        The request is sent again while the daemon does not answer, for as long
        as the timeout allows. Then DaemonUnavailable says the task may have been
        accepted all the same, and carries `request_id`: calling again with it
        returns that task if it was, and never creates a second one.
        """
        return self._run(self._submit("execute", *self._submission(task, args, options)))

    def enqueue_in(
        self, connection: Any, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any
    ) -> TaskId:
        """Enqueue a task inside your application's own PostgreSQL transaction: it exists
        if and only if that transaction commits (rolled back, no worker ever sees it).

        `connection` is the one your transaction runs on: a psycopg (2 or 3) connection
        or cursor, Django's `django.db.connection`, or a SQLAlchemy Connection or
        Session, on the database `martinet serve` uses. `task`, `args` and the
        options are those of `execute` (`run_at` too, as in `schedule`). The daemon
        hears of the task when you commit (PostgreSQL's NOTIFY) and dispatches it at
        once. Nothing goes through the daemon's socket: this handle's settings give the
        defaults (max_attempts, limits, timezone), as they would the daemon's if both
        read the same configuration.

        Returns the task's id; `.created` is False when a request_id or a key in use
        named an existing task (in the same transaction, a key taken by a task not
        committed yet waits for that transaction, as PostgreSQL's unique indexes do)."""
        from martinet.store.app_transaction import submit_in  # only its users import the store

        fields = self._task_fields(task, args, options)
        self._read_run_at(fields)
        spec = check_task(fields, self.limits, self.settings.max_attempts)
        task_id, created = submit_in(connection, spec, time.time())
        return TaskId(task_id, created)

    def execute_many(
        self, tasks: Sequence[tuple[TaskSpec, dict[str, Any] | None]], **options: Any
    ) -> list[TaskId]:
        """Submit many tasks: up to 1,000 (and half of max_payload) go in one request and
        one commit, all of them accepted or none; more go in several such requests, each
        committed on its own, the next sent while the daemon commits the one before.

        `tasks` is a list of (task, args) pairs, `task` as in `execute`;
        `options` apply to every one (a `request_id` makes one per task, so a
        retried batch creates nothing twice). Returns their ids, in order.

        Should a request be refused (or a task be invalid, or the daemon not answer),
        the error raised has `accepted`: the ids of the tasks known to be committed all
        the same, those of the requests before it and of the one sent after it, if that
        one was; and `request_id`, the one given or made here. Calling again with the
        same tasks and that `request_id` creates nothing twice.
        """
        many = Many(self, tasks, options)
        try:
            for reply in self.client.exchange(many.requests(), in_flight=2):
                many.take(reply)
        except MartinetError as exc:
            many.fail(exc)
        return many.result()

    def schedule(
        self, when_: When, task: TaskSpec, args: dict[str, Any] | None = None, **options: Any
    ) -> TaskId:
        """Run a task at a time: "in 20 minutes", "tomorrow at 9am", a datetime, a timedelta."""
        options = {**options, "run_at": when_}
        return self._run(self._submit("schedule", *self._submission(task, args, options)))

    def every(
        self,
        spec: str | timedelta | int | float,
        task: TaskSpec,
        args: dict[str, Any] | None = None,
        **options: Any,
    ) -> ScheduleId:
        """Run a task repeatedly: "30 minutes", "1 hour 30 minutes", or a cron expression.

        The first run is one interval from now (cron: the next match), unless
        `run_at` says when ("midnight", "in 5 minutes", a datetime). Options
        (in the task dict or as keywords): `timezone` (IANA; cron and
        wall-clock times follow it), `until` (no run after it), `count` (this
        many runs, then the schedule is finished), `misfire` ("once", "all"
        or "skip": what to do with runs missed while the daemon was down) and
        `misfire_grace` (how late a missed run is still worth running: seconds
        or "10 minutes"). Returns the schedule's id, like "s3".
        """
        return self._run(self._every(spec, task, args, options))

    # ---- reading -----------------------------------------------------------------

    def get(self, task_or_schedule_id: int | str) -> dict[str, Any]:
        """The record of a task (status, progress, attempt, result, error, times) or schedule."""
        return self.client.request("get", {"id": task_or_schedule_id})["item"]

    def show(self, task_or_schedule_id: int | str) -> dict[str, Any]:
        """`get` plus history: a task's attempts, why it waits, and the tasks it waits on
        ("parents") and that wait on it ("children"); a schedule's recent runs and next
        five due times ("upcoming")."""
        return self.client.request("show", {"id": task_or_schedule_id})["item"]

    def list(
        self,
        status: str | list[str] | None = None,
        name: str | None = None,
        username: str | None = None,
        limit: int = 50,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Tasks matching the filters, newest first: one page of `search` (its items only)."""
        return self.search(status=status, name=name, username=username, limit=limit, **filters).items

    def search(
        self, *, limit: int = 50, after: str | None = None, sort: str = "created", **filters: Any
    ) -> Page:
        """One page of the tasks that match every filter given, and the cursor of the next.

        Filters: `status` (one or a list), `name` ("resize", or a prefix:
        "resize.*"), `queue`, `username`, `key`, `schedule` ("s7"), `text` (in
        the description, ignoring case), `error` (the last error's type, like
        "TimeoutError"), `since` / `until` (read like `schedule`'s times: "2
        hours ago", "yesterday", a datetime) applied to `time` ("created", the
        default; "due"; "finished"), and `where`, payload fields that must
        equal a string, number, bool or None: {"image_id": 7}, {"user":
        {"email": "ana@example.com"}} or {"user.email": ...}.

        Rows come newest first by `sort` ("created", "due" or "finished"; the
        last lists finished tasks only), then by id. Pass the returned
        `Page.next` as `after` for the following page (None: no more); pages
        stay exact while tasks are added.
        """
        return self._run(self._search(limit, after, sort, filters))

    def count(self, **filters: Any) -> dict[str, int]:
        """How many tasks match the filters (as for `search`), by status: {"dead": 3, ...}."""
        return self.client.request("list", {"filters": self._filters(filters), "count": True})["counts"]

    def schedules(self) -> builtins.list[dict[str, Any]]:
        """Every schedule that has not been removed (`show(sid)` adds its next five due times)."""
        return self.client.request("schedules")["items"]

    def wait(self, task_id: int | str, timeout: float | None = 30.0) -> Any:
        """Block until the task ends, at most `timeout` seconds (None: until it ends);
        return its result, or raise TaskFailed (dead or cancelled: `.info["status"]`) or
        WaitTimeout (with the task's `.status` and why it `.waiting`, when known)."""
        return self._run(self._wait(task_id, timeout))

    def ping(self) -> dict[str, Any]:
        """The daemon's epoch, protocol version, number of connected workers, `database_id`
        (its database's identity, which workers' journals check), and `database`: its
        database's failure while it lasts (error, since, failures), else None."""
        return self.client.request("ping")

    # ---- changing ------------------------------------------------------------------

    def revoke(self, task_or_schedule_id: int | str) -> str:
        """Cancel a waiting task, ask a running one to stop, or remove a schedule."""
        return self.client.request("revoke", {"id": task_or_schedule_id})["status"]

    def update(
        self,
        task_or_schedule_id: int | str,
        args: dict[str, Any] | None = None,
        *,
        every: str | timedelta | int | float | None = None,
        timezone: str | None = None,
    ) -> None:
        """New args for a schedule's future runs or a task not yet started; a schedule may
        also get a new `every` (its due times start afresh from now) and `timezone`."""
        self._run(self._update(task_or_schedule_id, args, every, timezone))

    def retry(self, task_id: int, attempts: int | None = None) -> None:
        """Run a dead, stalled, cancelled or failed task again now, with a fresh set of attempts
        (as many as it was given at submit, or `attempts`)."""
        self.client.request("retry", {"id": task_id, "attempts": attempts})

    def stall(self, task_id: int, reason: str | None = None) -> None:
        """Hold a waiting task: it is not dispatched until `retry`."""
        self.client.request("stall", {"id": task_id, "reason": reason})

    def queues(self) -> builtins.list[dict[str, Any]]:
        """Every queue: its settings, how many of its tasks are in each state, how many
        run, how long its oldest ready task has waited, and how many workers serve it."""
        return self.client.request("queues")["items"]

    def daemons(self) -> builtins.list[dict[str, Any]]:
        """The daemons that use this daemon's database, the latest started first: id (its
        epoch), state (serving, silent: no heartbeat for 3 intervals, or stopped), address
        (its client socket), host, pid, version, started_at, beat_at, stopped_at, and
        `this` for the one answering."""
        return self.client.request("daemons")["items"]

    def finished_per_minute(self) -> builtins.list[dict[str, Any]]:
        """The tasks that reached their end through this daemon in each of the last 60
        minutes, oldest first: {"minute": its start, "succeeded": n, "dead": n, "cancelled":
        n}; counted since the daemon started (its memory, not the table)."""
        return self.client.request("finished")["per_minute"]

    def workers(self) -> builtins.list[dict[str, Any]]:
        """The workers connected to this daemon: id, names (the tasks it runs), queues
        (None: all), capacity and threads, held (the ids of the tasks it runs or holds
        in its prefetch), stuck (past a time limit, unanswered) and last_seen_seconds."""
        return self.client.request("workers")["items"]

    def pause_queue(self, name: str) -> None:
        """Stop dispatching tasks of queue `name` (it still accepts them), on every worker at once."""
        self.client.request("pause_queue", {"name": name})

    def resume_queue(self, name: str) -> None:
        """Dispatch the queue's tasks again."""
        self.client.request("resume_queue", {"name": name})

    def set_queue(
        self,
        name: str,
        concurrency: int | str | None = None,
        rate: str | None = None,
        weight: int | None = None,
        order: str | None = None,
    ) -> None:
        """Change a queue's settings while running, fleet-wide: `concurrency` (most
        running at once; "none" clears it), `rate` ("100/minute"; "none" clears it),
        `weight` (its share of free slots among busy queues), `order` ("fifo" or "random")."""
        self.client.request(
            "set_queue",
            {"name": name, "concurrency": concurrency, "rate": rate, "weight": weight, "order": order},
        )

    def task_limits(self) -> builtins.list[dict[str, Any]]:
        """The task names with fleet-wide limits: name, concurrency, rate, running."""
        return self.client.request("limits")["items"]

    def set_task_limit(
        self, name: str, concurrency: int | str | None = None, rate: str | None = None
    ) -> None:
        """Limit task `name` fleet-wide, while running: `concurrency` (most held at once;
        "none" clears it), `rate` ("10/second"; "none" clears it). What is not given stays."""
        self.client.request("set_limit", {"name": name, "concurrency": concurrency, "rate": rate})

    def prune(
        self,
        older_than: str | timedelta | int | float,
        status: str | builtins.list[str] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete finished tasks (`status`: succeeded, cancelled and/or dead; default all
        three) that finished more than `older_than` ago ("30 days", a timedelta, seconds;
        0: every finished task), with their attempt rows; with `dry_run`, only count them.

        Returns {"tasks": n, "attempts": n, "dry_run": bool, "before": the cutoff}. Each
        request to the daemon handles one bounded batch, so the daemon's loop is never
        held up for long; this repeats them until none is left. Tasks another unfinished
        task waits on, and those whose key is kept for good, stay (as with retention).
        """
        return self._run(self._prune(older_than, status, dry_run))

    def pause(self, schedule_id: str) -> None:
        """Stop a schedule from creating runs until `resume`."""
        self.client.request("pause", {"id": schedule_id})

    def resume(self, schedule_id: str) -> None:
        """Let a paused schedule run again, from its next due time after now (no catch-up)."""
        self.client.request("resume", {"id": schedule_id})
