"""Queues and limits: each queue's settings, each task name's fleet-wide limits, and
what the daemon reads to enforce them (what runs, what started lately, what is ready)."""

from __future__ import annotations

from typing import Any

import peewee

from martinet.states import HELD, TaskState
from martinet.store.sql import SqlKit


class Queues(SqlKit):
    def lanes_state(self, now: float, lookback: float) -> dict[str, Any]:
        """What the daemon needs to enforce limits after a start: settings, what runs,
        what started within `lookback` seconds, and which queues have ready work."""
        Task, QueueSetting, TaskLimit = self.Task, self.QueueSetting, self.TaskLimit
        running = (
            Task.select(Task.queue, Task.name, peewee.fn.COUNT(Task.id))
            .where(Task.status.in_(HELD))
            .group_by(Task.queue, Task.name)
            .tuples()
        )
        # Limits count starts from the claim: a leased task counts from then (updated_at).
        since = peewee.fn.COALESCE(Task.started_at, Task.updated_at)
        recent = (
            Task.select(Task.queue, Task.name, since)
            .where(
                (Task.started_at > now - lookback)
                | ((Task.status == TaskState.LEASED) & (Task.updated_at > now - lookback)),
                Task.status != TaskState.QUEUED,
            )
            .order_by(since)
            .tuples()
        )
        return {
            "queues": list(QueueSetting.select().dicts()),
            "names": list(TaskLimit.select().dicts()),
            "running": list(running),
            "recent": list(recent),
            "ready": self.ready_queues(),
        }

    def ready_queues(self) -> list[str]:
        """The queues that have ready (queued) tasks."""
        Task = self.Task
        # A BaseQuery: peewee's stubs say a tuples() query yields models.
        queues: peewee.BaseQuery = (
            Task.select(Task.queue).where(Task.status == TaskState.QUEUED).distinct().tuples()
        )
        return [q for (q,) in queues]

    def queue_depths(self) -> list[tuple[str, int, float]]:
        """Each queue with ready (queued) tasks: (queue, how many, the earliest due time
        among them), for metrics."""
        sql = f"SELECT queue, COUNT(*), MIN(run_at) FROM {self.ready_rows} WHERE status = 'queued' GROUP BY queue"
        return [(q, int(n), float(first)) for q, n, first in self._exec(sql, cache=False).fetchall()]

    def save_queue(self, name: str, now: float, **settings: Any) -> None:
        """Create or change a queue's settings (only the keys given)."""
        QueueSetting = self.QueueSetting
        if QueueSetting.get_or_none(QueueSetting.name == name) is None:
            QueueSetting.create(name=name, updated_at=now, **settings)
        elif settings:
            QueueSetting.update(updated_at=now, **settings).where(QueueSetting.name == name).execute()

    def save_task_limit(
        self, name: str, concurrency: int | None, rate: tuple[int, float] | None, now: float
    ) -> None:
        """Set (create or replace) a task name's fleet-wide concurrency and rate."""
        TaskLimit = self.TaskLimit
        fields = {
            "concurrency": concurrency,
            "rate_count": rate[0] if rate else None,
            "rate_period": rate[1] if rate else None,
            "updated_at": now,
        }
        if TaskLimit.update(**fields).where(TaskLimit.name == name).execute() == 0:
            TaskLimit.create(name=name, **fields)

    def queue_stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: counts by status and the due time of its oldest ready task."""
        Task = self.Task
        stats: dict[str, dict[str, Any]] = {}
        counts: peewee.BaseQuery = (  # tuples (see ready_queues)
            Task.select(Task.queue, Task.status, peewee.fn.COUNT(Task.id))
            .group_by(Task.queue, Task.status)
            .tuples()
        )
        for queue, status, n in counts:
            stats.setdefault(queue, {"counts": {}, "oldest": None})["counts"][status] = n
        oldest: peewee.BaseQuery = (  # tuples
            Task.select(Task.queue, peewee.fn.MIN(Task.run_at))
            .where(Task.status == TaskState.QUEUED)
            .group_by(Task.queue)
            .tuples()
        )
        for queue, first in oldest:
            stats[queue]["oldest"] = first
        return stats
