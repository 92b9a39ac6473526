"""Every state change of tasks and schedules: one named function each, SQL beside it.

The daemon's loop is the only caller that writes; it wraps one turn of its loop
in one transaction (group commit). Results are fenced by attempt number: an
UPDATE that names (id, attempt) changes nothing when a newer attempt exists.

This is the store's interface: what each method must do and guarantee, on every
backend. tests/store is its conformance suite (`pytest tests/store --db URL` runs
it on any database; docs/backends.md). What holds for every method:

- Transactions: no method commits the caller's work. Each runs in the caller's
  transaction (the daemon's `with store.atomic():` around a turn), so a turn's
  changes commit together or not at all; called outside one, each statement
  commits by itself. Methods that may lose a race for a unique index (submit and
  add_schedule with a key, retry_task taking a key back) wrap that insert in a
  savepoint, so losing it spoils nothing else in the transaction. (In the daemon's
  turn on SQLite no savepoint is made: SQLite undoes a failed statement by itself,
  and a block that fails after it wrote has its turn taken again with savepoints:
  SqlKit.skipping_savepoints.)
- Time: nothing reads the clock. Times come in as `now` (UTC epoch seconds) and
  are stored as such; a test passes any `now` it likes.
- Fencing: an answer about an attempt (unclaim, start, progress, complete, fail,
  release, end_attempts) changes the task only while that attempt is the current
  one (leased or running), held by that worker; otherwise it changes nothing and returns None (False
  for progress). A late answer from an old attempt, a resend of one already
  counted, or an answer for a task that was cancelled or reaped meanwhile is
  therefore harmless, and the daemon still acknowledges it.
- One lease at a time: a task is held (leased or running) by at most one worker.
  claim moves it from queued to leased and counts the attempt in one conditional
  UPDATE; start moves it to running when a handler takes it. Leases, fencing,
  reaping and time limits treat leased and running alike; on
  PostgreSQL and MySQL its candidates are read FOR UPDATE SKIP LOCKED, so
  daemons claiming at once skip each other's rows; on SQLite the write lock
  (BEGIN IMMEDIATE) makes claimers take turns.
- Decided by unique indexes, not by reads, so several daemons sharing one
  database agree: a taken key holds one task (a submit that loses the race
  returns the holder, read with a locking read on MySQL, whose snapshot would
  miss it); a schedule's key names one schedule; one run
  per (schedule, due time); a request_id never makes two tasks or schedules (a
  second insert at the same moment is refused; the client's retry finds the first).
- Every attempt that ends leaves one attempt row, the task's history (unclaim
  leaves none: that attempt never started). A task in a terminal state
  (succeeded, dead, cancelled) changes again only when an operator asks
  (retry_task), and prune is the only method that deletes tasks.
- Reads return plain records (get_task a rows.TaskRow, search_tasks and attempts
  rows, get_schedule a rows.ScheduleRecord), never reply dicts: martinet/present.py
  shows them (task_info, schedule_info: times as ISO 8601 UTC) where replies are
  built. A missing task or schedule reads as None. An operator action on a missing
  one raises TaskNotFound; on one whose state does not allow it, BadInput saying
  why (the reply's own message).
- Database errors are peewee's (IntegrityError, OperationalError, ...), raised,
  not swallowed, except the lost races above; end_attempts raises StoreError
  when a row it read changed before it wrote (see there).

The hot path (submit, claim, outcomes, timers) runs hand-written SQL on the
Store's own connection; the rest goes through the models bound to that same
database (models.bind: self.Task, ...). Nothing is global: stores on different
databases in one process (two embedded daemons) never mix.

The store is one class made of its concerns, each a module over the SQL kit
(sql.py): tasks.py (submit, timers, claim, start), leases.py (renew, readopt, lost
workers, time limits), outcomes.py (an attempt's end, fenced), dependents.py
(tasks waiting on others), actions.py (an operator's revoke, retry, stall, update),
schedules.py, queues.py (settings and limits), search.py (reads and search),
retention.py (prune, events). connect.py opens a database; rows.py holds the
plain records and the rows written.
"""

from __future__ import annotations

from martinet.messages.outcome import Outcome  # what end_attempts takes (re-exported)
from martinet.present import iso, schedule_info, schedule_ref, task_info
from martinet.store.actions import Actions
from martinet.store.connect import (
    DRIVERS,
    SCHEMES,
    WAL_BACKSTOP_PAGES,
    WalCheckpointer,
    listen_changes,
    open_database,
    redact,
)
from martinet.store.daemons import Daemons
from martinet.store.leases import Leases
from martinet.store.listen import Changes
from martinet.store.pg import DeferredWriteFailed, TakeAgain
from martinet.store.queues import Queues
from martinet.store.retention import PRUNE_BATCH, EventRows, Retention
from martinet.store.rows import TASK_DEFAULTS, Pruned, RunningRow
from martinet.store.schedules import Schedules
from martinet.store.search import INFO_COLUMNS, TIME_COLUMNS, Reads

__all__ = [
    "Changes",
    "DRIVERS",
    "DeferredWriteFailed",
    "EventRows",
    "INFO_COLUMNS",
    "PRUNE_BATCH",
    "SCHEMES",
    "TASK_DEFAULTS",
    "TakeAgain",
    "TIME_COLUMNS",
    "WAL_BACKSTOP_PAGES",
    "Outcome",
    "Pruned",
    "RunningRow",
    "Store",
    "WalCheckpointer",
    "iso",
    "listen_changes",
    "open_database",
    "redact",
    "schedule_info",
    "schedule_ref",
    "task_info",
]


class Store(Leases, Actions, Schedules, Queues, Reads, Retention, Daemons):
    """The only writer. Each method is one state transition or one read; the module
    docstring says what holds for all of them. Made on one database, with the retry
    policy, poison_after and max_releases of SqlKit."""
