"""The tables. Times are UTC epoch seconds (floats): exact, portable, cheap to index.

task      one row per task: what to run, its state and its latest outcome
  id, request_id (client-made, unique: a retried submit never creates twice),
  name, username, description, args (JSON), queue, priority,
  status (waiting|scheduled|queued|leased|running|succeeded|failed|dead|cancelled|stalled:
  leased from its claim until its worker says a handler started it, then running),
  run_at (when it may run), attempt (number of the current or last attempt),
  max_attempts (after this attempt number it is dead), attempt_budget (what
  `retry` grants again), retry_base/retry_factor/retry_cap (per-task backoff),
  timeout, reason (why stalled or cancelled), releases, progress, progress_message,
  result (JSON), error_type, error_message, error_traceback, worker,
  lease_expires, cancel_requested, key + unique_key + key_mode (unique keys),
  has_parents / has_dependents (see dependency),
  created_at, started_at (when a handler started the current or last attempt; null
  while leased), finished_at, updated_at,
  schedule_id + due_at (unique together: one run per schedule and due time)
  indexes for dispatch, leases and search are listed below the Task model

attempt   one row per finished attempt: the task's history
  task_id, attempt, worker, started_at (null: no handler started it, or its worker never
  said), ended_at, outcome (succeeded|failed|lost|interrupted|released|cancelled), error_type, error_message, error_traceback

dependency  task_id waits until parent_id has succeeded

queuesetting  a queue's order, weight, concurrency, rate and pause
tasklimit     fleet-wide concurrency and rate of a task name

event     append-only: what happened, for hooks, `martinet watch` and catch-up (see events.py)
  id (the event id: increasing, in commit order), task_id (null for malformed),
  name (the task's), kind (progress|succeeded|failed|dead|cancelled|stalled|
  released|interrupted|malformed), at, body (JSON: the event as clients get it).
  No secondary index: written on the hot path (one multi-row INSERT per turn),
  read by id (replay) and pruned oldest id first after keep_events; the newest
  row is never pruned, so no backend hands out an id twice (SQLite and older
  MySQL number a new row after the largest one left)

database_identity  one row: this database's identity, a random id made when its schema
  is created (or upgraded to have one), never changed after. The daemon gives it
  to workers in WELCOME; a worker's journal keeps each outcome with it, so that an
  outcome is never sent to a daemon of another database (journal.py). The epoch
  changes at each start of a daemon: it is not the identity. Daemons sharing one
  database share it (an outcome may go to any of them); a copy of the database
  (a restored backup) has it too
  database_id, created_at

schedule  one row per recurring schedule
  id, request_id, key, name, username, description, args, queue, priority, max_attempts,
  kind (interval|cron), spec, timezone, until, remaining (runs left of a
  count), misfire (once|all|skip), misfire_grace, next_due, last_due,
  status (active|paused|finished|removed), created_at, updated_at
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from peewee import (
    AutoField,
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    Database,
    DoubleField,
    IntegerField,
    Model,
    TextField,
)

from martinet.states import HELD, STATES, TERMINAL, TaskState

# Task states (martinet/states.py), by the names the rest of the code has always used.
WAITING, SCHEDULED, QUEUED = TaskState.WAITING, TaskState.SCHEDULED, TaskState.QUEUED
LEASED, RUNNING = TaskState.LEASED, TaskState.RUNNING
SUCCEEDED, FAILED, DEAD = TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD
CANCELLED, STALLED = TaskState.CANCELLED, TaskState.STALLED
__all__ = ["HELD", "STATES", "TERMINAL", "Tables", "bind"]  # and the models and states below


class BaseModel(Model):
    """The tables' shape only: bound to no database. A query runs on the models that
    `bind(db)` makes for one database (Store.Task, ...), never on these."""

    class Meta:
        legacy_table_names = False


class Schedule(BaseModel):
    id = AutoField()
    request_id = CharField(max_length=64, null=True, unique=True)
    key = CharField(max_length=255, null=True, unique=True)  # declared in code: created once, then updated
    name = CharField(max_length=255)
    username = CharField(max_length=255, null=True)
    description = TextField(null=True)
    args = TextField(default="{}")
    queue = CharField(max_length=255, default="default")
    priority = IntegerField(default=0)
    max_attempts = IntegerField(null=True)
    kind = CharField(max_length=16)
    spec = CharField(max_length=255)
    timezone = CharField(max_length=64, default="UTC")
    until = DoubleField(null=True)  # no run is due after this
    remaining = IntegerField(null=True)  # runs left to create (from count); null: no count
    misfire = CharField(max_length=8, default="once")  # once | all | skip (see recurring.py)
    misfire_grace = DoubleField(null=True)  # seconds late a run is still worth running
    next_due = DoubleField(null=True, index=True)
    last_due = DoubleField(null=True)
    status = CharField(max_length=16, default="active")
    created_at = DoubleField()
    updated_at = DoubleField()


class Task(BaseModel):
    id = AutoField()
    request_id = CharField(max_length=64, null=True, unique=True)
    name = CharField(max_length=255)
    username = CharField(max_length=255, null=True)
    description = TextField(null=True)
    args = TextField(default="{}")
    queue = CharField(max_length=255, default="default")
    priority = IntegerField(default=0)
    status = CharField(max_length=16)
    run_at = DoubleField()
    attempt = IntegerField(default=0)
    max_attempts = IntegerField(default=3)
    attempt_budget = IntegerField(default=3)  # attempts given at submit; `retry` gives as many again
    retry_base = DoubleField(null=True)  # per-task backoff; null: the daemon's settings
    retry_factor = DoubleField(null=True)
    retry_cap = DoubleField(null=True)
    timeout = DoubleField(null=True)  # seconds an attempt may run before it is interrupted
    reason = TextField(null=True)  # why it is stalled or cancelled
    releases = IntegerField(default=0)  # times a handler gave it back (martinet.Release)
    key = CharField(max_length=255, null=True)  # the user's name for it
    # Equal to key while the key is taken: always for unique="always", until the task
    # ends for unique="active". The unique index is what makes a key a key.
    unique_key = CharField(max_length=255, null=True)
    key_mode = CharField(max_length=8, null=True)  # active | always
    has_parents = BooleanField(default=False)  # it waits on others (see Dependency)
    has_dependents = BooleanField(default=False)  # others wait on it
    progress = DoubleField(null=True)
    progress_message = TextField(null=True)
    result = TextField(null=True)
    error_type = CharField(max_length=255, null=True)
    error_message = TextField(null=True)
    error_traceback = TextField(null=True)
    worker = CharField(max_length=255, null=True)
    daemon = CharField(max_length=64, null=True)  # the daemon that leased its current (or last) attempt
    lease_expires = DoubleField(null=True)
    cancel_requested = BooleanField(default=False)
    created_at = DoubleField()
    started_at = DoubleField(null=True)
    finished_at = DoubleField(null=True)
    updated_at = DoubleField()
    schedule_id = IntegerField(null=True)
    due_at = DoubleField(null=True)


class PartialIndex(NamedTuple):
    """An index over the rows that match `where` only (SQLite, PostgreSQL): a task that
    leaves those rows costs the index one delete, and the rest never touch it. MySQL
    has no partial indexes: there it covers every row, `full` its columns."""

    name: str
    columns: str
    where: str
    full: str
    unique: bool = False


# Made by migrations (store.open_database). Running scans (lost workers, leases) read the leased and
# running rows through task_status_created: they are few, bounded by the workers' capacity.
PARTIAL_INDEXES = (
    # The dispatch order, served by the index itself (no sort, however long the queue):
    # higher priority first, then earlier due time, then submission order.
    PartialIndex("task_ready", "queue, priority DESC, run_at, id", "status = 'queued'",
                 "status, queue, priority DESC, run_at, id"),
    PartialIndex("task_due", "run_at", "status IN ('scheduled', 'failed')", "status, run_at"),  # timers
    PartialIndex("task_keyed", "key", "key IS NOT NULL", "key"),
    # The unique index is what makes a key a key; and one run per schedule and due time.
    PartialIndex("task_key_taken", "unique_key", "unique_key IS NOT NULL", "unique_key", unique=True),
    PartialIndex("task_schedule_run", "schedule_id, due_at", "schedule_id IS NOT NULL", "schedule_id, due_at",
                 unique=True),
    # Search and retention by finished time (--time/--sort finished, prune): finished tasks
    # only, so that a task written while new, queued or running adds no entry to it.
    PartialIndex("task_finished", "finished_at, id", "finished_at IS NOT NULL", "finished_at, id"),
)  # fmt: skip

# Search (store.search_tasks): pages come newest first by (created_at, id), so
# each common filter has an index ending in those columns and the first page
# reads just its own rows, whatever the table's size. (name, status, ...) also
# serves claims by name. Other filters walk task_created and stop at a page.
Task.add_index(Task.index(Task.created_at, Task.id, name="task_created"))
Task.add_index(Task.index(Task.status, Task.created_at, Task.id, name="task_status_created"))
Task.add_index(Task.index(Task.name, Task.status, Task.created_at, Task.id, name="task_name_status_created"))


class Dependency(BaseModel):
    """Task `task_id` runs only after task `parent_id` has succeeded."""

    id = AutoField()
    task_id = IntegerField(index=True)
    parent_id = IntegerField(index=True)


class Attempt(BaseModel):
    id = AutoField()
    task_id = IntegerField(index=True)
    attempt = IntegerField()
    worker = CharField(max_length=255, null=True)
    started_at = DoubleField(null=True)
    ended_at = DoubleField()
    outcome = CharField(max_length=16)
    error_type = CharField(max_length=255, null=True)
    error_message = TextField(null=True)
    error_traceback = TextField(null=True)


class QueueSetting(BaseModel):
    """A queue's dispatch settings; a queue without a row has the defaults."""

    name = CharField(max_length=255, primary_key=True)
    order = CharField(max_length=8, default="fifo")  # fifo | random
    weight = IntegerField(default=1)  # share of free slots among busy queues
    concurrency = IntegerField(null=True)  # running at once, fleet-wide
    rate_count = IntegerField(null=True)  # starts per rate_period, fleet-wide
    rate_period = DoubleField(null=True)
    paused = BooleanField(default=False)
    updated_at = DoubleField()


