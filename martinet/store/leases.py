"""Leases: a held task (leased or running) stays its worker's while the worker is heard
from. Renewed by its traffic, given back to a worker that reconnects still running it
(readopt), and ended as lost when its worker is gone or its lease runs out, or failed
when it runs past its time limit."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import peewee

from martinet.messages.worker_socket import Held
from martinet.models import Task
from martinet.states import HELD, AttemptOutcome, TaskState, sql_list
from martinet.store.outcomes import Outcomes
from martinet.store.tasks import Tasks

_HELD = sql_list(HELD)


class Leases(Tasks, Outcomes):
    """Builds on tasks (a readopted task may start) and outcomes (a lost one ends)."""

    def renew_leases(self, workers: Iterable[str], now: float, lease: float) -> None:
        """Traffic from these workers: their tasks' leases (leased or running) end at now + lease.
        Only leases with less than half their length left are written (a heartbeat
        costs no write most of the time). On PostgreSQL one statement whatever the count,
        sent with the next one (no count is read)."""
        Task = self.Task
        workers = list(workers)
        if not workers:
            return
        if self.is_postgres:
            self._write_later(
                f"UPDATE task SET lease_expires = ? WHERE status IN ({_HELD}) AND worker = ANY(?::text[])"
                " AND lease_expires < ?",
                (now + lease, self._array(workers), now + lease / 2),
            )
            return
        Task.update(lease_expires=now + lease).where(
            Task.status.in_(HELD), Task.worker.in_(workers), Task.lease_expires < now + lease / 2
        ).execute()

    def readopt(
        self,
        worker: str,
        running: Iterable[Held],
        now: float,
        lease: float,
        limit: int | None = None,
        revived: list[tuple[str, str]] | None = None,
    ) -> list[int]:
        """A reconnecting worker still holds these (its hello's Held: id, attempt, started
        when a handler took it): give the leases back to it.

        Only the same attempt is readopted, also when its lease was reaped meanwhile
        (the task queued, failed or stalled by its losses, not yet claimed again): it
        goes on running on this worker instead of twice, and the loss is undone: its
        attempt row is deleted and the task's error and reason cleared, so the attempt
        ends once, with one row that says how. It comes back running if it had started
        (by its row, or as the worker says now), else leased; a task still held by this
        worker keeps its state (running if the worker says so). A task claimed again since is
        not, nor one running on another worker; nor is an attempt that ended otherwise
        than lost or interrupted (its worker's outcome committed, the ack lost; or timed
        out by the daemon), so an outcome sent again is fenced out instead of ending the
        attempt twice. At most `limit` are readopted, in the order given. Returns the
        ids readopted; the worker should stop the others. The (queue, name) of those that
        were no longer held (their loss undone) go to `revived`: they hold their limits'
        room again."""
        Task, Attempt = self.Task, self.Attempt
        adopted: list[int] = []
        for item in running:
            if limit is not None and len(adopted) >= limit:
                break
            self.held.pop(item.task_id, None)  # (its worker, start and lease may change)
            ended_by_worker = Attempt.select(Attempt.id).where(
                Attempt.task_id == item.task_id,
                Attempt.attempt == item.attempt,
                Attempt.outcome.not_in((AttemptOutcome.LOST, AttemptOutcome.INTERRUPTED)),
            )
            where = (Task.id == item.task_id, Task.attempt == item.attempt)
            n = (
                Task.update(lease_expires=now + lease, updated_at=now, daemon=self.daemon_id)
                .where(*where, Task.status.in_(HELD), Task.worker == worker)
                .execute()
            )
            if n and item.started:  # its start report may have been lost with the connection
                self.start([(item.task_id, item.attempt, worker)], now)
            elif not n:
                started_at = peewee.fn.COALESCE(Task.started_at, now) if item.started else Task.started_at
                status = peewee.Case(None, [(started_at.is_null(), TaskState.LEASED)], TaskState.RUNNING)
                n = (
                    Task.update(
                        status=status,
                        started_at=started_at,
                        worker=worker,
                        daemon=self.daemon_id,
                        lease_expires=now + lease,
                        updated_at=now,
                        reason=None,
                        error_type=None,
                        error_message=None,
                        error_traceback=None,
                    )
                    .where(
                        *where,
                        Task.status.in_((TaskState.QUEUED, TaskState.FAILED, TaskState.STALLED)),
                        ~peewee.fn.EXISTS(ended_by_worker),
                    )
                    .execute()
                )
                if n and revived is not None:
                    task = Task.select(Task.queue, Task.name).where(Task.id == item.task_id).get()
                    revived.append((task.queue, task.name))
                if n:  # the attempt goes on: the loss the reaper wrote did not happen
                    Attempt.delete().where(
                        Attempt.task_id == item.task_id,
                        Attempt.attempt == item.attempt,
                        Attempt.outcome.in_((AttemptOutcome.LOST, AttemptOutcome.INTERRUPTED)),
                    ).execute()
            if n:
                adopted.append(item.task_id)
        return adopted

    def release_worker(
        self,
        worker: str,
        now: float,
        reason: str,
        outcome: str = AttemptOutcome.LOST,
        keep: Collection[tuple[int, int]] = frozenset(),
    ) -> list[dict[str, Any]]:
        """A worker is gone: its tasks, leased or running (but the (id, attempt) in `keep`), end their attempt as
        `lost` (or `interrupted` when it left on purpose: that does not spend an attempt).
        Returns their outcomes. A task lost `poison_after` times is stalled instead of retried.
        Only the leases this store's daemon granted (or adopted) are its to end: a worker
        that moved to another daemon on the database holds its tasks there."""
        Task = self.Task
        mine = (Task.daemon == self.daemon_id) | Task.daemon.is_null()  # (== None: IS NULL)
        rows = list(Task.select().where(Task.status.in_(HELD), Task.worker == worker, mine).order_by(Task.id))
        return [
            info
            for r in rows
            if (r.id, r.attempt) not in keep and (info := self._lose(r, now, reason, outcome))
        ]

    def runs_any(self, worker: str) -> bool:
        """Whether this worker holds any task (leased or running); cheap (raw SQL), for every hello."""
        sql = f"SELECT 1 FROM task WHERE status IN ({_HELD}) AND worker = ? LIMIT 1"
        return self._exec(sql, (worker,)).fetchone() is not None

    def reap_expired(self, now: float) -> list[dict[str, Any]]:
        """Held tasks (leased or running) whose lease ran out (worker silent, or daemon restarted) end their
        attempt as lost, as release_worker does; returns their outcomes. A lease that
        ends after `now` is kept. Reads the database, not memory: after a restart it
        finds the leases of the daemon that died."""
        Task = self.Task
        rows = list(Task.select().where(Task.status.in_(HELD), Task.lease_expires < now))
        return [info for r in rows if (info := self._lose(r, now, "lease expired", AttemptOutcome.LOST))]

    def overdue(
        self, now: float, grace: float, limit: int, after: tuple[float, int] | None = None
    ) -> list[dict[str, Any]]:
        """Held attempts whose time limit (the task's timeout) ended more than `grace`
        seconds before `now`, counted from started_at when running, from the claim
        (updated_at) while leased: up to `limit`, by (that time, id), after `after` (the
        last one of the previous call). Each as id, attempt, worker, status, started_at
        (that time), timeout. Tasks without a timeout are never overdue. A leased one may
        still wait in its worker's prefetch: the caller judges it (Daemon._time_limits).

        No index of its own: it reads the held rows (task_status_created), which are
        few, bounded by the capacity the connected workers declared; renew_leases and
        reap_expired read them at each tick too."""
        since = "COALESCE(started_at, updated_at)"  # started_at is null exactly while leased
        sql = (
            f"SELECT id, attempt, worker, status, {since}, timeout FROM task"
            f" WHERE status IN ({_HELD}) AND timeout IS NOT NULL AND {since} + timeout < ?"
        )
        params: list[Any] = [now - grace]
        if after is not None:
            sql += f" AND ({since} > ? OR ({since} = ? AND id > ?))"
            params += [after[0], after[0], after[1]]
        sql += f" ORDER BY {since}, id LIMIT ?"
        params.append(limit)
        columns = ("id", "attempt", "worker", "status", "started_at", "timeout")
        return [dict(zip(columns, r, strict=True)) for r in self._exec(sql, params).fetchall()]

    def time_out(self, task_id: int, attempt: int, now: float, message: str) -> dict[str, Any] | None:
        """End a held attempt as past its time limit without an answer from its worker:
        a failed attempt (error TaskTimeout, as a worker reports its own time limit), so it
        is retried with backoff until max_attempts, then dead. Fenced by attempt: None when
        it is no longer held. Returns what became of it, as release_worker does."""
        Task = self.Task
        row = Task.get_or_none(Task.id == task_id, Task.attempt == attempt, Task.status.in_(HELD))
        if row is None:
            return None
        error = {"type": "TaskTimeout", "message": f"{message} (worker {row.worker})"}
        return self._end_attempt(row, AttemptOutcome.FAILED, now, error)

    def _end_unrunnable(self, task_id: int, attempt: int, why: str, now: float) -> dict[str, Any] | None:
        """A task just leased that no handler could run (Tasks.claim): its attempt failed
        for good, the task dead with error UnreadableArgs and `why` (retrying would read
        the same args). Fenced by attempt: None when it is no longer held."""
        Task = self.Task
        row = Task.get_or_none(Task.id == task_id, Task.attempt == attempt, Task.status.in_(HELD))
        if row is None:
            return None
        error = {"type": "UnreadableArgs", "message": f"{why}: it cannot run"}
        return self._end_attempt(row, AttemptOutcome.FAILED, now, error, final=True)

    def release_daemon(self, daemon_id: str, now: float) -> list[dict[str, Any]]:
        """A daemon stopped or went silent: the attempts it leased end as lost, as its
        workers' would, so that they run again without waiting for each lease to run out.
        A worker still running one that moves to another daemon readopts it, and the
        loss is undone there (readopt). Returns their outcomes."""
        Task = self.Task
        rows = list(Task.select().where(Task.status.in_(HELD), Task.daemon == daemon_id).order_by(Task.id))
        reason = f"its daemon {daemon_id} stopped or went silent"
        return [info for r in rows if (info := self._lose(r, now, reason, AttemptOutcome.LOST))]

    def _lose(self, row: Task, now: float, reason: str, outcome: str) -> dict[str, Any] | None:
        error = {"type": "WorkerLost", "message": f"{reason} (worker {row.worker})"}
        return self._end_attempt(row, outcome, now, error)
