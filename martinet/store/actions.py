"""What an operator asks of one task: revoke (cancel), retry, stall, new args.

Each raises TaskNotFound for a task that is not there, and BadInput, saying why,
for one whose state does not allow it; the messages are the replies' own."""

from __future__ import annotations

import json
import logging
from typing import Any

import peewee

from martinet.errors import BadInput, TaskNotFound
from martinet.models import Task
from martinet.states import HELD, RETRYABLE, REVOCABLE, STALLABLE, UPDATED, Revoked, TaskState
from martinet.store.dependents import Dependents

log = logging.getLogger("martinet.store")


class Actions(Dependents):
    def revoke_task(self, task_id: int, now: float) -> tuple[str, list[int]]:
        """Cancel a waiting task, or ask a running one to stop.

        Returns what became of it and the ids of tasks cancelled with it (those
        that waited on it, down the chain): Revoked.CANCELLED; Revoked.CANCELLING
        for a held task, only marked (cancel_requested), which ends cancelled however
        its attempt ends; or the status of a finished task, which keeps it.
        """
        row = self._task(task_id)
        Task = self.Task
        if row.status in REVOCABLE:
            changes = {
                "status": TaskState.CANCELLED,
                "reason": "cancelled before it ran",
                "finished_at": now,
                "updated_at": now,
            }
            if row.key_mode == "active":
                changes["unique_key"] = None
            Task.update(**changes).where(Task.id == task_id, Task.status == row.status).execute()
            return Revoked.CANCELLED, self._settle_dependents(row, TaskState.CANCELLED, now)["cancelled"]
        if row.status in HELD:
            Task.update(cancel_requested=True, updated_at=now).where(Task.id == task_id).execute()
            self.held.pop(task_id, None)
            return Revoked.CANCELLING, []
        return row.status, []

    def retry_task(self, task_id: int, now: float, attempts: int | None = None) -> TaskState:
        """A dead, stalled, cancelled or failed task runs again now, with a fresh set of
        attempts; returns its new status, queued.

        Attempt numbers keep counting up (results stay fenced); max_attempts
        moves to the current attempt plus the task's budget (or `attempts`).
        """
        row = self._task(task_id)
        Task = self.Task
        if row.status not in RETRYABLE:
            raise _cannot(
                task_id, row.status, "only a dead, stalled, cancelled or failed task can be retried"
            )
        n = (
            Task.update(
                status=TaskState.QUEUED,
                run_at=now,
                max_attempts=row.attempt + (attempts or row.attempt_budget),
                cancel_requested=False,
                reason=None,
                finished_at=None,
                updated_at=now,
            )
            .where(Task.id == task_id, Task.status == row.status)
            .execute()
        )
        if not n:  # it changed meanwhile (another daemon)
            status = Task.get_by_id(task_id).status
            raise _cannot(task_id, status, "only a dead, stalled, cancelled or failed task can be retried")
        if row.key and row.unique_key is None:
            try:
                with self.atomic():  # take the key back, unless another task holds it now
                    Task.update(unique_key=row.key).where(Task.id == task_id).execute()
            except peewee.IntegrityError:
                log.info("task %s retried without its key %r: another task holds it", task_id, row.key)
        return TaskState.QUEUED

    def stall_task(self, task_id: int, now: float, reason: str) -> TaskState:
        """Hold a waiting task (scheduled, queued or failed): it is never dispatched until
        retried. Returns its new status, stalled."""
        row = self._task(task_id)
        Task = self.Task
        if row.status not in STALLABLE:
            raise _cannot(task_id, row.status, "only a scheduled, queued or failed task can be stalled")
        Task.update(status=TaskState.STALLED, reason=reason, updated_at=now).where(
            Task.id == task_id, Task.status == row.status
        ).execute()
        return TaskState.STALLED

    def update_task_args(self, task_id: int, args: dict[str, Any], now: float) -> str:
        """New args for a task that has not started (or waits to run again); returns
        "updated". A running or finished task keeps its args."""
        row = self._task(task_id)
        Task = self.Task
        if row.status not in REVOCABLE:
            raise _cannot(task_id, row.status, "only a task that has not started can be updated")
        Task.update(args=json.dumps(args), updated_at=now).where(Task.id == task_id).execute()
        return UPDATED

    def _task(self, task_id: int) -> Task:
        row = self.Task.get_or_none(self.Task.id == task_id)
        if row is None:
            raise TaskNotFound(f"no task with id {task_id}")
        return row


def _cannot(task_id: int, status: str, rule: str) -> BadInput:
    return BadInput(f"task {task_id} is {status}; {rule}")
