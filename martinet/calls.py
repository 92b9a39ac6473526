"""What a call of the public API sends and what its reply gives, written once for
`api.Martinet` and `aio.AsyncMartinet` (each owns its sockets): `Handle` holds the
settings, limits, keys and an embedded daemon, and each call's requests as a `Plan`;
`Many` is one execute_many.

Time expressions are read here, in the client, so the daemon's loop never runs the
(slow) English parser: it receives UTC timestamps.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from martinet import config, protocol, when
from martinet.errors import DaemonUnavailable, MartinetError, TaskFailed, WaitTimeout
from martinet.keys import ClientKeys
from martinet.messages import Reply, Request
from martinet.query import Page, check_filter_names
from martinet.rules import DEFAULT_QUEUE
from martinet.submit import (
    BATCH,
    EVERY_KEYS,
    TASK_KEYS,
    ScheduleId,
    TaskId,
    TaskSpec,
    made_here,
    new_request_id,
    read_run_at,
    task_fields,
    unconfirmed,
)
from martinet.validate import Limits, check_args

if TYPE_CHECKING:
    from martinet.server.loop import Daemon

log = logging.getLogger("martinet.api")

# wait(timeout=None) asks the daemon in rounds of this many seconds (it holds a wait
# for an hour at most), so a wait "until done" never depends on one long request.
WAIT_ROUND = 60.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One request of a Plan: its op and fields, and `timeout` and `resend` as
    Client.request takes them."""

    op: str
    fields: dict[str, Any]
    timeout: float | None = None
    resend: bool = True


# A call's requests and what it makes of their replies, written once for Martinet and
# AsyncMartinet (a call that sends an id and reads one key of its reply does that
# itself): a generator that yields each request (a Call), is sent its reply's fields
# (or has the error it raised thrown in), and returns the call's result.
Plan = Generator[Call, dict[str, Any], T]


