"""What the store tests share: a fixed time, a lease, and short ways to submit and claim."""

from __future__ import annotations

from martinet.models import Task
from martinet.store import Store

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
LEASE = 30.0
TASK_KEYS = {
    "id",
    "releases",
    "key",
    "unique",
    "timeout",
    "reason",
    "kind",
    "name",
    "username",
    "description",
    "args",
    "queue",
    "priority",
    "status",
    "run_at",
    "attempt",
    "max_attempts",
    "progress",
    "progress_message",
    "result",
    "error",
    "worker",
    "daemon",
    "cancel_requested",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "schedule",
    "due_at",
}
SCHEDULE_KEYS = {
    "id",
    "key",
    "until",
    "remaining",
    "misfire",
    "misfire_grace",
    "kind",
    "name",
    "username",
    "description",
    "args",
    "queue",
    "priority",
    "every",
    "recurrence",
    "timezone",
    "status",
    "next_due",
    "last_due",
    "created_at",
}


def submit(store: Store, name: str = "add", now: float = NOW, **spec) -> int:
    spec.setdefault("max_attempts", 3)
    task_id, created = store.submit({"name": name, **spec}, now)
    assert created
    return task_id


def claim_one(
    store: Store, worker: str = "w1", name: str = "add", now: float = NOW, start: bool = True
) -> dict:
    """Claim one task; a handler starts it at once (running), unless `start` is False (leased)."""
    rows = store.claim(worker, [name], 1, now, LEASE)
    assert len(rows) == 1
    if start:
        store.start([(rows[0]["id"], rows[0]["attempt"], worker)], now)
    return rows[0]


def row(task_id: int) -> Task:
    return Task.get_by_id(task_id)


def every_minute(store: Store, first_due: float = NOW, **spec) -> int:
    spec = {"name": "tick", "kind": "interval", "spec": "60", **spec}
    sched_id, created = store.add_schedule(spec, first_due, NOW - 100)
    assert created
    return sched_id