class TaskLimit(BaseModel):
    """Fleet-wide limits of one task name, as its workers declare them."""

    name = CharField(max_length=255, primary_key=True)
    concurrency = IntegerField(null=True)
    rate_count = IntegerField(null=True)
    rate_period = DoubleField(null=True)
    updated_at = DoubleField()


class Event(BaseModel):
    """One event: a task's progress or an attempt's end, or a message the daemon dropped."""

    id = BigAutoField()
    task_id = BigIntegerField(null=True)
    name = CharField(max_length=255, null=True)
    kind = CharField(max_length=16)
    at = DoubleField()
    body = TextField()


# A task's events (its page in the dashboard, `show`): read by task, newest first.
Event.add_index(Event.index(Event.task_id, Event.id, name="event_task"))


class DatabaseIdentity(BaseModel):
    """This database's identity (one row): see the module docstring."""

    database_id = CharField(max_length=64, primary_key=True)
    created_at = DoubleField()

    class Meta:
        table_name = "database_identity"


class DaemonRow(BaseModel):
    """A `martinet serve` on this database, a row a start: where clients reach it, and
    its heartbeat (store/daemons.py). Its id is the daemon's epoch."""

    id = CharField(max_length=64, primary_key=True)
    host = CharField(max_length=255)
    pid = IntegerField()
    address = CharField(max_length=255)  # its client socket, as a client on another host reaches it
    version = CharField(max_length=32)
    started_at = DoubleField()
    beat_at = DoubleField()
    stopped_at = DoubleField(null=True)

    class Meta:
        table_name = "daemon"