class Handle:
    """What Martinet and martinet.aio.AsyncMartinet share: their settings, limits and
    keys, an embedded daemon, and the calls' requests and what their replies give, read
    and checked here (the sockets are their clients')."""

    def __init__(
        self, db: str | None, url: str | None, timeout: float | None, settings: dict[str, Any]
    ) -> None:
        self.settings = config.load(flags={"db": db, "url": url, "timeout": timeout, **settings})
        self.limits = Limits(self.settings.max_payload, self.settings.max_name_length)
        self._embedded: tuple[Daemon, threading.Thread] | None = None  # Martinet(db=...)
        self._target = self._start_embedded() if db is not None else self.settings.url  # its url(s)
        self._keys = ClientKeys.of(self.settings.key_file, self.settings.server_key)

    def _start_embedded(self) -> str:
        from martinet.server.loop import Daemon  # only embedded users pay for the daemon's imports

        daemon = Daemon(self.settings, port_option="Martinet(db=..., {role}_port=N) (0: any free port)")
        daemon.open()
        assert daemon.core is not None
        daemon.core.store.close()  # this thread's connection: the loop's thread opens its own
        thread = threading.Thread(target=daemon.run, name="martinet-daemon", daemon=True)
        self._embedded = (daemon, thread)
        thread.start()
        host = self.settings.bind if self.settings.bind not in ("0.0.0.0", "*", "") else "127.0.0.1"
        return f"tcp://{host}:{daemon.ports['client']}"

    @property
    def ports(self) -> dict[str, int]:
        """The ports of an embedded daemon (useful when they were chosen at random with 0)."""
        return dict(self._embedded[0].ports) if self._embedded else {}

    def _stop_embedded(self) -> None:
        """Stop an embedded daemon, if any (after committing its turn)."""
        if self._embedded is not None:
            daemon, thread = self._embedded
            daemon.stop()
            thread.join(timeout=10)
            self._embedded = None

    def _task_fields(
        self,
        task: TaskSpec,
        args: dict[str, Any] | None,
        options: dict[str, Any],
        known: set[str] = TASK_KEYS,
    ) -> dict[str, Any]:
        return task_fields(task, args, options, self.limits, known)

    def _read_run_at(self, fields: dict[str, Any]) -> None:
        read_run_at(fields, self.settings.timezone)

    def _submission(
        self, task: TaskSpec, args: dict[str, Any] | None, options: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """execute's or schedule's fields, times read, and whether the request id is made here."""
        made_rid = options.get("request_id") is None
        fields = self._task_fields(task, args, options)
        self._read_run_at(fields)
        return fields, made_rid

    def _submit(self, op: str, fields: dict[str, Any], made_rid: bool) -> Plan[TaskId]:
        try:
            reply = yield Call(op, {"rid": fields["request_id"], **fields})
        except DaemonUnavailable as exc:
            raise unconfirmed(exc, "the task", fields["request_id"]) from None
        created = made_here(reply.get("created", True), made_rid, bool(fields.get("key")))
        return TaskId(reply["id"], created, reply.get("warning"))

    def _every(
        self,
        spec: str | timedelta | int | float,
        task: TaskSpec,
        args: dict[str, Any] | None,
        options: dict[str, Any],
    ) -> Plan[ScheduleId]:
        fields = self._task_fields(task, args, options, TASK_KEYS | EVERY_KEYS)
        tz = when.check_timezone(fields.pop("timezone", None) or self.settings.timezone)
        # Early, clear errors; the daemon checks again, with its min_interval (the one that
        # counts: 0 here keeps only the rules every daemon has).
        recurrence = when.parse_every(spec, tz, 0)
        fields["every"] = recurrence.spec if recurrence.kind == "cron" else float(recurrence.spec)
        fields["timezone"] = tz
        now = when.utcnow()
        run_at = fields.pop("run_at", None)
        if run_at is not None:
            fields["first_due"] = when.parse_when(run_at, now, tz).timestamp()
        if fields.get("until") is not None:
            fields["until"] = when.parse_when(fields["until"], now, tz).timestamp()
        grace = fields.get("misfire_grace")
        if grace is not None and not isinstance(grace, (int, float)):
            fields["misfire_grace"] = when.parse_interval(grace).total_seconds()
        try:
            reply = yield Call("every", {"rid": fields["request_id"], **fields})
        except DaemonUnavailable as exc:
            raise unconfirmed(exc, "the schedule", fields["request_id"]) from None
        return ScheduleId(reply["id"], reply.get("created", True), reply.get("warning"))

    def _search(self, limit: int, after: str | None, sort: str, filters: dict[str, Any]) -> Plan[Page]:
        fields = {"filters": self._filters(filters), "limit": limit, "sort": sort, "after": after}
        reply = yield Call("list", fields)
        return Page(reply["items"], reply.get("next"))

    def _filters(self, filters: dict[str, Any]) -> dict[str, Any]:
        """Filters for the wire: Nones dropped, times read here (in the configured zone)."""
        wire = check_filter_names({k: v for k, v in filters.items() if v is not None})
        now = when.utcnow()
        for key in ("since", "until"):
            if key in wire:
                wire[key] = when.parse_when(wire[key], now, self.settings.timezone).timestamp()
        return wire

    def _wait(self, task_id: int | str, timeout: float | None) -> Plan[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_ROUND if deadline is None else max(0.0, deadline - time.monotonic())
            reply = yield Call(
                "wait",
                {"id": task_id, "wait_for": min(left, WAIT_ROUND)},
                timeout=min(left, WAIT_ROUND) + self.settings.timeout,
                resend=False,
            )
            if reply.get("done") or (deadline is not None and time.monotonic() >= deadline):
                break
        if not reply.get("done"):
            status, why = reply.get("status"), reply.get("waiting")
            detail = (
                f" (still {status}: {why})" if status and why else (f" (still {status})" if status else "")
            )
            raise WaitTimeout(f"task {task_id} did not finish within {timeout:g}s{detail}", status, why)
        item = reply["item"]
        if item["status"] != "succeeded":
            raise TaskFailed.of(item)
        return item["result"]

    def _update(
        self,
        task_or_schedule_id: int | str,
        args: dict[str, Any] | None,
        every: str | timedelta | int | float | None,
        timezone: str | None,
    ) -> Plan[None]:
        fields: dict[str, Any] = {"id": task_or_schedule_id}
        if args is not None:
            fields["args"] = check_args(args, self.limits)
        if timezone is not None:
            fields["timezone"] = when.check_timezone(timezone)
        if every is not None:
            recurrence = when.parse_every(every, timezone or self.settings.timezone, 0)  # see every()
            fields["every"] = recurrence.spec if recurrence.kind == "cron" else float(recurrence.spec)
        yield Call("update", fields)

    def _prune(
        self,
        older_than: str | timedelta | int | float,
        status: str | builtins.list[str] | None,
        dry_run: bool,
    ) -> Plan[dict[str, Any]]:
        fields: dict[str, Any] = {
            "older_than": when.parse_age(older_than),
            "status": [status] if isinstance(status, str) else status,
            "dry_run": dry_run,
        }
        tasks = attempts = 0
        while True:
            reply = yield Call("prune", fields)
            tasks += reply["tasks"]
            attempts += reply["attempts"]
            if not reply["more"]:
                break
            fields.update(before=reply["before"], after=reply["after"])  # the same cutoff, onwards
        before = datetime.fromtimestamp(reply["before"], UTC).isoformat(timespec="seconds")
        return {"tasks": tasks, "attempts": attempts, "dry_run": dry_run, "before": before}


class Many:
    """One execute_many call: its tasks as requests, each made as the one before goes
    out (`requests`), the ids their replies give (`take`), and the error to raise with
    what was accepted all the same (`fail`, `result`)."""

    def __init__(
        self, handle: Handle, tasks: Sequence[tuple[TaskSpec, dict[str, Any] | None]], options: dict[str, Any]
    ) -> None:
        # One per item, so that a retried batch is safe; all from one base, so that the
        # unique index on request ids takes a batch in one place.
        self.made_rid = options.get("request_id") is None
        self.base_rid = options.pop("request_id", None) or new_request_id()
        self.handle, self.tasks, self.options = handle, tasks, options
        self.ids: list[TaskId] = []
        self.refused: MartinetError | None = None
        self.spans: list[tuple[int, int]] = []  # each request's first and last task, as it is made
        self.kinds: list[tuple[str, str]] = []  # each task's name and queue, for the daemon's warnings
        self.keyed: list[bool] = []  # whether each task has a key (see made_here)
        self.replies = 0

    def requests(self) -> Iterator[tuple[str, list[bytes]]]:
        """The tasks as execute_many requests of up to BATCH tasks and half of max_payload,
        each task checked and encoded once, as the request before goes out; each request's
        first and last task go to `spans`, each task's name and queue to `kinds`, whether
        it has a key to `keyed`."""
        chunk: list[bytes] = []
        size = 0
        for i, (task, args) in enumerate(self.tasks):
            fields = self.handle._task_fields(
                task, args, {**self.options, "request_id": f"{self.base_rid}:{i}"}
            )
            self.handle._read_run_at(fields)
            self.kinds.append((fields["name"], fields.get("queue") or DEFAULT_QUEUE))
            self.keyed.append(bool(fields.get("key")))
            item = protocol.dumps(fields)
            if chunk and (len(chunk) == BATCH or size + len(item) > self.handle.limits.max_payload // 2):
                yield self._request(i - len(chunk), chunk)
                chunk, size = [], 0
            chunk.append(item)
            size += len(item)
        if chunk:
            yield self._request(len(self.tasks) - len(chunk), chunk)

    def _request(self, first: int, items: list[bytes]) -> tuple[str, list[bytes]]:
        self.spans.append((first, first + len(items) - 1))
        rid = f"{self.base_rid}:{first}"  # the first task's request id
        return rid, Request.batch("execute_many", rid, "tasks", items)

    def take(self, reply: Reply) -> None:
        """The next request's reply: its tasks' ids, or its refusal (the first is kept)."""
        n, self.replies = self.replies, self.replies + 1
        if reply.ok:
            got = reply.fields
            warnings = {(w["name"], w["queue"]): w["warning"] for w in got.get("warnings") or ()}
            first = self.spans[n][0]
            self.ids.extend(
                TaskId(
                    i,
                    made_here(c, self.made_rid, self.keyed[first + k]),
                    warnings.get(self.kinds[first + k]) if warnings else None,
                )
                for k, (i, c) in enumerate(zip(got["ids"], got["created"], strict=True))
            )
        elif self.refused is None:
            refused = reply.refusal()
            self.refused = type(refused)(
                f"{refused} (in the request of tasks {self.spans[n][0]} to {self.spans[n][1]})"
            )

    def fail(self, exc: MartinetError) -> None:
        """The error that ended the exchange (a task that cannot be sent, no answer)."""
        if isinstance(exc, DaemonUnavailable):
            exc = unconfirmed(exc, "the tasks not confirmed yet", self.base_rid, "the same tasks and ")
        self.refused = exc

    def result(self) -> list[TaskId]:
        """The tasks' ids, in order; or the error, with `accepted` and `request_id`."""
        if self.refused is None:
            return self.ids
        refused = self.refused
        if self.ids:
            refused = type(refused)(
                f"{refused}; {len(self.ids)} of the {len(self.tasks)} tasks were accepted (see .accepted)"
            )
        refused.accepted = self.ids
        refused.request_id = self.base_rid
        raise refused
