"""An attempt's end: what its worker reported (succeeded, failed, released), or what
the daemon decided without it (lost, interrupted, timed out); progress while it runs;
and an answer that comes late for an attempt the daemon had declared lost.

Every answer is fenced by its attempt: it changes the task only while that attempt
is the task's current one, held by that worker (see the package's docstring)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import peewee

from martinet.errors import StoreError
from martinet.messages.outcome import Outcome, OutcomeKind
from martinet.models import Task
from martinet.present import iso
from martinet.retry import RetryPolicy
from martinet.states import HELD, TERMINAL, AttemptOutcome, TaskState, sql_list
from martinet.store.dependents import Dependents
from martinet.store.pg import PgDatabase
from martinet.store.rows import (
    ATTEMPT_COLUMNS,
    ERROR_COLUMNS,
    FENCE,
    Ending,
    RunningRow,
    attempt_row,
    attempt_values,
    result_text,
)

_HELD = sql_list(HELD)
_STARTED_AT = RunningRow._fields.index("started_at")
_CANCELLED = OutcomeKind.CANCELLED
# Where a lost attempt leaves its task until it is claimed again (or, dead, for good).
_LOSS_LEFT = sql_list((TaskState.QUEUED, TaskState.FAILED, TaskState.STALLED, TaskState.DEAD))


class Outcomes(Dependents):
    def progress(
        self, task_id: int, attempt: int, worker: str, value: float | None, message: str | None, now: float
    ) -> bool:
        """The held attempt's progress and message (latest wins); False when fenced out.
        Progress of a leased attempt implies its start (its start report was lost): it is
        running from `now`."""
        Task = self.Task
        n: int = (
            Task.update(
                progress=value,
                progress_message=message,
                updated_at=now,
                status=TaskState.RUNNING,
                started_at=peewee.fn.COALESCE(Task.started_at, now),
            )
            .where(
                Task.id == task_id,
                Task.attempt == attempt,
                Task.worker == worker,
                Task.status.in_(HELD),
            )
            .execute()
        )
        if n == 1:
            self._keep_start(task_id, attempt, worker, now)
        return n == 1

    def end_attempts(
        self, outcomes: list[Outcome], now: float, started: Collection[tuple[int, int]] = ()
    ) -> list[dict[str, Any] | None]:
        """What workers reported, in one go: for each outcome, what became of its task,
        or None when it is fenced out (an old attempt, another worker, not held, or
        already ended earlier in the list). The held rows are read with one query; a
        leased one ends as a running one would (its start report was lost, or never sent:
        its attempt row has no started_at).

        Each outcome's kind is succeeded, failed or released (see complete, fail and
        release), or cancelled: a task asked to stop before it started, written as a
        success with no result, as its worker sends it (the daemon cannot tell them apart:
        the store ends it cancelled either way, for it was asked to stop). An attempt ends once: a repeat in the list, or a resend later, is None.
        `started` holds the (id, attempt) of outcomes whose start came with them and was
        not written (server.outcomes folds it in): a leased one of those ends as running
        from `now`, in the same UPDATE (one statement less a task, and on PostgreSQL one
        round trip less a turn).
        Call it in a transaction (a savepoint): the rows it reads stay as read until it
        writes (locked FOR UPDATE on PostgreSQL and MySQL; SQLite's write lock). Should
        one change anyway, it raises StoreError, and the savepoint undoes the batch."""
        ids = sorted({o.task_id for o in outcomes})
        kept = self._kept_rows(outcomes)
        running = self._held_rows(ids) if kept is None else kept
        for task_id in ids:
            self.held.pop(task_id, None)  # (ended now, or not held by this store any more)
        ended: list[tuple[int, RunningRow, Ending]] = []  # (index in outcomes, row, what becomes of it)
        fences: list[list[Any]] = []  # the kept rows' values that may change while held (as_kept)
        late: list[tuple[int, Outcome]] = []
        for index, o in enumerate(outcomes):
            if o.kind == _CANCELLED:
                o = o._replace(kind=OutcomeKind.SUCCEEDED, result=None)
            row = running.get(o.task_id)
            if row is None or row.attempt != o.attempt or row.worker != o.worker:
                if o.kind != OutcomeKind.RELEASED and (row is None or row.attempt == o.attempt):
                    late.append((index, o))
                continue
            del running[o.task_id]  # an attempt ends once
            fences.append([row.worker, row.started_at, row.cancel_requested, row.has_dependents])
            started_now = row.started_at is None and (o.task_id, o.attempt) in started
            if started_now:  # (as _replace(started_at=now) would, in half its time: most of a drain)
                row = RunningRow._make((*row[:_STARTED_AT], now, *row[_STARTED_AT + 1 :]))
            ending = self._ending(row, o.kind, now, result=o.result, error=o.error, retry_in=o.retry_in,
                                  final=o.final)  # fmt: skip
            if started_now:
                ending.changes["started_at"] = now
            ended.append((index, row, ending))
        self._write_endings(
            [(row, ending) for _index, row, ending in ended], now, None if kept is None else fences
        )
        infos: list[dict[str, Any] | None] = [None] * len(outcomes)
        for index, row, ending in ended:
            infos[index] = self._ended_info(row, ending, now)
        for index, o in late:
            if infos[index] is None:
                infos[index] = self._late_outcome(o, now)
        return infos

    def _held_rows(self, ids: list[int]) -> dict[int, RunningRow]:
        """These tasks' rows while held (leased or running), read and locked (FOR UPDATE on
        PostgreSQL and MySQL; SQLite's transaction holds the only write lock)."""
        running: dict[int, RunningRow] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            # On PostgreSQL one array parameter: one statement, prepared once, whatever the count
            listed = "= ANY(?::bigint[])" if self.is_postgres else f"IN ({', '.join('?' * len(chunk))})"
            sql = f"SELECT {', '.join(RunningRow._fields)} FROM task WHERE id {listed} AND {self.by_id_status} IN ({_HELD})"
            if self.locks_rows:
                sql += " FOR UPDATE"
            params: list[Any] = [self._array(chunk)] if self.is_postgres else chunk
            running.update((r[0], RunningRow(*r)) for r in self._exec(sql, params).fetchall())
        return running

    def _kept_rows(self, outcomes: list[Outcome]) -> dict[int, RunningRow] | None:
        """The held rows of these outcomes as this store kept them (SqlKit.held), when it
        kept every one, for the attempt and worker that ended it, and its writes go with
        the next statement (PostgreSQL, outside writes_at_once): an end's turn then costs
        no round trip to read them. Else None: they are read (locked FOR UPDATE)."""
        if not self.held or not isinstance(self.db, PgDatabase) or not self.db.defers_writes():
            return None
        rows: dict[int, RunningRow] = {}
        for o in outcomes:
            row = self.held.get(o.task_id)
            if row is None or row.attempt != o.attempt or row.worker != o.worker:
                return None
            rows[o.task_id] = row
        return rows

    def _late_outcome(self, o: Outcome, now: float) -> dict[str, Any] | None:
        """The outcome of an attempt the daemon had declared lost, not claimed again since:
        its worker was alive after all (the daemon, or the network, was slow). Fenced by
        the attempt number, its lost row and its worker.

        A success is the truth: the task succeeds with its result (a task that went dead
        and cancelled the tasks waiting on it stays dead). A failure changes nothing the
        loss did not already decide, but its attempt row and the task's last error say
        what really happened, and the worker cannot readopt it after that. Returns the
        task's info (with "late": the daemon freed the slot when it lost the attempt)."""
        Task, Attempt = self.Task, self.Attempt
        lost = (
            Attempt.select(Attempt.id)
            .where(
                Attempt.task_id == o.task_id,
                Attempt.attempt == o.attempt,
                Attempt.outcome == AttemptOutcome.LOST,
                Attempt.worker == o.worker,
            )
            .first()
        )
        found = self._exec(
            f"SELECT status, {', '.join(RunningRow._fields)} FROM task WHERE id = ? AND attempt = ?"
            f" AND status IN ({_LOSS_LEFT})",
            (o.task_id, o.attempt),
        ).fetchone()
        if lost is None or found is None:
            return None
        status, row = found[0], RunningRow(*found[1:])._replace(worker=o.worker)
        if o.kind == OutcomeKind.SUCCEEDED:
            if status == TaskState.DEAD and row.has_dependents:
                return None
            ending = self._ending(row, AttemptOutcome.SUCCEEDED, now, result=o.result)
            changes = {"reason": None, "error_type": None, "error_message": None, "error_traceback": None,
                       **ending.changes}  # fmt: skip
        else:
            error = o.error or {}
            changes = {
                "error_type": error.get("type"),
                "error_message": error.get("message"),
                "error_traceback": error.get("traceback"),
                "updated_at": now,
            }
            ending = Ending(changes, status, AttemptOutcome.FAILED, error, error, None)
        n = (
            Task.update(**changes)
            .where(Task.id == row.id, Task.attempt == row.attempt, Task.status == status)
            .execute()
        )
        if n != 1:
            return None
        logged = ending.logged or {}
        Attempt.update(
            outcome=ending.outcome,
            ended_at=now,
            error_type=logged.get("type"),
            error_message=logged.get("message"),
            error_traceback=logged.get("traceback"),
        ).where(Attempt.id == lost.id).execute()
        return {**self._ended_info(row, ending, now), "late": True}

    def _write_endings(
        self, ended: list[tuple[RunningRow, Ending]], now: float, fences: list[list[Any]] | None = None
    ) -> None:
        """The task updates of many endings, one statement per shape of change, and their
        attempt rows in multi-row INSERTs. The rows were read in this transaction (locked
        on PostgreSQL and MySQL; SQLite's transaction holds the only write lock), so each
        update must match: if one does not, this raises and the caller's savepoint undoes
        them all (Daemon._on_outcomes then ends them one by one, each fenced on its own).
        With `fences` (a list for each ending), the rows were kept, not read (_kept_rows):
        each update is fenced by them too, and one that does not match fails the
        transaction (SqlKit._update_held's as_kept)."""
        if not ended:
            return
        shapes: dict[tuple[str, ...], list[list[Any]]] = {}
        for i, (row, ending) in enumerate(ended):
            shapes.setdefault(tuple(ending.changes), []).append(
                [*ending.changes.values(), row.id, row.attempt, *(fences[i] if fences is not None else ())]
            )
        # On PostgreSQL both go with the next statement, unread: the rows were read FOR
        # UPDATE by this transaction, so no one else changed them meanwhile (or, kept, the
        # update checks that they did not).
        later = self.is_postgres
        for columns, params in shapes.items():
            changed = self._update_held(columns, params, counted=not later, as_kept=fences is not None)
            if changed is not None and changed != len(params):
                raise StoreError(f"{len(params) - changed} of {len(params)} attempts changed meanwhile")
        errors = any(ending.logged for _row, ending in ended)
        columns = ATTEMPT_COLUMNS + ERROR_COLUMNS if errors else ATTEMPT_COLUMNS
        attempts = [attempt_values(row, ending.outcome, ending.logged, now, errors) for row, ending in ended]
        self._insert_values("attempt", columns, attempts, ids=not later)

    def _ended_info(self, row: RunningRow | Task, ending: Ending, now: float) -> dict[str, Any]:
        """What became of a task whose attempt ended (written): for the daemon's logs and events."""
        return {
            "id": row.id,
            "name": row.name,
            "queue": row.queue,
            "attempt": row.attempt,
            "status": ending.status,
            "outcome": ending.outcome,
            "result": ending.result,
            "error": ending.error,
            "run_at": iso(ending.changes.get("run_at")),
            "reason": ending.changes.get("reason"),
            "dependents": self._settle_dependents(row, ending.status, now),
        }

    def complete(
        self, task_id: int, attempt: int, worker: str, result: Any, now: float
    ) -> dict[str, Any] | None:
        """The attempt succeeded. None when fenced out (old attempt, other worker, not held).

        The task is succeeded with its result (JSON), finished_at = now, an attempt row;
        cancelled instead when it was asked to stop. Its key is freed unless kept for
        good; tasks waiting on it are released when their other parents succeeded too.
        Returns what became of it (status, outcome, dependents released/cancelled)."""
        return self.end_attempts(
            [Outcome(task_id, attempt, worker, OutcomeKind.SUCCEEDED, result=result)], now
        )[0]

    def fail(
        self,
        task_id: int,
        attempt: int,
        worker: str,
        error: dict[str, Any],
        now: float,
        retry_in: float | None = None,
        final: bool = False,
    ) -> dict[str, Any] | None:
        """The attempt failed: retry later, or dead when attempts are spent or `final`.

        A retry is the failed state with run_at = now + `retry_in` (a negative one:
        now), or the task's backoff, else the store's; promote_due queues it then.
        Dead tasks cancel the tasks waiting on them, down the chain. None when fenced out."""
        outcome = Outcome(
            task_id, attempt, worker, OutcomeKind.FAILED, error=error, retry_in=retry_in, final=final
        )
        return self.end_attempts([outcome], now)[0]

    def release(
        self, task_id: int, attempt: int, worker: str, reason: str, now: float, delay: float | None = None
    ) -> dict[str, Any] | None:
        """The handler gave the task back (martinet.Release): to the queue, after `delay`.
        No attempt spent, its release count goes up; stalled after max_releases. None
        when fenced out."""
        error = {"type": "Release", "message": reason}
        return self.end_attempts(
            [Outcome(task_id, attempt, worker, OutcomeKind.RELEASED, error=error, retry_in=delay)], now
        )[0]

    def _end_attempt(
        self, row: Task, outcome: str, now: float, error: dict[str, Any], final: bool = False
    ) -> dict[str, Any] | None:
        """End one attempt that ended without its worker's word (lost, interrupted, timed
        out; `final`: failed for good), fenced by its number: None when it is no longer held."""
        self.held.pop(row.id, None)
        ending = self._ending(row, outcome, now, error=error, final=final)
        if self._update_task(ending.changes, FENCE, (row.id, row.attempt)) != 1:
            return None
        self._insert("attempt", attempt_row(row, ending.outcome, ending.logged, now))
        return self._ended_info(row, ending, now)

    def _ending(
        self,
        row: Task | RunningRow,
        outcome: str,
        now: float,
        *,
        result: Any = None,
        error: dict[str, Any] | None = None,
        retry_in: float | None = None,
        final: bool = False,
    ) -> Ending:
        """What becomes of a task whose attempt ended so (nothing written here)."""
        logged = error  # what the attempt row records
        changes: dict[str, Any] = {
            "worker": None,
            "lease_expires": None,
            "updated_at": now,
        }
        if outcome == AttemptOutcome.SUCCEEDED:
            changes["result"] = result_text(result)
        if row.cancel_requested:  # the handler was asked to stop; however it ended, it is cancelled
            outcome, status = AttemptOutcome.CANCELLED, TaskState.CANCELLED
            changes["reason"] = "cancelled while running"
        elif outcome == AttemptOutcome.SUCCEEDED:
            status = TaskState.SUCCEEDED
            changes["progress"] = 1.0
        elif (
            outcome == AttemptOutcome.INTERRUPTED
        ):  # its worker shut down: back to the queue, attempt not spent
            status = TaskState.QUEUED
            changes.update(run_at=now, max_attempts=row.max_attempts + 1)
        elif outcome == AttemptOutcome.RELEASED:  # the handler gave it back: no attempt spent, counted
            changes.update(releases=row.releases + 1, max_attempts=row.max_attempts + 1)
            message = (error or {}).get("message") or "released"
            if row.releases + 1 > self.max_releases:
                status = TaskState.STALLED
                changes["reason"] = (
                    f"stalled: released {row.releases + 1} times (more than max_releases={self.max_releases}); "
                    f"last: {message}"
                )
            else:
                status = TaskState.SCHEDULED if retry_in else TaskState.QUEUED
                changes.update(run_at=now + (retry_in or 0.0), reason=f"released: {message}")
            error = None  # a release is not an error: the task's last error stays; its attempt row says why
        elif outcome == AttemptOutcome.LOST and self._lost_before(row.id) + 1 >= self.poison_after:
            status = TaskState.STALLED
            changes["reason"] = (
                f"stalled: its attempts were lost {self.poison_after} times (the worker died or "
                f"went silent running it); fix the cause, then `martinet retry {row.id}`"
            )
        elif final or row.attempt >= row.max_attempts:
            status = TaskState.DEAD
        else:
            status = TaskState.FAILED
            policy = RetryPolicy(
                row.retry_base or self.retry.base,
                row.retry_factor or self.retry.factor,
                row.retry_cap or self.retry.cap,
            )
            delay = retry_in if retry_in is not None else policy.delay(row.attempt)
            changes["run_at"] = now + max(0.0, delay)
        if error:
            changes.update(
                error_type=error.get("type"),
                error_message=error.get("message"),
                error_traceback=error.get("traceback"),
            )
        if status in TERMINAL:
            changes["finished_at"] = now
            if row.key_mode == "active":
                changes["unique_key"] = None  # the key is free again
        changes["status"] = str(status)  # plain str: bound faster than a StrEnum (see rows.py)
        return Ending(changes, status, str(outcome), logged, error, result)

    def _lost_before(self, task_id: int) -> int:
        Attempt = self.Attempt
        return (
            Attempt.select().where(Attempt.task_id == task_id, Attempt.outcome == AttemptOutcome.LOST).count()
        )
