"""What an operator asks of one task: revoke (cancel), retry, stall, new args."""

from __future__ import annotations

import json
import logging

import peewee

from martinet.states import HELD, RETRYABLE, REVOCABLE, STALLABLE, TaskState
from martinet.store.dependents import Dependents

log = logging.getLogger("martinet.store")


class Actions(Dependents):
    def revoke_task(self, task_id: int, now: float) -> tuple[str, list[int]]:
        """Cancel a waiting task, or ask a running one to stop.

        Returns the new status and the ids of tasks cancelled with it (those
        that waited on it, down the chain). A running task is only marked
        (cancel_requested; status "cancelling"): it ends cancelled however its
        attempt ends. A finished task keeps its status; a missing one: "missing".
        """
        Task = self.Task
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing", []
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
            return TaskState.CANCELLED, self._settle_dependents(row, TaskState.CANCELLED, now)["cancelled"]
        if row.status in HELD:
            Task.update(cancel_requested=True, updated_at=now).where(Task.id == task_id).execute()
            return "cancelling", []
        return row.status, []

    def retry_task(self, task_id: int, now: float, attempts: int | None = None) -> str:
        """A dead, stalled, cancelled or failed task runs again now, with a fresh set of attempts.

        Attempt numbers keep counting up (results stay fenced); max_attempts
        moves to the current attempt plus the task's budget (or `attempts`).
        """
        Task = self.Task
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing"
        if row.status not in RETRYABLE:
            return row.status
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
        if n and row.key and row.unique_key is None:
            try:
                with self.atomic():  # take the key back, unless another task holds it now
                    Task.update(unique_key=row.key).where(Task.id == task_id).execute()
            except peewee.IntegrityError:
                log.info("task %s retried without its key %r: another task holds it", task_id, row.key)
        return TaskState.QUEUED if n else Task.get_by_id(task_id).status

    def stall_task(self, task_id: int, now: float, reason: str) -> str:
        """Hold a waiting task (scheduled, queued or failed): it is never dispatched until
        retried. Returns "stalled", the status it has when it cannot be, or "missing"."""
        Task = self.Task
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing"
        if row.status not in STALLABLE:
            return row.status
        Task.update(status=TaskState.STALLED, reason=reason, updated_at=now).where(
            Task.id == task_id, Task.status == row.status
        ).execute()
        return TaskState.STALLED

    def update_task_args(self, task_id: int, args: dict, now: float) -> str:
        """New args for a task that has not started (or waits to run again): "updated",
        else its status (a running or finished task keeps its args), or "missing"."""
        Task = self.Task
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing"
        if row.status not in REVOCABLE:
            return row.status
        Task.update(args=json.dumps(args), updated_at=now).where(Task.id == task_id).execute()
        return "updated"
