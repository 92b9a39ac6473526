"""Recurring schedules: declared (once per key), expanded into runs as they come due
(one run per schedule and due time, whichever daemon gets there first), paused,
resumed, changed and removed. Which runs are owed is recurring.plan's to say."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import peewee

from martinet import recurring, when
from martinet.errors import BadInput, TaskNotFound
from martinet.models import Schedule
from martinet.present import schedule_ref
from martinet.states import UPDATED, ScheduleState
from martinet.store.rows import ScheduleRecord, task_row, work_fields
from martinet.store.sql import SqlKit

log = logging.getLogger("martinet.store")


class Schedules(SqlKit):
    def add_schedule(self, spec: dict[str, Any], first_due: float, now: float) -> tuple[int, bool]:
        """Insert a schedule; returns (id, created).

        A known request_id returns the old id. A schedule declared with a
        `key` is created once; declaring it again updates it in place and
        keeps its next due time unless its spec or zone changed. Two daemons
        declaring the same key at once make one schedule (the unique index).
        """
        Schedule = self.Schedule
        rid, key = spec.get("request_id"), spec.get("key")
        if rid:
            existing = Schedule.select(Schedule.id).where(Schedule.request_id == rid).first()
            if existing is not None:
                return existing.id, False
        fields = {
            **work_fields(spec),
            "max_attempts": spec.get("max_attempts"),
            "kind": spec["kind"],
            "spec": spec["spec"],
            "timezone": spec.get("timezone") or "UTC",
            "until": spec.get("until"),
            "remaining": spec.get("count"),
            "misfire": spec.get("misfire") or "once",
            "misfire_grace": spec.get("misfire_grace"),
            "updated_at": now,
        }
        if key:
            current = Schedule.get_or_none(Schedule.key == key)
            if current is not None:
                moved = (current.kind, current.spec, current.timezone) != (
                    fields["kind"],
                    fields["spec"],
                    fields["timezone"],
                )
                if moved or current.status == ScheduleState.FINISHED:
                    fields.update(next_due=first_due, status=ScheduleState.ACTIVE)
                Schedule.update(**fields).where(Schedule.id == current.id).execute()
                return current.id, False
        try:
            with self.atomic():
                row = Schedule.create(request_id=rid, key=key, next_due=first_due, created_at=now, **fields)
        except peewee.IntegrityError:
            current = self._latest(Schedule.select().where(Schedule.key == key)).first() if key else None
            if current is None:
                raise
            return current.id, False  # declared by another daemon at the same moment
        return row.id, True

    def runs_made(self, task_ids: list[int]) -> list[tuple[str, str, float]]:
        """(queue, name, due time) of schedules' runs, for metrics."""
        marks = ", ".join("?" * len(task_ids))
        sql = f"SELECT queue, name, due_at FROM task WHERE id IN ({marks}) AND due_at IS NOT NULL"
        return [(q, n, float(due)) for q, n, due in self._exec(sql, task_ids, cache=False).fetchall()]

    def expand_schedules(self, now: float, default_max_attempts: int) -> list[int]:
        """Create the runs every due schedule owes; one run per (schedule, due time).

        The schedule row is advanced first, conditionally on the next due time
        it was read with: a second daemon sharing the database that read the
        same row updates nothing and creates nothing. The unique key on
        (schedule_id, due_at) backs this up. Which runs are owed (misfire
        policy, until, count) is decided by `recurring.plan`.
        """
        Task, Schedule = self.Task, self.Schedule
        created: list[int] = []
        if not self._exec(
            f"SELECT id FROM schedule WHERE status = '{ScheduleState.ACTIVE}' AND next_due <= ? LIMIT 1",
            (now,),
        ).fetchone():
            return created  # the common case, answered without building a query
        due = Schedule.select().where(Schedule.status == ScheduleState.ACTIVE, Schedule.next_due <= now)
        for sched in list(due):
            assert sched.next_due is not None  # the query asked for next_due <= now
            rec = when.recurrence_from_db(sched.kind, sched.spec, sched.timezone)
            owed = recurring.plan(rec, sched.next_due, now, _policy(sched))
            advanced = (
                Schedule.update(
                    next_due=owed.next_due,
                    last_due=owed.runs[-1] if owed.runs else sched.last_due,
                    remaining=owed.remaining,
                    status=ScheduleState.ACTIVE if owed.next_due is not None else ScheduleState.FINISHED,
                    updated_at=now,
                )
                .where(Schedule.id == sched.id, Schedule.next_due == sched.next_due)
                .execute()
            )
            if not advanced:
                continue  # another daemon got there first
            if owed.missed:
                log.info(
                    "schedule s%s: %d due time(s) not run (misfire policy %s)",
                    sched.id,
                    owed.missed,
                    sched.misfire,
                )
            for due_at in owed.runs:
                spec = {
                    "name": sched.name,
                    "username": sched.username,
                    "description": sched.description,
                    "args": json.loads(sched.args),
                    "queue": sched.queue,
                    "priority": sched.priority,
                    "max_attempts": sched.max_attempts or default_max_attempts,
                    "schedule_id": sched.id,
                    "due_at": due_at,
                    "run_at": now,
                }
                # Count rows, not lastrowid: an ignored INSERT on SQLite reports the previous row's id.
                query = Task.insert(**task_row(spec, now)).on_conflict_ignore()
                if query.as_rowcount().execute() == 1:
                    created.append(Task.get(Task.schedule_id == sched.id, Task.due_at == due_at).id)
        return created

    def remove_schedule(self, schedule_id: int, now: float) -> bool:
        """No more runs, and its key is free; runs already created stay. False when it
        is missing or already removed."""
        Schedule = self.Schedule
        n: int = (
            Schedule.update(
                status=ScheduleState.REMOVED, next_due=None, key=None, updated_at=now
            )  # its key is free
            .where(Schedule.id == schedule_id, Schedule.status != ScheduleState.REMOVED)
            .execute()
        )
        return n == 1

    def pause_schedule(self, schedule_id: int, now: float) -> ScheduleState:
        """Stop creating runs; returns its status after, paused. TaskNotFound when it is
        missing, BadInput when it is neither active nor paused."""
        Schedule = self.Schedule
        Schedule.update(status=ScheduleState.PAUSED, updated_at=now).where(
            Schedule.id == schedule_id, Schedule.status == ScheduleState.ACTIVE
        ).execute()
        row = self._schedule(schedule_id)
        if row.status != ScheduleState.PAUSED:
            raise _cannot(schedule_id, row.status, "only an active schedule can be paused")
        return ScheduleState.PAUSED

    def resume_schedule(self, schedule_id: int, now: float) -> ScheduleState:
        """Create runs again from the next due time after now: a pause does not owe the runs it
        skipped. Returns its status after, active. TaskNotFound when it is missing, BadInput
        when it is neither paused nor active."""
        Schedule = self.Schedule
        row = self._schedule(schedule_id)
        if row.status == ScheduleState.ACTIVE:
            return ScheduleState.ACTIVE
        if row.status != ScheduleState.PAUSED:
            raise _cannot(schedule_id, row.status, "only a paused schedule can be resumed")
        rec = when.recurrence_from_db(row.kind, row.spec, row.timezone)
        next_due = _next_after_now(rec, row.next_due, now)
        Schedule.update(status=ScheduleState.ACTIVE, next_due=next_due, updated_at=now).where(
            Schedule.id == schedule_id, Schedule.status == ScheduleState.PAUSED
        ).execute()
        return ScheduleState.ACTIVE

    def update_schedule(
        self,
        schedule_id: int,
        now: float,
        args: dict[str, Any] | None = None,
        recurrence: when.Recurrence | None = None,
        timezone: str | None = None,
    ) -> str:
        """New args (for future runs) and/or a new spec or zone (due times start afresh from
        now); returns "updated". TaskNotFound when it is missing, BadInput when it is
        removed or finished."""
        Schedule = self.Schedule
        row = self._schedule(schedule_id)
        if row.status in (ScheduleState.REMOVED, ScheduleState.FINISHED):
            raise _cannot(schedule_id, row.status, "it can no longer be updated")
        changes: dict[str, Any] = {"updated_at": now}
        if args is not None:
            changes["args"] = json.dumps(args)
        if recurrence is None and timezone is not None:
            recurrence = when.recurrence_from_db(row.kind, row.spec, timezone)
        if recurrence is not None:
            zone = getattr(recurrence, "tz", None) or timezone or row.timezone  # the zone it was computed in
            changes.update(kind=recurrence.kind, spec=recurrence.spec, timezone=zone)
            changes["next_due"] = recurrence.next_after(when.from_timestamp(now)).timestamp()
        Schedule.update(**changes).where(Schedule.id == schedule_id).execute()
        return UPDATED

    def _schedule(self, schedule_id: int) -> Schedule:
        row = self.Schedule.get_or_none(self.Schedule.id == schedule_id)
        if row is None:
            raise TaskNotFound(f"no schedule with id {schedule_ref(schedule_id)}")
        return row

    def get_schedule(self, schedule_id: int, upcoming: int = 0) -> ScheduleRecord | None:
        """A schedule's row; with `upcoming`, its next due times too (none after until, at
        most count), else None for them. present.schedule_info shows it."""
        row = self.Schedule.get_or_none(self.Schedule.id == schedule_id)
        if row is None:
            return None
        if not upcoming:
            return ScheduleRecord(row, None)
        if row.next_due is None:
            return ScheduleRecord(row, [])
        rec = when.recurrence_from_db(row.kind, row.spec, row.timezone)
        first = when.from_timestamp(row.next_due)
        times = [t.timestamp() for t in (first, *rec.next_n(first, upcoming - 1))]
        if row.until is not None:
            times = [t for t in times if t <= row.until]
        if row.remaining is not None:
            times = times[: row.remaining]
        return ScheduleRecord(row, times)

    def list_schedules(self, include_removed: bool = False) -> list[Schedule]:
        """Every schedule's row, by id; removed ones only when asked."""
        Schedule = self.Schedule
        query = Schedule.select().order_by(Schedule.id)
        if not include_removed:
            query = query.where(Schedule.status != ScheduleState.REMOVED)
        return list(query)


def _cannot(schedule_id: int, status: str, rule: str) -> BadInput:
    return BadInput(f"schedule {schedule_ref(schedule_id)} is {status}; {rule}")


def _policy(sched: Schedule) -> recurring.Policy:
    return recurring.Policy(sched.misfire, sched.misfire_grace, sched.until, sched.remaining)


def _next_after_now(rec: when.Recurrence, due: float | None, now: float) -> float:
    """The first due time after now, on the schedule's own grid when it has one."""
    if isinstance(rec, when.Interval) and due is not None:
        if due > now:
            return due
        return due + (math.floor((now - due) / rec.seconds) + 1) * rec.seconds
    return rec.next_after(when.from_timestamp(now)).timestamp()