TABLES = [Schedule, Task, Attempt, Dependency, QueueSetting, TaskLimit, Event, DatabaseIdentity, DaemonRow]


class Tables(NamedTuple):
    """The models bound to one database (see bind)."""

    Schedule: type[Schedule]
    Task: type[Task]
    Attempt: type[Attempt]
    Dependency: type[Dependency]
    QueueSetting: type[QueueSetting]
    TaskLimit: type[TaskLimit]
    Event: type[Event]
    DatabaseIdentity: type[DatabaseIdentity]
    DaemonRow: type[DaemonRow]


_binding = threading.Lock()


def bind(db: Database) -> Tables:
    """The models, bound to `db`: a subclass of each whose Meta names that database, made
    once per database (kept on it, so they go with it). Nothing global changes, so stores
    on different databases (two embedded daemons, each in its own thread) never send a
    query to the other's. peewee's own Model.bind and Database.bind_ctx re-point the
    shared classes instead, for every thread at once."""
    tables: Tables | None = getattr(db, "_martinet_tables", None)
    if tables is None:
        with _binding:
            tables = getattr(db, "_martinet_tables", None)
            if tables is None:
                tables = Tables(*(_bound_model(model, db) for model in TABLES))
                db._martinet_tables = tables  # type: ignore[attr-defined]  # our own attribute on peewee's Database
    return tables


def _bound_model(model: type[BaseModel], db: Database) -> type:
    meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
    return type(model.__name__, (model,), {"Meta": meta, "__module__": __name__})
