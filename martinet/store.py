"""Every state change of tasks and schedules: one named function each, SQL beside it.

The daemon's loop is the only caller that writes; it wraps one turn of its loop
in one transaction (group commit). Results are fenced by attempt number: an
UPDATE that names (id, attempt) changes nothing when a newer attempt exists.

This is the store's interface: what each method must do and guarantee, on every
backend. tests/store is its conformance suite (`pytest tests/store --db URL` runs
it on any database; README, "Adding a backend"). What holds for every method:

- Transactions: no method commits the caller's work. Each runs in the caller's
  transaction (the daemon's `with store.atomic():` around a turn), so a turn's
  changes commit together or not at all; called outside one, each statement
  commits by itself. Methods that may lose a race for a unique index (submit and
  add_schedule with a key, retry_task taking a key back) wrap that insert in a
  savepoint, so losing it spoils nothing else in the transaction.
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
- Reads return plain dicts (task_info, schedule_info: times as ISO 8601 UTC),
  never model objects; a missing task or schedule reads as None, and an operator
  action on a missing task returns "missing" (on a missing schedule, None).
- Database errors are peewee's (IntegrityError, OperationalError, ...), raised,
  not swallowed, except the lost races above; end_attempts raises StoreError
  when a row it read changed before it wrote (see there).

The hot path (submit, claim, outcomes, timers) runs hand-written SQL on the
Store's own connection; the rest goes through the models (models.database, the
proxy open_database points at this database): one process, one database.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlparse

import peewee
from playhouse.db_url import connect as connect_url

from martinet import migrations, recurring, when
from martinet.errors import StoreError, TaskNotFound
from martinet.models import (
    CANCELLED,
    DEAD,
    FAILED,
    HELD,
    LEASED,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STALLED,
    SUCCEEDED,
    TERMINAL,
    WAITING,
    Attempt,
    Dependency,
    QueueSetting,
    Schedule,
    Task,
    TaskLimit,
    database,
)
from martinet.query import Search
from martinet.retry import RetryPolicy

log = logging.getLogger(__name__)

SCHEMES = ("sqlite", "postgres", "postgresql", "mysql", "mariadb")
# The driver each server backend needs, and the extra that installs it.
DRIVERS = {
    "postgres": ("psycopg2", "postgres"),
    "postgresql": ("psycopg2", "postgres"),
    "mysql": ("pymysql", "mysql"),
    "mariadb": ("pymysql", "mysql"),
}
# Column defaults live in the models (peewee sets them, not the database): raw inserts need them.
TASK_DEFAULTS = {
    f.column_name: f.default
    for f in Task._meta.sorted_fields
    if f.default is not None and not callable(f.default)
}
TIMED = (SCHEDULED, FAILED)  # states that become QUEUED when run_at comes
REVOCABLE = (WAITING, SCHEDULED, QUEUED, FAILED, STALLED)
# Finished tasks read per prune call: a delete of 500 tasks (and their attempts) takes
# a few milliseconds, short enough to run inside a turn of the daemon's loop.
PRUNE_BATCH = 500
EVENT_COLUMNS = ("task_id", "name", "kind", "at", "body")  # what record_events writes
TIME_COLUMNS = {"created": "created_at", "due": "run_at", "finished": "finished_at"}  # search times


def open_database(url: str) -> peewee.Database:
    """Connect by URL (sqlite:///path.db, postgresql://..., mysql://...) and bring the
    schema to this version: a new database gets the current one, an older one is
    migrated (martinet/migrations.py), a newer one is refused (SchemaTooNew).
    Points models.database at it. Raises StoreError saying what to change when the
    URL, the driver or the server is wrong."""
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise StoreError(
            f"cannot use database URL {redact(url)}: martinet knows sqlite:///file.db, "
            f"postgresql://user@host/db and mysql://user@host/db"
        )
    _require_driver(scheme)
    try:
        if scheme == "sqlite":
            path = url.split(":///", 1)[1] if ":///" in url else ""
            path, _, query = path.partition("?")
            if not path:
                raise StoreError(f"SQLite URL {url!r} names no file; use sqlite:///path/to/file.db")
            db = peewee.SqliteDatabase(
                path,
                lock_type="IMMEDIATE",  # one writer; no read-to-write upgrade deadlocks
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": _sqlite_synchronous(url, query),
                    "busy_timeout": 5000,
                    "foreign_keys": 1,
                    # A backstop: the daemon's WalCheckpointer keeps the log far shorter.
                    "wal_autocheckpoint": WAL_BACKSTOP_PAGES,
                    "journal_size_limit": 64 * 1024 * 1024,  # a long log is cut back after a checkpoint
                    # Statement journals (the undo of one multi-row statement inside a transaction)
                    # stay in memory: spilled to temporary files, they cost a write call per page.
                    "temp_store": "memory",
                },
            )
        elif scheme in ("mysql", "mariadb"):
            # TEXT holds 64 KiB on MySQL; results and args may be larger.
            # (peewee reads field_types when the Database is made: pass them in, not after.)
            db = connect_url(
                url.replace("mariadb://", "mysql://", 1), charset="utf8mb4", field_types={"TEXT": "LONGTEXT"}
            )
        else:
            db = connect_url(url)
        database.initialize(db)
        db.connect(reuse_if_open=True)
        migrations.upgrade(db)  # a new database gets the current schema; an older one is migrated
    except peewee.PeeweeException as exc:
        raise StoreError(f"cannot open database {redact(url)}: {exc}") from None
    except ValueError as exc:
        raise StoreError(f"cannot read database URL {redact(url)}: {exc}") from None
    except ImportError as exc:
        raise StoreError(f"cannot open database {redact(url)}: {exc}") from None
    return db


def _require_driver(scheme: str) -> None:
    """StoreError naming the extra to install when the backend's driver is missing
    (peewee itself only says 'driver not installed', and only once it connects)."""
    if scheme not in DRIVERS:
        return
    module, extra = DRIVERS[scheme]
    try:
        __import__(module)
    except ImportError:
        raise StoreError(
            f"the {scheme} driver ({module}) is not installed: pip install 'martinet[{extra}]'"
        ) from None


# Pages of write-ahead log after which a commit checkpoints it itself (SQLite's default
# is 1,000). A checkpoint syncs the disk and takes milliseconds: done by the committing
# thread, it made one commit in a hundred of the daemon's loop take 5 to 25 ms, most of
# the average cost of a commit. The daemon checkpoints from a thread of its own instead.
WAL_BACKSTOP_PAGES = 20_000


class WalCheckpointer:
    """Copies a SQLite database's write-ahead log back into the database file, from a
    thread and connection of its own, so that the daemon's loop never waits for a
    checkpoint's disk syncs (SQLite releases the GIL while it works).

    A PASSIVE checkpoint never blocks the writer: it copies what no reader still needs;
    once all of it is copied, the next commit starts the log again from its beginning.
    Durability is unchanged: what a commit guarantees is decided by `synchronous`.
    """

    INTERVAL = 0.1  # seconds between checkpoints: about a few hundred commits' worth of log

    def __init__(self, db: peewee.Database) -> None:
        self.path = db.database
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="martinet-checkpoint", daemon=True)

    def start(self) -> WalCheckpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("cannot open %s to checkpoint it; commits will do it: %s", self.path, exc)
            return
        try:
            while not self._stop.wait(self.INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # busy or gone for a moment: try again next time
                    log.debug("checkpoint of %s did not run: %s", self.path, exc)
        finally:
            conn.close()


def _sqlite_synchronous(url: str, query: str) -> str:
    """`?synchronous=full` in a SQLite URL: every commit reaches the disk before it is
    acknowledged, so a power loss loses nothing acknowledged either. The default,
    normal, in WAL mode loses nothing when a process crashes or is killed; a power
    loss or OS crash may lose the last commits (never corrupts the database)."""
    options = parse_qs(query)
    unknown = set(options) - {"synchronous"}
    value = options.get("synchronous", ["normal"])[-1].lower()
    if unknown or value not in ("normal", "full", "extra"):
        raise StoreError(
            f"SQLite URL {redact(url)}: the only option is ?synchronous=normal|full|extra (got {query!r})"
        )
    return value


def redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def schedule_ref(schedule_id: int) -> str:
    return f"s{schedule_id}"


class Store:
    """The only writer. Each method is one state transition or one read; the module
    docstring says what holds for all of them."""

    def __init__(
        self,
        db: peewee.Database,
        retry: RetryPolicy | None = None,
        poison_after: int = 3,
        max_releases: int = 10,
    ) -> None:
        self.db = db
        self.retry = retry or RetryPolicy()
        self.poison_after = poison_after  # lost attempts after which a task is stalled
        self.max_releases = max_releases  # releases after which a task is stalled
        self.locks_rows = not isinstance(db, peewee.SqliteDatabase)
        self.is_mysql = isinstance(db, peewee.MySQLDatabase)
        self.returns_ids = isinstance(db, peewee.PostgresqlDatabase)  # INSERT ... RETURNING id
        # Without statistics, SQLite may serve `id IN (...) AND status = ?` from a status
        # index, scanning every queued row; a unary + keeps it on the primary key.
        self.by_id_status = "+status" if isinstance(db, peewee.SqliteDatabase) else "status"
        # And without statistics it may prefer an equality on status_created to a range on a
        # partial index (models.PARTIAL_INDEXES): the hot queries name theirs.
        sqlite = isinstance(db, peewee.SqliteDatabase)
        self.ready_rows = "task INDEXED BY task_ready" if sqlite else "task"
        self.due_rows = "task INDEXED BY task_due" if sqlite else "task"
        self.savepoints = 0  # open _Savepoints: the next one's name
        self._sql_cache: dict[str, str] = {}
        self._insert_sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._update_sql: dict[tuple[tuple[str, ...], str], str] = {}
        # Bound parameters per statement: SQLite before 3.32 allows 999.
        self.max_params = (
            999 if isinstance(db, peewee.SqliteDatabase) and sqlite3.sqlite_version_info < (3, 32) else 32_000
        )

    # The hot path (submit, claim, outcomes) runs hand-written SQL: peewee takes
    # about 100 µs to build a query on this kind of machine; the statement itself
    # runs in about 10. Placeholders are written `?` and adapted to the driver.

    def _exec(self, sql: str, params: Iterable[Any] = (), cache: bool = True) -> Any:
        ready = self._sql_cache.get(sql)
        if ready is None:
            ready = sql.replace("?", self.db.param)
            if cache:
                self._sql_cache[sql] = ready
        return self.db.execute_sql(ready, tuple(params))

    def _name(self, column: str) -> str:
        """A quoted column name (`key` is reserved on MySQL)."""
        return f"{self.db.quote[0]}{column}{self.db.quote[1]}"

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        sql = self._insert_sql.get((table, tuple(row)))
        if sql is None:
            columns = ", ".join(map(self._name, row))
            sql = self._insert_sql[(table, tuple(row))] = (
                f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})"
            )
        if self.returns_ids:
            return self._exec(sql + " RETURNING id", row.values()).fetchone()[0]
        return self._exec(sql, row.values()).lastrowid

    def _insert_rows(self, table: str, rows: list[dict[str, Any]]) -> list[int]:
        """Rows in multi-row INSERTs, each run of rows with the same columns in one (a column
        a row leaves out is NULL: fewer values to bind, the larger part of a row's cost);
        returns their ids in order. Not on MySQL.

        SQLite numbers the rows of one INSERT one after another (the transaction holds
        the only write lock), so the ids end at lastrowid; PostgreSQL's ids are drawn
        from the table's sequence first, so their order is certain."""
        ids: list[int] = []
        start = 0
        while start < len(rows):
            columns = rows[start].keys()
            end = start + 1
            while end < len(rows) and rows[end].keys() == columns:
                end += 1
            ids += self._insert_run(table, rows[start:end])
            start = end
        return ids

    def _insert_run(self, table: str, rows: list[dict[str, Any]]) -> list[int]:
        columns = list(rows[0])
        if self.returns_ids:
            seq = f"pg_get_serial_sequence('{table}', 'id')"
            ids = [r[0] for r in self._exec(f"SELECT nextval({seq}) FROM generate_series(1, ?)", [len(rows)])]
            rows = [{"id": i, **row} for i, row in zip(ids, rows, strict=True)]
            columns = ["id", *columns]
        per = max(1, self.max_params // len(columns))
        one = f"({', '.join('?' * len(columns))})"
        head = f"INSERT INTO {table} ({', '.join(map(self._name, columns))}) VALUES "
        out: list[int] = []
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            params = [row[column] for row in chunk for column in columns]
            last = self._exec(head + ", ".join([one] * len(chunk)), params, cache=False).lastrowid
            if not self.returns_ids:
                out.extend(range(last - len(chunk) + 1, last + 1))
        return ids if self.returns_ids else out

    def _update_task(self, changes: dict[str, Any], where: str, params: Iterable[Any]) -> int:
        sql = self._update_sql.get((tuple(changes), where))
        if sql is None:
            assignments = ", ".join(f"{self._name(column)} = ?" for column in changes)
            sql = self._update_sql[(tuple(changes), where)] = f"UPDATE task SET {assignments} WHERE {where}"
        return self._exec(sql, [*changes.values(), *params]).rowcount

    def _latest(self, query: peewee.Select) -> peewee.Select:
        """The query as a read of the latest committed rows: on MySQL, whose REPEATABLE READ
        would show the turn's own snapshot, a locking read (the row another daemon just
        committed, which made our insert a duplicate, is there to be found)."""
        return query.for_update("LOCK IN SHARE MODE") if self.is_mysql else query

    def atomic(self) -> Any:
        """A transaction (a savepoint inside one): everything in it commits together or
        not at all. On SQLite it begins IMMEDIATE, taking the write lock at once."""
        if self.db.transaction_depth() == 0:
            return _Transaction(self.db)
        return _Savepoint(self)

    def changes(self) -> int | None:
        """Rows this connection has changed so far (SQLite), so that a caller can tell a
        commit that wrote something from an empty one; None where no count is kept."""
        if isinstance(self.db, peewee.SqliteDatabase) and not self.db.is_closed():
            return self.db.connection().total_changes
        return None

    def close(self) -> None:
        """Close this store's connection (a no-op when closed)."""
        if not self.db.is_closed():
            self.db.close()

    # ---- submit -------------------------------------------------------------

    def submit(self, spec: dict[str, Any], now: float) -> tuple[int, bool]:
        """Insert one task; returns (id, created).

        Idempotent by request_id: a retried submit returns the first one's id and
        created False, and changes nothing. Queued when `run_at` is missing or not
        after `now`, scheduled otherwise; waiting while tasks in `after` are
        unfinished; cancelled at once when one of them is dead or cancelled.
        Raises TaskNotFound, writing nothing, when `after` names an unknown task.

        A known request_id returns the task it created. A `key` that is taken
        (see models.Task.unique_key) returns the task holding it: the unique
        index decides, so concurrent submitters and several daemons agree.
        Tasks named in `after` must exist; the new task waits for them.
        """
        rid, key = spec.get("request_id"), spec.get("key")
        if rid:
            existing = self._exec("SELECT id FROM task WHERE request_id = ?", (rid,)).fetchone()
            if existing is not None:
                return existing[0], False
        if key:
            holder = self._exec("SELECT id FROM task WHERE unique_key = ?", (key,)).fetchone()
            if holder is not None:
                return holder[0], False
        row = self._task_row(spec, now)
        row.update(request_id=rid, key=key, unique_key=key, key_mode=spec.get("unique") if key else None)
        parents = self._check_parents(spec.get("after") or [])
        if parents:
            row["has_parents"] = True
            blocked = [p for p in parents if p.status in (DEAD, CANCELLED)]
            if blocked:
                row.update(status=CANCELLED, finished_at=now, unique_key=None)
                row["reason"] = f"task {blocked[0].id} it waits on ended {blocked[0].status}"
            elif any(p.status != SUCCEEDED for p in parents):
                row["status"] = WAITING
        try:
            if key:
                with self.atomic():  # a savepoint: a lost race for the key spoils nothing else
                    task_id = self._insert("task", row)
            else:
                task_id = self._insert("task", row)
        except peewee.IntegrityError:
            holder = self._latest(Task.select(Task.id).where(Task.unique_key == key)).first() if key else None
            if holder is None:
                raise
            return holder.id, False  # another daemon took the key between our read and write
        if parents:
            Dependency.insert_many([{"task_id": task_id, "parent_id": p.id} for p in parents]).execute()
            Task.update(has_dependents=True).where(Task.id.in_([p.id for p in parents])).execute()
        return task_id, True

    def submit_many(self, specs: list[dict[str, Any]], now: float) -> list[tuple[int, bool]]:
        """Insert many tasks; returns (id, created) for each, in order, as submit() would.

        A request_id repeated within the batch is one task. The same guarantees as
        submit; ids are in the order of `specs`.

        Tasks without a key or parents go in with multi-row INSERTs (their
        request_ids looked up in one query); on MySQL, whose multi-row INSERT
        does not tell each row's id, or with keys or parents, one by one.
        """
        if self.is_mysql or any(spec.get("key") or spec.get("after") for spec in specs):
            return [self.submit(spec, now) for spec in specs]
        known = self._known_requests([spec["request_id"] for spec in specs if spec.get("request_id")])
        rows: list[dict[str, Any]] = []
        slots: list[tuple[int | None, int, bool]] = []  # (known id, or None and the new row's index; created)
        new_rows: dict[str, int] = {}  # request_id -> index of its row, for repeats within the batch
        for spec in specs:
            rid = spec.get("request_id")
            if rid in known:
                slots.append((known[rid], 0, False))
            elif rid in new_rows:
                slots.append((None, new_rows[rid], False))
            else:
                row = self._task_row(spec, now)
                if rid:
                    row["request_id"] = rid
                    new_rows[rid] = len(rows)
                slots.append((None, len(rows), True))
                rows.append(row)
        ids = self._insert_rows("task", rows)
        return [(ids[index] if task_id is None else task_id, created) for task_id, index, created in slots]

    def _known_requests(self, request_ids: list[str]) -> dict[str, int]:
        known: dict[str, int] = {}
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            sql = f"SELECT request_id, id FROM task WHERE request_id IN ({', '.join('?' * len(chunk))})"
            known.update(self._exec(sql, chunk).fetchall())
        return known

    def _check_parents(self, after: list[int]) -> list[Task]:
        if not after:
            return []
        found = list(Task.select(Task.id, Task.status).where(Task.id.in_(after)))
        missing = sorted(set(after) - {p.id for p in found})
        if missing:
            raise TaskNotFound(
                f"after names unknown task(s) {', '.join(map(str, missing))}; nothing was created"
            )
        return found

    # ---- dispatch -----------------------------------------------------------

    def promote_due(self, now: float, lead: float = 0.0) -> list[str]:
        """Scheduled tasks and retries whose time has come, or comes within `lead` seconds,
        become queued; returns the queues they are in (read from the due rows alone,
        through the task_due index). A task queued ahead of its run_at keeps it: claim
        says so, and its worker starts it then.

        Due means run_at <= now + lead. Waiting, stalled and running tasks never move."""
        due = "status IN ('scheduled', 'failed') AND run_at <= ?"
        until = now + lead
        queues = [
            q for (q,) in self._exec(f"SELECT DISTINCT queue FROM {self.due_rows} WHERE {due}", (until,))
        ]
        if queues:
            self._exec(
                f"UPDATE {self.due_rows} SET status = 'queued', updated_at = ? WHERE {due}", (now, until)
            )
        return queues

    def next_wakeup(self, lead: float = 0.0) -> float | None:
        """The earliest time at which the daemon has something to do: `lead` seconds before
        the first run_at of a scheduled or failed (retrying) task (see promote_due), or
        next_due of an active schedule; None when nothing waits. The daemon sleeps until then."""
        sql = f"SELECT MIN(run_at) FROM {self.due_rows} WHERE status IN ('scheduled', 'failed')"
        task = self._exec(sql).fetchone()[0]
        sched = self._exec("SELECT MIN(next_due) FROM schedule WHERE status = 'active'").fetchone()[0]
        if task is not None:
            task -= lead
        times = [t for t in (task, sched) if t is not None]
        return min(times) if times else None

    def claim(
        self,
        worker: str,
        names: Iterable[str],
        limit: int,
        now: float,
        lease: float,
        queue: str | None = None,
        order: str = "fifo",
        accept: Callable[[dict], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Lease up to `limit` queued tasks with these names (in `queue`) to `worker`.

        fifo: higher priority first, then earlier due time, then submission
        order; random: any ready task. `accept` may refuse a candidate (a task
        name at its fleet-wide limit); refused ones stay queued.

        Each claimed task is leased (running once its worker says a handler started it:
        see start), its attempt counted (attempt + 1), held by `worker` until now + lease,
        started_at and progress cleared; it is returned with its id,
        name, queue, args (decoded), attempt, timeout, its run_at when that is still
        to come (it was queued ahead: see promote_due) and, when it waited on
        others, their results (`parents`). Never hands one task to two workers,
        even to daemons claiming at once (see the module docstring). Fewer than
        `limit` (or none) when fewer are ready.
        """
        names = list(names)
        if limit <= 0 or not names:
            return []
        sql = (
            f"SELECT id, name, queue, args, attempt, timeout, has_parents, run_at FROM {self.ready_rows}"
            f" WHERE status = 'queued' AND name IN ({', '.join('?' * len(names))})"
        )
        params: list[Any] = list(names)
        if queue is not None:
            sql += " AND queue = ?"
            params.append(queue)
        if order == "random":
            sql += " ORDER BY RAND()" if self.is_mysql else " ORDER BY RANDOM()"
        else:
            sql += " ORDER BY priority DESC, run_at, id"
        sql += " LIMIT ?"
        params.append(limit if accept is None else limit * 2 + 8)
        if self.locks_rows:
            sql += " FOR UPDATE SKIP LOCKED"
        columns = ("id", "name", "queue", "args", "attempt", "timeout", "has_parents", "run_at")
        rows = [dict(zip(columns, r, strict=True)) for r in self._exec(sql, params).fetchall()]
        if accept is not None:
            rows = [r for r in rows if accept(r)][:limit]
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        self._exec(
            "UPDATE task SET status = 'leased', attempt = attempt + 1, worker = ?, lease_expires = ?,"
            " started_at = NULL, updated_at = ?, progress = NULL, progress_message = NULL"
            f" WHERE id IN ({', '.join('?' * len(ids))}) AND {self.by_id_status} = 'queued'",
            [worker, now + lease, now, *ids],
        )
        waiting_on = [r["id"] for r in rows if r.pop("has_parents")]
        parents = self._parent_results(waiting_on) if waiting_on else {}
        for r in rows:
            r["attempt"] += 1
            r["args"] = json.loads(r["args"])
            if r["run_at"] <= now:
                del r["run_at"]
            if r["id"] in parents:
                r["parents"] = parents[r["id"]]
        return rows

    def _parent_results(self, task_ids: list[int]) -> dict[int, dict[str, Any]]:
        """What the tasks these waited on returned, as {task id: {parent id: result}}."""
        out: dict[int, dict[str, Any]] = {}
        query = (
            Dependency.select(Dependency.task_id, Dependency.parent_id, Task.result)
            .join(Task, on=(Task.id == Dependency.parent_id))
            .where(Dependency.task_id.in_(task_ids))
            .tuples()
        )
        for task_id, parent_id, result in query:
            out.setdefault(task_id, {})[str(parent_id)] = None if result is None else json.loads(result)
        return out

    def unclaim(self, task_id: int, attempt: int, now: float) -> tuple[str, str] | None:
        """A worker could not take the task (unknown name): back to the queue, no attempt spent.
        Returns the task's (queue, name), or None when it was not held in that attempt.
        No attempt row: the attempt never started."""
        row = Task.get_or_none(Task.id == task_id, Task.attempt == attempt, Task.status.in_(HELD))
        if row is None:
            return None
        (
            Task.update(
                status=QUEUED,
                attempt=Task.attempt - 1,
                worker=None,
                lease_expires=None,
                started_at=None,
                updated_at=now,
            )
            .where(Task.id == task_id, Task.attempt == attempt, Task.status.in_(HELD))
            .execute()
        )
        return row.queue, row.name

    def start(self, starts: list[tuple[int, int, str]], now: float) -> int:
        """Handlers started these (id, attempt, worker): each leased task is running from
        `now` (started_at). Fenced like an outcome: an old attempt, another worker's, or
        one already running or ended changes nothing. Returns how many started."""
        if not starts:
            return 0
        sql = self._update_sql.get((("status", "started_at"), "start"))
        if sql is None:
            sql = (
                "UPDATE task SET status = 'running', started_at = ?, updated_at = ?"
                " WHERE id = ? AND attempt = ? AND worker = ? AND status = 'leased'"
            ).replace("?", self.db.param)
            self._update_sql[(("status", "started_at"), "start")] = sql
        cursor = self.db.cursor()
        cursor.executemany(sql, [(now, now, task_id, attempt, worker) for task_id, attempt, worker in starts])
        return cursor.rowcount

    # ---- leases -------------------------------------------------------------

    def renew_leases(self, workers: Iterable[str], now: float, lease: float) -> int:
        """Traffic from these workers: their tasks' leases (leased or running) end at now + lease.
        Only leases with less than half their length left are written (a heartbeat
        costs no write most of the time); returns how many were."""
        workers = list(workers)
        if not workers:
            return 0
        return (
            Task.update(lease_expires=now + lease)
            .where(
                Task.status.in_(HELD),
                Task.worker.in_(workers),
                Task.lease_expires < now + lease / 2,
            )
            .execute()
        )

    def readopt(
        self,
        worker: str,
        running: list[dict],
        now: float,
        lease: float,
        limit: int | None = None,
        revived: list[tuple[str, str]] | None = None,
    ) -> list[int]:
        """A reconnecting worker still holds these (id, attempt; "started" when a handler
        took it): give the leases back to it.

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
        adopted: list[int] = []
        for item in running:
            if limit is not None and len(adopted) >= limit:
                break
            ended_by_worker = Attempt.select(Attempt.id).where(
                Attempt.task_id == item["id"],
                Attempt.attempt == item["attempt"],
                Attempt.outcome.not_in(("lost", "interrupted")),
            )
            where = (Task.id == item["id"], Task.attempt == item["attempt"])
            n = (
                Task.update(lease_expires=now + lease, updated_at=now)
                .where(*where, Task.status.in_(HELD), Task.worker == worker)
                .execute()
            )
            if n and item.get("started"):  # its start report may have been lost with the connection
                self.start([(item["id"], item["attempt"], worker)], now)
            elif not n:
                started_at = (
                    peewee.fn.COALESCE(Task.started_at, now) if item.get("started") else Task.started_at
                )
                status = peewee.Case(None, [(started_at.is_null(), LEASED)], RUNNING)
                n = (
                    Task.update(
                        status=status,
                        started_at=started_at,
                        worker=worker,
                        lease_expires=now + lease,
                        updated_at=now,
                        reason=None,
                        error_type=None,
                        error_message=None,
                        error_traceback=None,
                    )
                    .where(
                        *where, Task.status.in_((QUEUED, FAILED, STALLED)), ~peewee.fn.EXISTS(ended_by_worker)
                    )
                    .execute()
                )
                if n and revived is not None:
                    task = Task.select(Task.queue, Task.name).where(Task.id == item["id"]).get()
                    revived.append((task.queue, task.name))
                if n:  # the attempt goes on: the loss the reaper wrote did not happen
                    Attempt.delete().where(
                        Attempt.task_id == item["id"],
                        Attempt.attempt == item["attempt"],
                        Attempt.outcome.in_(("lost", "interrupted")),
                    ).execute()
            if n:
                adopted.append(item["id"])
        return adopted

    def release_worker(
        self,
        worker: str,
        now: float,
        reason: str,
        outcome: str = "lost",
        keep: set[tuple[int, int]] = frozenset(),
    ) -> list[dict]:
        """A worker is gone: its tasks, leased or running (but the (id, attempt) in `keep`), end their attempt as
        `lost` (or `interrupted` when it left on purpose: that does not spend an attempt).
        Returns their outcomes. A task lost `poison_after` times is stalled instead of retried."""
        rows = list(Task.select().where(Task.status.in_(HELD), Task.worker == worker).order_by(Task.id))
        return [
            info
            for r in rows
            if (r.id, r.attempt) not in keep and (info := self._lose(r, now, reason, outcome))
        ]

    def runs_any(self, worker: str) -> bool:
        """Whether this worker holds any task (leased or running); cheap (raw SQL), for every hello."""
        sql = "SELECT 1 FROM task WHERE status IN ('leased', 'running') AND worker = ? LIMIT 1"
        return self._exec(sql, (worker,)).fetchone() is not None

    def reap_expired(self, now: float) -> list[dict]:
        """Held tasks (leased or running) whose lease ran out (worker silent, or daemon restarted) end their
        attempt as lost, as release_worker does; returns their outcomes. A lease that
        ends after `now` is kept. Reads the database, not memory: after a restart it
        finds the leases of the daemon that died."""
        rows = list(Task.select().where(Task.status.in_(HELD), Task.lease_expires < now))
        return [info for r in rows if (info := self._lose(r, now, "lease expired", "lost"))]

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
            f" WHERE status IN ('leased', 'running') AND timeout IS NOT NULL AND {since} + timeout < ?"
        )
        params: list[Any] = [now - grace]
        if after is not None:
            sql += f" AND ({since} > ? OR ({since} = ? AND id > ?))"
            params += [after[0], after[0], after[1]]
        sql += f" ORDER BY {since}, id LIMIT ?"
        params.append(limit)
        columns = ("id", "attempt", "worker", "status", "started_at", "timeout")
        return [dict(zip(columns, r, strict=True)) for r in self._exec(sql, params).fetchall()]

    def time_out(self, task_id: int, attempt: int, now: float, message: str) -> dict | None:
        """End a held attempt as past its time limit without an answer from its worker:
        a failed attempt (error TaskTimeout, as a worker reports its own time limit), so it
        is retried with backoff until max_attempts, then dead. Fenced by attempt: None when
        it is no longer held. Returns what became of it, as release_worker does."""
        row = Task.get_or_none(Task.id == task_id, Task.attempt == attempt, Task.status.in_(HELD))
        if row is None:
            return None
        error = {"type": "TaskTimeout", "message": f"{message} (worker {row.worker})"}
        return self._end_attempt(row, "failed", now, error)

    def _lose(self, row: Task, now: float, reason: str, outcome: str) -> dict | None:
        error = {"type": "WorkerLost", "message": f"{reason} (worker {row.worker})"}
        return self._end_attempt(row, outcome, now, error)

    # ---- outcomes -----------------------------------------------------------

    def progress(
        self, task_id: int, attempt: int, worker: str, value: float | None, message: str | None, now: float
    ) -> bool:
        """The held attempt's progress and message (latest wins); False when fenced out.
        Progress of a leased attempt implies its start (its start report was lost): it is
        running from `now`."""
        n = (
            Task.update(
                progress=value,
                progress_message=message,
                updated_at=now,
                status=RUNNING,
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
        return n == 1

    def end_attempts(self, outcomes: list[Outcome], now: float) -> list[dict | None]:
        """What workers reported, in one go: for each outcome, what became of its task,
        or None when it is fenced out (an old attempt, another worker, not held, or
        already ended earlier in the list). The held rows are read with one query; a
        leased one ends as a running one would (its start report was lost, or never sent:
        its attempt row has no started_at).

        Each outcome's kind is succeeded, failed or released; see complete, fail and
        release. An attempt ends once: a repeat in the list, or a resend later, is None.
        Call it in a transaction (a savepoint): the rows it reads stay as read until it
        writes (locked FOR UPDATE on PostgreSQL and MySQL; SQLite's write lock). Should
        one change anyway, it raises StoreError, and the savepoint undoes the batch."""
        ids = sorted({o.task_id for o in outcomes})
        running: dict[int, RunningRow] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            sql = (
                f"SELECT {', '.join(RunningRow._fields)} FROM task"
                f" WHERE id IN ({', '.join('?' * len(chunk))}) AND {self.by_id_status} IN ('leased', 'running')"
            )
            if self.locks_rows:
                sql += " FOR UPDATE"
            running.update((r[0], RunningRow(*r)) for r in self._exec(sql, chunk).fetchall())
        ended: list[tuple[int, RunningRow, _Ending]] = []  # (index in outcomes, row, what becomes of it)
        late: list[tuple[int, Outcome]] = []
        for index, o in enumerate(outcomes):
            row = running.get(o.task_id)
            if row is None or row.attempt != o.attempt or row.worker != o.worker:
                if o.kind != "released" and (row is None or row.attempt == o.attempt):
                    late.append((index, o))
                continue
            del running[o.task_id]  # an attempt ends once
            ending = self._ending(row, o.kind, now, result=o.result, error=o.error, retry_in=o.retry_in,
                                  final=o.final)  # fmt: skip
            ended.append((index, row, ending))
        self._write_endings([(row, ending) for _index, row, ending in ended], now)
        infos: list[dict | None] = [None] * len(outcomes)
        for index, row, ending in ended:
            infos[index] = self._ended_info(row, ending, now)
        for index, o in late:
            if infos[index] is None:
                infos[index] = self._late_outcome(o, now)
        return infos

    def _late_outcome(self, o: Outcome, now: float) -> dict | None:
        """The outcome of an attempt the daemon had declared lost, not claimed again since:
        its worker was alive after all (the daemon, or the network, was slow). Fenced by
        the attempt number, its lost row and its worker.

        A success is the truth: the task succeeds with its result (a task that went dead
        and cancelled the tasks waiting on it stays dead). A failure changes nothing the
        loss did not already decide, but its attempt row and the task's last error say
        what really happened, and the worker cannot readopt it after that. Returns the
        task's info (with "late": the daemon freed the slot when it lost the attempt)."""
        lost = (
            Attempt.select(Attempt.id)
            .where(
                Attempt.task_id == o.task_id,
                Attempt.attempt == o.attempt,
                Attempt.outcome == "lost",
                Attempt.worker == o.worker,
            )
            .first()
        )
        found = self._exec(
            f"SELECT status, {', '.join(RunningRow._fields)} FROM task WHERE id = ? AND attempt = ?"
            " AND status IN ('queued', 'failed', 'stalled', 'dead')",
            (o.task_id, o.attempt),
        ).fetchone()
        if lost is None or found is None:
            return None
        status, row = found[0], RunningRow(*found[1:])._replace(worker=o.worker)
        if o.kind == "succeeded":
            if status == DEAD and row.has_dependents:
                return None
            ending = self._ending(row, "succeeded", now, result=o.result)
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
            ending = _Ending(changes, status, "failed", error, error, None)
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

    def _write_endings(self, ended: list[tuple[RunningRow, _Ending]], now: float) -> None:
        """The task updates of many endings, one executemany per shape of change, and their
        attempt rows in multi-row INSERTs. The rows were read in this transaction (locked
        on PostgreSQL and MySQL; SQLite's transaction holds the only write lock), so each
        update must match: if one does not, this raises and the caller's savepoint undoes
        them all (Daemon._on_outcomes then ends them one by one, each fenced on its own)."""
        if not ended:
            return
        shapes: dict[tuple[str, ...], list[list[Any]]] = {}
        for row, ending in ended:
            shapes.setdefault(tuple(ending.changes), []).append(
                [*ending.changes.values(), row.id, row.attempt]
            )
        cursor = self.db.cursor()
        for columns, params in shapes.items():
            sql = self._update_sql.get((columns, "many"))
            if sql is None:  # kept with the driver's placeholders: this runs every turn
                assignments = ", ".join(f"{self._name(column)} = ?" for column in columns)
                sql = f"UPDATE task SET {assignments} WHERE {_FENCE}".replace("?", self.db.param)
                self._update_sql[(columns, "many")] = sql
            cursor.executemany(sql, params)
            if cursor.rowcount != len(params):
                raise StoreError(
                    f"{len(params) - cursor.rowcount} of {len(params)} attempts changed meanwhile"
                )
        attempts = [self._attempt_row(row, ending.outcome, ending.logged, now) for row, ending in ended]
        if self.is_mysql:
            for attempt in attempts:
                self._insert("attempt", attempt)
        else:
            self._insert_rows("attempt", attempts)

    def _ended_info(self, row: RunningRow | Task, ending: _Ending, now: float) -> dict:
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

    @staticmethod
    def _attempt_row(row: RunningRow | Task, outcome: str, logged: dict | None, now: float) -> dict[str, Any]:
        """An ended attempt's history row, without the columns it leaves NULL (see _insert_rows)."""
        attempt = {
            "task_id": row.id,
            "attempt": row.attempt,
            "worker": row.worker,
            "started_at": row.started_at,
            "ended_at": now,
            "outcome": outcome,
        }
        if logged:
            attempt.update(
                error_type=logged.get("type"),
                error_message=logged.get("message"),
                error_traceback=logged.get("traceback"),
            )
        return attempt

    def complete(self, task_id: int, attempt: int, worker: str, result: Any, now: float) -> dict | None:
        """The attempt succeeded. None when fenced out (old attempt, other worker, not held).

        The task is succeeded with its result (JSON), finished_at = now, an attempt row;
        cancelled instead when it was asked to stop. Its key is freed unless kept for
        good; tasks waiting on it are released when their other parents succeeded too.
        Returns what became of it (status, outcome, dependents released/cancelled)."""
        return self.end_attempts([Outcome(task_id, attempt, worker, "succeeded", result=result)], now)[0]

    def fail(
        self,
        task_id: int,
        attempt: int,
        worker: str,
        error: dict[str, Any],
        now: float,
        retry_in: float | None = None,
        final: bool = False,
    ) -> dict | None:
        """The attempt failed: retry later, or dead when attempts are spent or `final`.

        A retry is the failed state with run_at = now + `retry_in` (a negative one:
        now), or the task's backoff, else the store's; promote_due queues it then.
        Dead tasks cancel the tasks waiting on them, down the chain. None when fenced out."""
        outcome = Outcome(task_id, attempt, worker, "failed", error=error, retry_in=retry_in, final=final)
        return self.end_attempts([outcome], now)[0]

    def release(
        self, task_id: int, attempt: int, worker: str, reason: str, now: float, delay: float | None = None
    ) -> dict | None:
        """The handler gave the task back (martinet.Release): to the queue, after `delay`.
        No attempt spent, its release count goes up; stalled after max_releases. None
        when fenced out."""
        error = {"type": "Release", "message": reason}
        return self.end_attempts(
            [Outcome(task_id, attempt, worker, "released", error=error, retry_in=delay)], now
        )[0]

    def _end_attempt(self, row: Task, outcome: str, now: float, error: dict) -> dict | None:
        """End one attempt that ended without its worker's word (lost, interrupted), fenced
        by its number: None when it is no longer held."""
        ending = self._ending(row, outcome, now, error=error)
        if self._update_task(ending.changes, _FENCE, (row.id, row.attempt)) != 1:
            return None
        self._insert("attempt", self._attempt_row(row, ending.outcome, ending.logged, now))
        return self._ended_info(row, ending, now)

    def _ending(
        self,
        row: Task | RunningRow,
        outcome: str,
        now: float,
        *,
        result: Any = None,
        error: dict | None = None,
        retry_in: float | None = None,
        final: bool = False,
    ) -> _Ending:
        """What becomes of a task whose attempt ended so (nothing written here)."""
        logged = error  # what the attempt row records
        changes: dict[str, Any] = {
            "worker": None,
            "lease_expires": None,
            "updated_at": now,
        }
        if outcome == "succeeded":
            changes["result"] = json.dumps(result)
        if row.cancel_requested:  # the handler was asked to stop; however it ended, it is cancelled
            outcome, status = "cancelled", CANCELLED
            changes["reason"] = "cancelled while running"
        elif outcome == "succeeded":
            status = SUCCEEDED
            changes["progress"] = 1.0
        elif outcome == "interrupted":  # its worker shut down: back to the queue, attempt not spent
            status = QUEUED
            changes.update(run_at=now, max_attempts=row.max_attempts + 1)
        elif outcome == "released":  # the handler gave it back: no attempt spent, counted
            changes.update(releases=row.releases + 1, max_attempts=row.max_attempts + 1)
            message = (error or {}).get("message") or "released"
            if row.releases + 1 > self.max_releases:
                status = STALLED
                changes["reason"] = (
                    f"stalled: released {row.releases + 1} times (more than max_releases={self.max_releases}); "
                    f"last: {message}"
                )
            else:
                status = SCHEDULED if retry_in else QUEUED
                changes.update(run_at=now + (retry_in or 0.0), reason=f"released: {message}")
            error = None  # a release is not an error: the task's last error stays; its attempt row says why
        elif outcome == "lost" and self._lost_before(row.id) + 1 >= self.poison_after:
            status = STALLED
            changes["reason"] = (
                f"stalled: its attempts were lost {self.poison_after} times (the worker died or "
                f"went silent running it); fix the cause, then `martinet retry {row.id}`"
            )
        elif final or row.attempt >= row.max_attempts:
            status = DEAD
        else:
            status = FAILED
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
        changes["status"] = status
        return _Ending(changes, status, outcome, logged, error, result)

    def _settle_dependents(self, parent: Task, status: str, now: float) -> dict[str, list[int]]:
        """A task ended: the tasks waiting on it are released (all their parents
        succeeded) or cancelled (this one will never succeed), down the chain."""
        settled: dict[str, list[int]] = {"released": [], "cancelled": []}
        if status not in TERMINAL or not parent.has_dependents:
            return settled
        ended = [(parent.id, status)]
        while ended:
            parent_id, parent_status = ended.pop()
            children = (
                Task.select(Task.id, Task.run_at, Task.key_mode, Task.has_dependents)
                .join(Dependency, on=(Dependency.task_id == Task.id))
                .where(Dependency.parent_id == parent_id, Task.status == WAITING)
            )
            for child in list(children):
                if parent_status != SUCCEEDED:
                    changes = {
                        "status": CANCELLED,
                        "reason": f"task {parent_id} it waited on ended {parent_status}",
                        "finished_at": now,
                        "updated_at": now,
                    }
                    if child.key_mode == "active":
                        changes["unique_key"] = None
                    Task.update(**changes).where(Task.id == child.id, Task.status == WAITING).execute()
                    settled["cancelled"].append(child.id)
                    if child.has_dependents:
                        ended.append((child.id, CANCELLED))
                    continue
                unfinished = (
                    Dependency.select()
                    .join(Task, on=(Task.id == Dependency.parent_id))
                    .where(Dependency.task_id == child.id, Task.status != SUCCEEDED)
                    .count()
                )
                if not unfinished:
                    ready = SCHEDULED if child.run_at > now else QUEUED
                    Task.update(status=ready, updated_at=now).where(
                        Task.id == child.id, Task.status == WAITING
                    ).execute()
                    settled["released"].append(child.id)
        return settled

    def unfinished_parents(self, task_id: int) -> list[int]:
        """The tasks this one waits on that have not succeeded, by id."""
        query = (
            Dependency.select(Dependency.parent_id)
            .join(Task, on=(Task.id == Dependency.parent_id))
            .where(Dependency.task_id == task_id, Task.status != SUCCEEDED)
            .order_by(Dependency.parent_id)
        )
        return [d.parent_id for d in query]

    def _lost_before(self, task_id: int) -> int:
        return Attempt.select().where(Attempt.task_id == task_id, Attempt.outcome == "lost").count()

    # ---- operator actions ---------------------------------------------------

    def revoke_task(self, task_id: int, now: float) -> tuple[str, list[int]]:
        """Cancel a waiting task, or ask a running one to stop.

        Returns the new status and the ids of tasks cancelled with it (those
        that waited on it, down the chain). A running task is only marked
        (cancel_requested; status "cancelling"): it ends cancelled however its
        attempt ends. A finished task keeps its status; a missing one: "missing".
        """
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing", []
        if row.status in REVOCABLE:
            changes = {
                "status": CANCELLED,
                "reason": "cancelled before it ran",
                "finished_at": now,
                "updated_at": now,
            }
            if row.key_mode == "active":
                changes["unique_key"] = None
            Task.update(**changes).where(Task.id == task_id, Task.status == row.status).execute()
            return CANCELLED, self._settle_dependents(row, CANCELLED, now)["cancelled"]
        if row.status in HELD:
            Task.update(cancel_requested=True, updated_at=now).where(Task.id == task_id).execute()
            return "cancelling", []
        return row.status, []

    def retry_task(self, task_id: int, now: float, attempts: int | None = None) -> str:
        """A dead, stalled, cancelled or failed task runs again now, with a fresh set of attempts.

        Attempt numbers keep counting up (results stay fenced); max_attempts
        moves to the current attempt plus the task's budget (or `attempts`).
        """
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing"
        if row.status not in (DEAD, STALLED, CANCELLED, FAILED):
            return row.status
        n = (
            Task.update(
                status=QUEUED,
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
        return QUEUED if n else self.get_task(task_id)["status"]

    def stall_task(self, task_id: int, now: float, reason: str) -> str:
        """Hold a waiting task (scheduled, queued or failed): it is never dispatched until
        retried. Returns "stalled", the status it has when it cannot be, or "missing"."""
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing"
        if row.status not in (SCHEDULED, QUEUED, FAILED):
            return row.status
        Task.update(status=STALLED, reason=reason, updated_at=now).where(
            Task.id == task_id, Task.status == row.status
        ).execute()
        return STALLED

    def update_task_args(self, task_id: int, args: dict, now: float) -> str:
        """New args for a task that has not started (or waits to run again): "updated",
        else its status (a running or finished task keeps its args), or "missing"."""
        row = Task.get_or_none(Task.id == task_id)
        if row is None:
            return "missing"
        if row.status not in REVOCABLE:
            return row.status
        Task.update(args=json.dumps(args), updated_at=now).where(Task.id == task_id).execute()
        return "updated"

    # ---- schedules ----------------------------------------------------------

    def add_schedule(self, spec: dict[str, Any], first_due: float, now: float) -> tuple[int, bool]:
        """Insert a schedule; returns (id, created).

        A known request_id returns the old id. A schedule declared with a
        `key` is created once; declaring it again updates it in place and
        keeps its next due time unless its spec or zone changed. Two daemons
        declaring the same key at once make one schedule (the unique index).
        """
        rid, key = spec.get("request_id"), spec.get("key")
        if rid:
            existing = Schedule.select(Schedule.id).where(Schedule.request_id == rid).first()
            if existing is not None:
                return existing.id, False
        fields = {
            **_work_fields(spec),
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
                if moved or current.status == "finished":
                    fields.update(next_due=first_due, status="active")
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

    def expand_schedules(self, now: float, default_max_attempts: int) -> list[int]:
        """Create the runs every due schedule owes; one run per (schedule, due time).

        The schedule row is advanced first, conditionally on the next due time
        it was read with: a second daemon sharing the database that read the
        same row updates nothing and creates nothing. The unique key on
        (schedule_id, due_at) backs this up. Which runs are owed (misfire
        policy, until, count) is decided by `recurring.plan`.
        """
        created: list[int] = []
        if not self._exec(
            "SELECT id FROM schedule WHERE status = 'active' AND next_due <= ? LIMIT 1", (now,)
        ).fetchone():
            return created  # the common case, answered without building a query
        due = Schedule.select().where(Schedule.status == "active", Schedule.next_due <= now)
        for sched in list(due):
            rec = when.recurrence_from_db(sched.kind, sched.spec, sched.timezone)
            owed = recurring.plan(rec, sched.next_due, now, _policy(sched))
            advanced = (
                Schedule.update(
                    next_due=owed.next_due,
                    last_due=owed.runs[-1] if owed.runs else sched.last_due,
                    remaining=owed.remaining,
                    status="active" if owed.next_due is not None else "finished",
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
                query = Task.insert(**self._task_row(spec, now)).on_conflict_ignore()
                if query.as_rowcount().execute() == 1:
                    created.append(Task.get(Task.schedule_id == sched.id, Task.due_at == due_at).id)
        return created

    def _task_row(self, spec: dict, now: float) -> dict[str, Any]:
        """A new task's row, without the columns it leaves NULL (see _insert_rows)."""
        run_at = spec.get("run_at") or now
        row = {
            **TASK_DEFAULTS,
            **_work_fields(spec),
            "status": SCHEDULED if run_at > now else QUEUED,
            "run_at": run_at,
            "max_attempts": spec["max_attempts"],
            "attempt_budget": spec["max_attempts"],
            "created_at": now,
            "updated_at": now,
        }
        for column in ("retry_base", "retry_factor", "retry_cap", "timeout", "schedule_id", "due_at"):
            if spec.get(column) is not None:
                row[column] = spec[column]
        for column in ("username", "description"):
            if row[column] is None:
                del row[column]
        return row

    def remove_schedule(self, schedule_id: int, now: float) -> bool:
        """No more runs, and its key is free; runs already created stay. False when it
        is missing or already removed."""
        n = (
            Schedule.update(status="removed", next_due=None, key=None, updated_at=now)  # its key is free
            .where(Schedule.id == schedule_id, Schedule.status != "removed")
            .execute()
        )
        return n == 1

    def pause_schedule(self, schedule_id: int, now: float) -> str | None:
        """Stop creating runs; returns the schedule's status after, None if it is missing."""
        Schedule.update(status="paused", updated_at=now).where(
            Schedule.id == schedule_id, Schedule.status == "active"
        ).execute()
        row = Schedule.get_or_none(Schedule.id == schedule_id)
        return None if row is None else row.status

    def resume_schedule(self, schedule_id: int, now: float) -> str | None:
        """Create runs again from the next due time after now: a pause does not owe the runs it skipped."""
        row = Schedule.get_or_none(Schedule.id == schedule_id)
        if row is None:
            return None
        if row.status != "paused":
            return row.status
        rec = when.recurrence_from_db(row.kind, row.spec, row.timezone)
        next_due = _next_after_now(rec, row.next_due, now)
        Schedule.update(status="active", next_due=next_due, updated_at=now).where(
            Schedule.id == schedule_id, Schedule.status == "paused"
        ).execute()
        return "active"

    def update_schedule(
        self,
        schedule_id: int,
        now: float,
        args: dict | None = None,
        recurrence: when.Recurrence | None = None,
        timezone: str | None = None,
    ) -> str | None:
        """New args (for future runs) and/or a new spec or zone (due times start afresh from now)."""
        row = Schedule.get_or_none(Schedule.id == schedule_id)
        if row is None:
            return None
        if row.status in ("removed", "finished"):
            return row.status
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
        return "updated"

    # ---- queues and limits ---------------------------------------------------

    def lanes_state(self, now: float, lookback: float) -> dict[str, Any]:
        """What the daemon needs to enforce limits after a start: settings, what runs,
        what started within `lookback` seconds, and which queues have ready work."""
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
                | ((Task.status == LEASED) & (Task.updated_at > now - lookback)),
                Task.status != QUEUED,
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
        return [q for (q,) in Task.select(Task.queue).where(Task.status == QUEUED).distinct().tuples()]

    def save_queue(self, name: str, now: float, **settings: Any) -> None:
        """Create or change a queue's settings (only the keys given)."""
        if QueueSetting.get_or_none(QueueSetting.name == name) is None:
            QueueSetting.create(name=name, updated_at=now, **settings)
        elif settings:
            QueueSetting.update(updated_at=now, **settings).where(QueueSetting.name == name).execute()

    def save_task_limit(
        self, name: str, concurrency: int | None, rate: tuple[int, float] | None, now: float
    ) -> None:
        """Set (create or replace) a task name's fleet-wide concurrency and rate."""
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
        stats: dict[str, dict[str, Any]] = {}
        counts = (
            Task.select(Task.queue, Task.status, peewee.fn.COUNT(Task.id))
            .group_by(Task.queue, Task.status)
            .tuples()
        )
        for queue, status, n in counts:
            stats.setdefault(queue, {"counts": {}, "oldest": None})["counts"][status] = n
        oldest = (
            Task.select(Task.queue, peewee.fn.MIN(Task.run_at))
            .where(Task.status == QUEUED)
            .group_by(Task.queue)
            .tuples()
        )
        for queue, first in oldest:
            stats[queue]["oldest"] = first
        return stats

    # ---- retention ------------------------------------------------------------

    def prune(
        self,
        cutoffs: dict[str, float],
        limit: int = PRUNE_BATCH,
        after: tuple[float, int] | None = None,
        dry_run: bool = False,
    ) -> Pruned:
        """Delete finished tasks older than a cutoff, with their attempt and dependency rows.

        `cutoffs` maps finished states (succeeded, cancelled, dead) to a time: a
        task in one of those states whose finished_at is before its state's time
        goes. Guarantees:

        - Bounded: one call reads at most `limit` rows of the (finished_at, id)
          index, oldest first, starting just after `after` (the `last` of the
          previous call), whatever the table holds; so it may find nothing to
          delete and still say `more`. Call again with `after=result.last` while
          `more`; start again from None for a fresh pass.
        - Never deleted: a task in any other state (waiting, scheduled, queued,
          running, failed and retrying, stalled); one that another unfinished task
          still waits on (that task will read its result); one whose key is kept
          for good (unique="always": deleting it would free the key).
        - With the task go its attempt rows and its dependency rows (both ways).
          A finished task retried after its parents were pruned no longer sees
          their results in task.parents.
        - dry_run counts what would go and deletes nothing.
        Runs in the caller's transaction.
        """
        if not cutoffs:
            return Pruned(0, 0, False, None)
        sql = "SELECT id, status, finished_at, has_dependents, key_mode FROM task WHERE finished_at < ?"
        params: list[Any] = [max(cutoffs.values())]
        if after is not None:
            sql += " AND finished_at >= ? AND (finished_at > ? OR id > ?)"
            params += [after[0], after[0], after[1]]
        rows = self._exec(sql + " ORDER BY finished_at, id LIMIT ?", [*params, limit]).fetchall()
        more = len(rows) == limit
        last = (rows[-1][2], rows[-1][0]) if rows else after
        doomed = [
            (task_id, has_dependents)
            for task_id, status, finished_at, has_dependents, key_mode in rows
            if status in cutoffs and finished_at < cutoffs[status] and key_mode != "always"
        ]
        parents = [task_id for task_id, has_dependents in doomed if has_dependents]
        kept = set()
        if parents:
            marks = ", ".join("?" * len(parents))
            finished = ", ".join(f"'{state}'" for state in TERMINAL)
            kept = {
                r[0]
                for r in self._exec(
                    f"SELECT DISTINCT d.parent_id FROM dependency d JOIN task c ON c.id = d.task_id "
                    f"WHERE d.parent_id IN ({marks}) AND c.status NOT IN ({finished})",
                    parents,
                    cache=False,
                )
            }
        ids = [task_id for task_id, _ in doomed if task_id not in kept]
        if not ids:
            return Pruned(0, 0, more, last)
        marks = ", ".join("?" * len(ids))
        if dry_run:
            attempts = self._exec(
                f"SELECT COUNT(*) FROM attempt WHERE task_id IN ({marks})", ids, cache=False
            )
            return Pruned(len(ids), attempts.fetchone()[0], more, last)
        attempts = self._exec(f"DELETE FROM attempt WHERE task_id IN ({marks})", ids, cache=False).rowcount
        self._exec(
            f"DELETE FROM dependency WHERE task_id IN ({marks}) OR parent_id IN ({marks})",
            ids * 2,
            cache=False,
        )
        deleted = self._exec(f"DELETE FROM task WHERE id IN ({marks})", ids, cache=False).rowcount
        return Pruned(deleted, attempts, more, last)

    # ---- events (see events.py) ------------------------------------------------

    def record_events(self, rows: list[dict[str, Any]]) -> list[int]:
        """Append events (task_id, name, kind, at, body) in multi-row INSERTs, in the
        caller's transaction; returns their ids, in order.

        MySQL's lastrowid is the first id of a multi-row INSERT, and InnoDB numbers a
        plain INSERT ... VALUES consecutively (it reserves them all at once)."""
        if not self.is_mysql:
            return self._insert_rows("event", rows)
        ids: list[int] = []
        per = max(1, self.max_params // len(EVENT_COLUMNS))
        head = f"INSERT INTO event ({', '.join(EVENT_COLUMNS)}) VALUES "
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            params = [row[column] for row in chunk for column in EVENT_COLUMNS]
            values = ", ".join(["(?, ?, ?, ?, ?)"] * len(chunk))
            first = self._exec(head + values, params, cache=False).lastrowid
            ids.extend(range(first, first + len(chunk)))
        return ids

    def events_after(self, after: int, limit: int) -> list[tuple[int, float, str]]:
        """Up to `limit` events with an id above `after`, oldest first: (id, at, body)."""
        sql = "SELECT id, at, body FROM event WHERE id > ? ORDER BY id LIMIT ?"
        return [tuple(r) for r in self._exec(sql, (after, limit)).fetchall()]

    def event_bounds(self) -> tuple[int | None, int | None]:
        """The oldest and newest event ids kept (None, None when there are none)."""
        first, last = self._exec("SELECT MIN(id), MAX(id) FROM event").fetchone()
        return first, last

    def prune_events(self, before: float, limit: int = PRUNE_BATCH) -> tuple[int, bool]:
        """Delete the oldest events recorded before `before`, at most `limit`; returns
        (deleted, more). Reads the first `limit` rows by id (the primary key: no other
        index to keep up on the hot path) and deletes the old ones among them, up to the
        first one that is not old (events are recorded in time order). The newest event
        stays whatever its age, so that no id is ever handed out again."""
        rows = self._exec("SELECT id, at FROM event ORDER BY id LIMIT ?", (limit,)).fetchall()
        newest = self._exec("SELECT MAX(id) FROM event").fetchone()[0]
        doomed = []
        for event_id, at in rows:
            if at >= before or event_id == newest:
                break
            doomed.append(event_id)
        if not doomed:
            return 0, False
        deleted = self._exec("DELETE FROM event WHERE id >= ? AND id <= ?", (doomed[0], doomed[-1])).rowcount
        return deleted, len(doomed) == limit

    # ---- reads --------------------------------------------------------------

    def database_id(self) -> str:
        """This database's identity (models.DatabaseIdentity), made with its schema."""
        row = self._exec(
            "SELECT database_id FROM database_identity ORDER BY created_at, database_id LIMIT 1"
        ).fetchone()
        if row is None:  # only if someone deleted it by hand
            raise StoreError(
                "the database has no identity (table database_identity is empty); "
                "restore its row, or start afresh on a new database"
            )
        return row[0]

    def find_key(self, key: str) -> tuple[str, int] | None:
        """The task holding `key` (else the newest with it), or the schedule with it."""
        task = Task.select(Task.id).where(Task.unique_key == key).first()
        task = task or Task.select(Task.id).where(Task.key == key).order_by(Task.id.desc()).first()
        if task is not None:
            return "task", task.id
        sched = Schedule.select(Schedule.id).where(Schedule.key == key).first()
        return None if sched is None else ("schedule", sched.id)

    def get_task(self, task_id: int) -> dict | None:
        """One task's record. Hand-written: `wait` answers read it as tasks end, in the loop."""
        columns = ", ".join(map(self._name, INFO_COLUMNS))
        found = self._exec(f"SELECT {columns} FROM task WHERE id = ?", (task_id,)).fetchone()
        return (
            None
            if found is None
            else task_info(SimpleNamespace(**dict(zip(INFO_COLUMNS, found, strict=True))))
        )

    def attempts(self, task_id: int) -> list[dict]:
        """The task's finished attempts, oldest first: worker, times, duration, outcome, error."""
        rows = Attempt.select().where(Attempt.task_id == task_id).order_by(Attempt.attempt)
        return [
            {
                "attempt": a.attempt,
                "worker": a.worker,
                "started_at": iso(a.started_at),
                "ended_at": iso(a.ended_at),
                "duration": None if a.started_at is None else round(a.ended_at - a.started_at, 6),
                "outcome": a.outcome,
                "error": _error(a.error_type, a.error_message, a.error_traceback),
            }
            for a in rows
        ]

    # ---- search ---------------------------------------------------------------

    def search_tasks(self, q: Search, limit: int) -> tuple[list[dict], tuple[float, int] | None]:
        """One page of the tasks that match `q`, newest first by its sort column, then id.

        Returns the page and the (sort value, id) of its last row when more rows
        follow (None on the last page). Keyset paging: the next page starts
        strictly after that row, so tasks created meanwhile never shift it.
        Sorting by the finished time lists finished tasks only.
        """
        column = TIME_COLUMNS[q.sort]
        conditions, params = self._search_conditions(q)
        if q.sort == "finished":
            conditions.append("finished_at IS NOT NULL")
        if q.after is not None:
            value, last_id = q.after
            conditions.append(f"{column} <= ? AND ({column} < ? OR id < ?)")
            params += [value, value, last_id]
        table = "task"
        if q.where and self.is_mysql:
            # MySQL would walk the sort's index and fetch every row to read its args (5 s for a
            # million on MariaDB); reading the table in order and sorting the few matches is faster.
            table += " IGNORE INDEX FOR ORDER BY (task_created, task_finished)"
        sql = f"SELECT * FROM {table}{_where(conditions)} ORDER BY {column} DESC, id DESC LIMIT ?"
        rows = list(Task.raw(self._adapt(sql), *params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        last = (getattr(rows[-1], column), rows[-1].id) if more else None
        return [task_info(r) for r in rows], last

    def count_tasks(self, q: Search) -> dict[str, int]:
        """How many tasks match `q` (its sort and cursor aside), by status."""
        conditions, params = self._search_conditions(q)
        sql = f"SELECT status, COUNT(*) FROM task{_where(conditions)} GROUP BY status"
        return {status: n for status, n in self.db.execute_sql(self._adapt(sql), params).fetchall()}

    def _adapt(self, sql: str) -> str:
        """`?` placeholders to the driver's (not cached: searches vary without end)."""
        return sql.replace("?", self.db.param)

    def _search_conditions(self, q: Search) -> tuple[list[str], list[Any]]:
        conditions: list[str] = []
        params: list[Any] = []

        def add(condition: str, *values: Any) -> None:
            conditions.append(condition)
            params.extend(values)

        if q.statuses:
            add(f"status IN ({', '.join('?' * len(q.statuses))})", *q.statuses)
        for column, value in (
            ("name", q.name),
            ("queue", q.queue),
            ("username", q.username),
            (self._name("key"), q.key),
            ("schedule_id", q.schedule_id),
            ("error_type", q.error),
        ):
            if value is not None:
                add(f"{column} = ?", value)
        if q.name_prefix is not None:
            if isinstance(self.db, peewee.SqliteDatabase):  # GLOB: case-sensitive, as names are
                add("name GLOB ?", re.sub(r"([*?\[])", r"[\1]", q.name_prefix) + "*")
            else:
                add("name LIKE ? ESCAPE '!'", _like_escape(q.name_prefix) + "%")
        if q.text is not None:
            postgres = isinstance(self.db, peewee.PostgresqlDatabase)
            like = "ILIKE" if postgres else "LIKE"  # ignoring case on every backend
            add(f"description {like} ? ESCAPE '!'", f"%{_like_escape(q.text)}%")
        column = TIME_COLUMNS[q.time]
        if q.since is not None:
            add(f"{column} >= ?", q.since)
        if q.until is not None:
            add(f"{column} < ?", q.until)
        for path, value in q.where:
            condition, values = self._arg_equals(path, value)
            add(condition, *values)
        return conditions, params

    def _arg_equals(self, path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
        """A payload field equals a JSON scalar, types compared too (7 is not "7", 1 is not true).

        The path is written as a literal (query.py lets keys hold only letters,
        digits, _ and -), so an expression index on the same path can serve it.
        """
        if isinstance(self.db, peewee.PostgresqlDatabase):
            return _arg_equals_postgres(path, value)
        if self.is_mysql:
            return _arg_equals_mysql(path, value)
        return _arg_equals_sqlite(path, value)

    def get_schedule(self, schedule_id: int, upcoming: int = 0) -> dict | None:
        """A schedule's record; with `upcoming`, its next due times (none after until, at most count)."""
        row = Schedule.get_or_none(Schedule.id == schedule_id)
        if row is None:
            return None
        info = schedule_info(row)
        if upcoming:
            info["upcoming"] = []
        if upcoming and row.next_due is not None:
            rec = when.recurrence_from_db(row.kind, row.spec, row.timezone)
            first = when.from_timestamp(row.next_due)
            times = [first, *rec.next_n(first, upcoming - 1)]
            if row.until is not None:
                times = [t for t in times if t.timestamp() <= row.until]
            if row.remaining is not None:
                times = times[: row.remaining]
            info["upcoming"] = [iso(t.timestamp()) for t in times]
        return info

    def list_schedules(self, include_removed: bool = False) -> list[dict]:
        """Every schedule's record, by id; removed ones only when asked."""
        query = Schedule.select().order_by(Schedule.id)
        if not include_removed:
            query = query.where(Schedule.status != "removed")
        return [schedule_info(r) for r in query]


class Outcome(NamedTuple):
    """An attempt's end as its worker reported it."""

    task_id: int
    attempt: int
    worker: str
    kind: str  # succeeded, failed or released
    result: Any = None
    error: dict | None = None
    retry_in: float | None = None  # failed: the handler's own delay; released: when to run again
    final: bool = False  # failed for good (martinet.Fail): no retry


class _Savepoint:
    """A savepoint named by its depth, so that each level runs the same statements every
    turn, prepared once; peewee names each savepoint afresh (a uuid: a new statement to
    prepare, about 5 µs more for each request and batch of outcomes)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self) -> _Savepoint:
        self.store.savepoints += 1
        self.name = f"martinet_{self.store.savepoints}"
        try:
            self.store._exec(f"SAVEPOINT {self.name}")
        except BaseException:
            self.store.savepoints -= 1
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.store._exec(f"ROLLBACK TO SAVEPOINT {self.name}")
            self.store._exec(f"RELEASE SAVEPOINT {self.name}")
        except peewee.PeeweeException:
            if not isinstance(exc, peewee.PeeweeException):
                raise
            # The database failed and took the savepoint with it (after SQLITE_FULL, SQLite
            # rolls the whole transaction back): its error, not "no such savepoint", goes up.
        finally:
            self.store.savepoints -= 1


class _Transaction:
    """The outermost atomic(): peewee's transaction, except that a rollback that fails
    never hides the error that called for it. After SQLITE_FULL (and some I/O errors)
    SQLite has already rolled the transaction back, and peewee's own rollback would raise
    "cannot rollback - no transaction is active" in place of "database or disk is full"."""

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self.txn = db.transaction()  # BEGIN IMMEDIATE on SQLite (open_database's lock_type)

    def __enter__(self) -> _Transaction:
        self.txn.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.db.pop_transaction()
        if exc_type is None:
            try:
                self.txn.commit(begin=False)
            except peewee.PeeweeException as failed:
                self._rollback(failed)
                raise
            return
        self._rollback(exc)

    def _rollback(self, cause: BaseException) -> None:
        try:
            self.txn.rollback(begin=False)
        except peewee.PeeweeException as failed:
            if not isinstance(cause, peewee.PeeweeException):
                raise  # the database is in trouble too: that is what the caller must handle
            log.debug("rolling back after %s failed too: %s", cause, failed)


class _Ending(NamedTuple):
    """What becomes of a task whose attempt ended: the task's changes and the attempt's record."""

    changes: dict[str, Any]  # the task row's new values, status included
    status: str
    outcome: str  # as the attempt row records it (a cancelled task's attempt says cancelled)
    logged: dict | None  # the attempt row's error
    error: dict | None  # the task's new last error (none for a release)
    result: Any


# An attempt's end changes its own row only (leased or running: see models.HELD).
_FENCE = "id = ? AND attempt = ? AND status IN ('leased', 'running')"


class Pruned(NamedTuple):
    """What one call of Store.prune removed (or, dry, would remove)."""

    tasks: int
    attempts: int  # attempt rows
    more: bool  # the scan was full: call again from `last`
    last: tuple[float, int] | None  # (finished_at, id) of the last row read: where the next call starts


class RunningRow(NamedTuple):
    """What ending an attempt needs to know of a held task (leased or running)."""

    id: int
    name: str
    queue: str
    attempt: int
    max_attempts: int
    worker: str | None
    started_at: float | None
    cancel_requested: bool
    key_mode: str | None
    releases: int
    has_dependents: bool
    retry_base: float | None
    retry_factor: float | None
    retry_cap: float | None


def _work_fields(spec: dict) -> dict[str, Any]:
    """What to run, as tasks and schedules both store it."""
    return {
        "name": spec["name"],
        "username": spec.get("username"),
        "description": spec.get("description"),
        "args": json.dumps(spec.get("args") or {}),
        "queue": spec.get("queue") or "default",
        "priority": spec.get("priority") or 0,
    }


def _policy(sched: Schedule) -> recurring.Policy:
    return recurring.Policy(sched.misfire, sched.misfire_grace, sched.until, sched.remaining)


def _next_after_now(rec: when.Recurrence, due: float | None, now: float) -> float:
    """The first due time after now, on the schedule's own grid when it has one."""
    if isinstance(rec, when.Interval) and due is not None:
        if due > now:
            return due
        return due + (math.floor((now - due) / rec.seconds) + 1) * rec.seconds
    return rec.next_after(when.from_timestamp(now)).timestamp()


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _like_escape(text: str) -> str:
    """Text matched literally by LIKE ... ESCAPE '!'."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _json_path(path: tuple[str, ...]) -> str:
    """A literal JSON path, as SQLite and MySQL write it: '$.user.email'."""
    return "'$" + "".join(f".{key}" if key.isidentifier() else f'."{key}"' for key in path) + "'"


def _arg_equals_sqlite(path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
    """On SQLite, `instr` first: the daemon writes args with json.dumps, so a row that
    matches holds the value's own JSON text, and looking for that text is many times
    cheaper than parsing the row's JSON (which only the rows that hold it then pay)."""
    field, kind = f"json_extract(args, {_json_path(path)})", f"json_type(args, {_json_path(path)})"
    if value is None or isinstance(value, bool):
        return f"instr(args, ?) > 0 AND {kind} = ?", [json.dumps(value)] * 2  # 'null', 'true', 'false'
    if isinstance(value, str):
        return f"instr(args, ?) > 0 AND {field} = ? AND {kind} = 'text'", [json.dumps(value), value]
    condition = f"{field} = ? AND {kind} IN ('integer', 'real')"
    if abs(value) >= 1e15:  # json.dumps may write these with an exponent (1e+16): no text to look for
        return condition, [value]
    # 7 matches 7 and 7.0: both hold "7"; 7.5 is written 7.5.
    text = str(int(value)) if float(value).is_integer() else repr(float(value))
    return f"instr(args, ?) > 0 AND {condition}", [text, value]


def _arg_equals_postgres(path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
    field = "CAST(args AS jsonb)" + "".join(f" -> '{key}'" for key in path)
    return f"({field}) = CAST(? AS jsonb)", [json.dumps(value)]  # jsonb equality compares types


def _arg_equals_mysql(path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
    field = f"JSON_EXTRACT(args, {_json_path(path)})"
    kind = f"JSON_TYPE({field})"
    if value is None:
        return f"{kind} = 'NULL'", []
    if isinstance(value, bool):
        return f"{kind} = 'BOOLEAN' AND JSON_UNQUOTE({field}) = ?", [json.dumps(value)]
    if isinstance(value, str):  # compared as bytes, not by the collation: "Ana" is not "ana"
        return f"CAST(JSON_UNQUOTE({field}) AS BINARY) = CAST(? AS BINARY) AND {kind} = 'STRING'", [value]
    return f"{field} = ? AND {kind} IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')", [value]


def _error(kind: str | None, message: str | None, trace: str | None) -> dict | None:
    if kind is None and message is None:
        return None
    return {"type": kind, "message": message, "traceback": trace}


INFO_COLUMNS = (
    "id", "name", "username", "description", "args", "queue", "priority", "status", "run_at", "attempt",
    "max_attempts", "timeout", "reason", "releases", "key", "key_mode", "progress", "progress_message",
    "result", "error_type", "error_message", "error_traceback", "worker", "cancel_requested", "created_at",
    "started_at", "finished_at", "updated_at", "schedule_id", "due_at",
)  # fmt: skip  # what task_info reads


def task_info(row: Task | SimpleNamespace) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": "task",
        "name": row.name,
        "username": row.username,
        "description": row.description,
        "args": json.loads(row.args),
        "queue": row.queue,
        "priority": row.priority,
        "status": row.status,
        "run_at": iso(row.run_at),
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "timeout": row.timeout,
        "reason": row.reason,
        "releases": row.releases,
        "key": row.key,
        "unique": row.key_mode,
        "progress": row.progress,
        "progress_message": row.progress_message,
        "result": None if row.result is None else json.loads(row.result),
        "error": _error(row.error_type, row.error_message, row.error_traceback),
        "worker": row.worker,
        "cancel_requested": bool(row.cancel_requested),
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "updated_at": iso(row.updated_at),
        "schedule": None if row.schedule_id is None else schedule_ref(row.schedule_id),
        "due_at": iso(row.due_at),
    }


def schedule_info(row: Schedule) -> dict[str, Any]:
    return {
        "id": schedule_ref(row.id),
        "kind": "schedule",
        "key": row.key,
        "name": row.name,
        "username": row.username,
        "description": row.description,
        "args": json.loads(row.args),
        "queue": row.queue,
        "priority": row.priority,
        "every": row.spec if row.kind == "cron" else when.format_interval(float(row.spec)),
        "recurrence": row.kind,
        "timezone": row.timezone,
        "until": iso(row.until),
        "remaining": row.remaining,
        "misfire": row.misfire,
        "misfire_grace": row.misfire_grace,
        "status": row.status,
        "next_due": iso(row.next_due),
        "last_due": iso(row.last_due),
        "created_at": iso(row.created_at),
    }
