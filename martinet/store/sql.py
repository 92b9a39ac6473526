"""The store's SQL kit: its connection, its models, hand-written statements adapted to
the driver and kept once written, multi-row inserts that say their ids, and
transactions and savepoints that never hide the error that undid them.

The hot path (submit, claim, outcomes) runs hand-written SQL: peewee takes about
100 µs to build a query on this kind of machine; the statement itself runs in
about 10. Placeholders are written `?` and adapted to the driver.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from operator import itemgetter
from typing import Any, Protocol

import peewee

from martinet import models
from martinet.errors import StoreError
from martinet.retry import RetryPolicy
from martinet.states import HELD, sql_list
from martinet.store.pg import HELD_CHANGED, PgDatabase, TakeAgain
from martinet.store.rows import FENCE, RunningRow

log = logging.getLogger("martinet.store")

HELD_KEPT_MAX = 100_000  # tasks kept in SqlKit.held at most; an outcome of one not kept reads its row


class Cursor(Protocol):
    """What the store uses of a DB-API cursor (peewee's stubs leave its cursors untyped)."""

    rowcount: int
    lastrowid: int  # the store reads it only after its own INSERTs, where it is set

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


class SqlKit:
    """What every part of the store stands on: one database, and the models bound to it
    (self.Task, ...: models.bind; never the shared, unbound classes), so that two stores
    in one process never write to each other's database."""

    def __init__(
        self,
        db: peewee.Database,
        retry: RetryPolicy | None = None,
        poison_after: int = 3,
        max_releases: int = 10,
        daemon_id: str | None = None,
    ) -> None:
        self.db = db
        self.daemon_id = daemon_id  # the daemon this store writes for: its claims name it (task.daemon)
        tables = models.bind(db)
        self.Task = tables.Task
        self.Attempt = tables.Attempt
        self.Event = tables.Event
        self.Schedule = tables.Schedule
        self.Dependency = tables.Dependency
        self.QueueSetting = tables.QueueSetting
        self.TaskLimit = tables.TaskLimit
        self.DaemonRow = tables.DaemonRow
        self.retry = retry or RetryPolicy()
        self.poison_after = poison_after  # lost attempts after which a task is stalled
        self.max_releases = max_releases  # releases after which a task is stalled
        sqlite = isinstance(db, peewee.SqliteDatabase)
        self.locks_rows = not sqlite
        self.is_mysql = isinstance(db, peewee.MySQLDatabase)
        self.is_postgres = isinstance(db, peewee.PostgresqlDatabase)
        self.returns_ids = self.is_postgres  # INSERT ... RETURNING id
        # INSERT ... ON CONFLICT (column) DO NOTHING: PostgreSQL, and SQLite since 3.24.
        self.upserts = self.is_postgres or (sqlite and sqlite3.sqlite_version_info >= (3, 24))
        # A task found by its id, its status checked: SQLite without statistics, and
        # PostgreSQL's generic plan of a prepared statement (pg.py), may serve `id = ANY(?)
        # AND status IN (...)` from task_status_created, which it believes holds a few
        # leased rows and which holds an entry for every claim since the last vacuum
        # (1.2-1.7 ms a statement in a drain of 20,000, against 0.1). An expression
        # keeps the status off every index: the primary key finds the rows.
        self.by_id_status = "+status" if sqlite else "(status || '')" if self.is_postgres else "status"
        # And without statistics it may prefer an equality on status_created to a range on a
        # partial index (models.PARTIAL_INDEXES): the hot queries name theirs.
        self.ready_rows = "task INDEXED BY task_ready" if sqlite else "task"
        self.due_rows = "task INDEXED BY task_due" if sqlite else "task"
        self.savepoints = 0  # open _Savepoints: the next one's name
        self.sqlite = sqlite
        self._skipping = False  # (skipping_savepoints)
        self._at_once = False  # (writes_at_once)
        self._task_ids: list[int] = []  # PostgreSQL: ids taken ahead for new tasks (Tasks._task_id)
        # PostgreSQL: the tasks this store leased, as a read would find them while held,
        # kept up to date by its own changes; an end's turn writes without reading them
        # first, fenced by what may change while a task is held (Outcomes.end_attempts).
        self.held: dict[int, RunningRow] = {}
        self._sql_cache: dict[str, str] = {}
        self._insert_sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._update_sql: dict[tuple[tuple[str, ...], str], str] = {}
        # Bound parameters per statement: SQLite before 3.32 allows 999.
        self.max_params = 999 if sqlite and sqlite3.sqlite_version_info < (3, 32) else 32_000

    def _ready(self, sql: str, cache: bool = True) -> str:
        """`sql` with the driver's placeholders (kept, unless `cache` is false)."""
        ready = self._sql_cache.get(sql)
        if ready is None:
            ready = sql.replace("?", self.db.param)
            if cache:
                self._sql_cache[sql] = ready
        return ready

    def _exec(self, sql: str, params: Iterable[Any] = (), cache: bool = True) -> Cursor:
        ready = self._ready(sql, cache)
        if cache and isinstance(self.db, PgDatabase):  # run again and again: planned once
            prepared: Cursor = self.db.execute_prepared(ready, tuple(params))
            return prepared
        cursor: Cursor = self.db.execute_sql(ready, tuple(params))
        return cursor

    def _write_later(self, sql: str, params: Iterable[Any] = ()) -> None:
        """A write whose result no one reads: on PostgreSQL sent with the next statement
        (pg.PgDatabase.defer_prepared), elsewhere at once."""
        if isinstance(self.db, PgDatabase):
            self.db.defer_prepared(self._ready(sql), tuple(params))
            return
        self._exec(sql, params)

    def _adapt(self, sql: str) -> str:
        """`?` placeholders to the driver's (not cached: for statements that vary without end)."""
        return sql.replace("?", self.db.param)

    def _name(self, column: str) -> str:
        """A quoted column name (`key` is reserved on MySQL)."""
        return f"{self.db.quote[0]}{column}{self.db.quote[1]}"

    def _insert_text(self, table: str, row: dict[str, Any]) -> str:
        """`INSERT INTO table (row's columns) VALUES (?, ...)`, kept by table and columns."""
        sql = self._insert_sql.get((table, tuple(row)))
        if sql is None:
            columns = ", ".join(map(self._name, row))
            sql = self._insert_sql[(table, tuple(row))] = (
                f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})"
            )
        return sql

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        sql = self._insert_text(table, row)
        if self.returns_ids:
            new_id: int = self._exec(sql + " RETURNING id", row.values()).fetchone()[0]
            return new_id
        return self._exec(sql, row.values()).lastrowid

    def _insert_rows(self, table: str, rows: list[dict[str, Any]], ids: bool = True) -> list[int]:
        """Rows in multi-row INSERTs, each run of rows with the same columns in one (a column
        a row leaves out is NULL: fewer values to bind, the larger part of a row's cost);
        on PostgreSQL an INSERT ... SELECT FROM unnest(arrays), a column an array, one text
        whatever the count (prepared); returns their ids in order. Not on MySQL. Without
        `ids`, on PostgreSQL, sent with the next statement (_write_later), and [] returned.

        SQLite numbers the rows of one INSERT one after another (the transaction holds
        the only write lock), so the ids end at lastrowid; PostgreSQL draws each row's
        id from the table's sequence as it reads the rows, in order, so the ids it
        returns, sorted, are the rows' (whatever order RETURNING gives them in)."""
        made: list[int] = []
        start = 0
        while start < len(rows):
            columns = rows[start].keys()
            end = start + 1
            while end < len(rows) and rows[end].keys() == columns:
                end += 1
            made += self._insert_run(table, rows[start:end], ids)
            start = end
        return made

    def _insert_run(self, table: str, rows: list[dict[str, Any]], ids: bool = True) -> list[int]:
        columns = tuple(rows[0])
        values = itemgetter(*columns)  # (a tuple of them: a row has more than one column)
        return self._insert_values(table, columns, [values(row) for row in rows], ids)

    def _insert_values(
        self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]], ids: bool = True
    ) -> list[int]:
        """Rows as tuples of `columns`' values, as _insert_rows writes a run of them. On
        MySQL too: its lastrowid is the first id of a multi-row INSERT, and InnoDB numbers
        a plain INSERT ... VALUES consecutively (it reserves them all at once)."""
        if self.is_postgres:  # one text whatever the count: prepared (pg.py)
            sql = self._insert_sql.get((table, ("unnest", *columns)))
            if sql is None:
                sql = self._insert_sql[(table, ("unnest", *columns))] = (
                    f"INSERT INTO {table} ({', '.join(map(self._name, columns))})"
                    f" SELECT * FROM unnest({self._arrays(table, columns)})"
                )
            arrays = [self._array(values) for values in zip(*rows, strict=True)]
            if not ids:
                self._write_later(sql, arrays)
                return []
            return sorted(r[0] for r in self._exec(sql + " RETURNING id", arrays))
        per = max(1, self.max_params // len(columns))
        one = f"({', '.join('?' * len(columns))})"
        head = f"INSERT INTO {table} ({', '.join(map(self._name, columns))}) VALUES "
        out: list[int] = []
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            params = [value for row in chunk for value in row]
            last = self._exec(head + ", ".join([one] * len(chunk)), params, cache=False).lastrowid
            first = last if self.is_mysql else last - len(chunk) + 1
            out.extend(range(first, first + len(chunk)))
        return out

    def _update_task(self, changes: dict[str, Any], where: str, params: Iterable[Any]) -> int:
        sql = self._update_sql.get((tuple(changes), where))
        if sql is None:
            assignments = ", ".join(f"{self._name(column)} = ?" for column in changes)
            sql = self._update_sql[(tuple(changes), where)] = f"UPDATE task SET {assignments} WHERE {where}"
        return self._exec(sql, [*changes.values(), *params]).rowcount

    def _keep(self, row: dict[str, Any]) -> None:
        """A task this store leased, as its outcome will find it (held): the RunningRow
        columns of `row`, those it lacks None (started_at, until a start says otherwise)."""
        self._keep_running(RunningRow._make(map(row.get, RunningRow._fields)))

    def _keep_running(self, row: RunningRow) -> None:
        """_keep's, for a row made already."""
        if len(self.held) >= HELD_KEPT_MAX:  # tasks others ended (another daemon, an operator) stay in it
            self.held.clear()
        self.held[row.id] = row

    def _keep_start(self, task_id: int, attempt: int, worker: str, now: float) -> None:
        """A kept task's handler started `now` (start, progress): as the UPDATE writes it."""
        kept = self.held.get(task_id)
        if kept is not None and (kept.attempt, kept.worker, kept.started_at) == (attempt, worker, None):
            self.held[task_id] = kept._replace(started_at=now)

    def _update_held(
        self, columns: tuple[str, ...], rows: list[list[Any]], counted: bool = True, as_kept: bool = False
    ) -> int | None:
        """Held tasks' new values: each row is the values of `columns`, then the task's
        id and attempt (rows.FENCE); returns how many tasks changed. On PostgreSQL one
        UPDATE ... FROM unnest(arrays), a column an array: one text whatever the count,
        prepared, and not `counted`, sent with the next statement (_write_later; None);
        elsewhere an executemany (SQLite runs it in process; MySQL, a statement a row).
        `as_kept` (PostgreSQL, not counted): each row goes on with the task's worker,
        started_at, cancel_requested and has_dependents as this store kept them (held),
        and the UPDATE fails the transaction unless every task still has them all."""
        if as_kept:
            self._update_as_kept(columns, rows)
            return None
        if not self.is_postgres:
            sql = self._update_sql.get((columns, "many"))
            if sql is None:  # kept with the driver's placeholders: this runs every turn
                assignments = ", ".join(f"{self._name(column)} = ?" for column in columns)
                sql = self._update_sql[(columns, "many")] = self._adapt(
                    f"UPDATE task SET {assignments} WHERE {FENCE}"
                )
            cursor: Cursor = self.db.cursor()
            cursor.executemany(sql, rows)
            return cursor.rowcount
        sql = self._update_sql.get((columns, "unnest"))
        if sql is None:  # one text whatever the count: prepared (pg.py)
            names = ", ".join(self._name(c) for c in columns)
            assignments = ", ".join(f"{self._name(c)} = v.{self._name(c)}" for c in columns)
            sql = self._update_sql[(columns, "unnest")] = (
                f"UPDATE task SET {assignments} FROM unnest({self._arrays('task', columns)}, ?::bigint[], ?::bigint[])"
                f" AS v({names}, fenced_id, fenced_attempt) WHERE task.id = v.fenced_id"
                f" AND task.attempt = v.fenced_attempt AND (task.status || '') IN ({sql_list(HELD)})"  # by_id_status
            )
        arrays = [self._array(values) for values in zip(*rows, strict=True)]
        if not counted:
            self._write_later(sql, arrays)
            return None
        changed: int = self._exec(sql, arrays).rowcount
        return changed

    def _update_as_kept(self, columns: tuple[str, ...], rows: list[list[Any]]) -> None:
        """_update_held's `as_kept`: the rows were not read, so what may change while a task
        is held is fenced too, and a count short of the rows fails the statement
        (HELD_CHANGED), and so the transaction, which the daemon takes again reading them."""
        sql = self._update_sql.get((columns, "kept"))
        if sql is None:
            names = ", ".join(self._name(c) for c in columns)
            assignments = ", ".join(f"{self._name(c)} = v.{self._name(c)}" for c in columns)
            kept = ("worker", "started_at", "cancel_requested", "has_dependents")
            fenced = " AND ".join(f"task.{c} IS NOT DISTINCT FROM v.kept_{c}" for c in kept)
            sql = self._update_sql[(columns, "kept")] = (
                f"WITH changed AS (UPDATE task SET {assignments}"
                f" FROM unnest({self._arrays('task', columns)}, ?::bigint[], ?::bigint[], {self._arrays('task', kept)})"
                f" AS v({names}, fenced_id, fenced_attempt, {', '.join('kept_' + c for c in kept)})"
                f" WHERE task.id = v.fenced_id AND task.attempt = v.fenced_attempt"
                f" AND (task.status || '') IN ({sql_list(HELD)}) AND {fenced} RETURNING 1)"
                f" SELECT CAST(CASE WHEN count(*) = ? THEN '0' ELSE '{HELD_CHANGED}' END AS integer) FROM changed"
            )
        arrays = [self._array(values) for values in zip(*rows, strict=True)]
        self._write_later(sql, [*arrays, len(rows)])

    def _array(self, values: Sequence[Any]) -> Any:
        """PostgreSQL: `values` as a `?::type[]` parameter, as cheap to send as the driver
        allows (pg.Array)."""
        return self.db.array(values) if isinstance(self.db, PgDatabase) else list(values)

    def _arrays(self, table: str, columns: Iterable[str]) -> str:
        """PostgreSQL: a `?::type[]` parameter for each of `table`'s `columns` (for unnest)."""
        return ", ".join(self._array_params(table, columns))

    def _array_params(self, table: str, columns: Iterable[str]) -> list[str]:
        model = {"task": self.Task, "attempt": self.Attempt, "event": self.Event}[table]
        fields = model._meta.columns
        types = self.db.get_context_options()["field_types"]
        return [f"?::{types[fields[c].field_type]}[]" for c in columns]

    def _latest(self, query: peewee.Select) -> peewee.Select:
        """The query as a read of the latest committed rows: on MySQL, whose REPEATABLE READ
        would show the turn's own snapshot, a locking read (the row another daemon just
        committed, which made our insert a duplicate, is there to be found)."""
        # peewee takes a lock clause as well as a bool; its stubs say bool only.
        return query.for_update("LOCK IN SHARE MODE") if self.is_mysql else query  # type: ignore[arg-type]

    def atomic(self) -> Any:
        """A transaction (a savepoint inside one): everything in it commits together or
        not at all. On SQLite it begins IMMEDIATE, taking the write lock at once."""
        if self.db.transaction_depth() == 0:
            return _Transaction(self.db)
        return _Savepoint(self)

    def writes_at_once(self) -> AbstractContextManager[None]:
        """Within, each write's error is its own, so that a failure costs only the
        request or batch it belongs to: on PostgreSQL every write is sent as it is made,
        none with a later statement (pg.DeferredWriteFailed); on SQLite every savepoint is
        made (skipping_savepoints). Where a TakeAgain is taken again."""
        if isinstance(self.db, PgDatabase):
            return self.db.writes_at_once()
        return self._flag("_at_once") if self.sqlite else nullcontext()

    def skipping_savepoints(self) -> AbstractContextManager[None]:
        """Within, on SQLite (unless within writes_at_once): atomic() inside a transaction
        makes no savepoint, for SQLite undoes a failed statement by itself: a block that
        fails before it has changed a row leaves nothing to undo. One that fails after it
        changed rows raises SavepointSkipped, a TakeAgain, in place of its error: the
        caller takes its transaction again within writes_at_once. A turn's request or batch
        of outcomes costs two statements fewer (SAVEPOINT and RELEASE); a request that
        fails after it wrote costs its turn taken twice. Elsewhere nothing changes: on
        PostgreSQL savepoints go with other statements (pg.py), and a failed statement on
        MySQL may undo more than itself."""
        return self._flag("_skipping") if self.sqlite else nullcontext()

    @contextmanager
    def _flag(self, name: str) -> Iterator[None]:
        setattr(self, name, True)
        try:
            yield
        finally:
            setattr(self, name, False)

    def changes(self) -> int | None:
        """Rows this connection has changed so far (SQLite), so that a caller can tell a
        commit that wrote something from an empty one; None where no count is kept."""
        if isinstance(self.db, peewee.SqliteDatabase) and not self.db.is_closed():
            total: int = self.db.connection().total_changes
            return total
        return None

    def close(self) -> None:
        """Close this store's connection (a no-op when closed)."""
        if not self.db.is_closed():
            self.db.close()

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
        database_id: str = row[0]
        return database_id


class SavepointSkipped(TakeAgain):
    """A block whose savepoint was skipped (SqlKit.skipping_savepoints) failed after it
    changed rows, which nothing can undo now but the whole transaction's rollback."""

    @property
    def expected(self) -> bool:
        return True


class _Savepoint:
    """A savepoint named by its depth, so that each level runs the same statements every
    turn, prepared once; peewee names each savepoint afresh (a uuid: a new statement to
    prepare, about 5 µs more for each request and batch of outcomes). Within
    skipping_savepoints, none is made: the rows changed so far are counted instead."""

    def __init__(self, store: SqlKit) -> None:
        self.store = store
        self.changes: int | None = None  # (skipped: the connection's changes at the start)

    def __enter__(self) -> _Savepoint:
        if self.store._skipping and not self.store._at_once:
            self.changes = self.store.changes()
            return self
        self.store.savepoints += 1
        self.name = f"martinet_{self.store.savepoints}"
        if isinstance(self.store.db, PgDatabase):  # sent with the first statement inside it
            self.store.db.defer(f"SAVEPOINT {self.name}")
            return self
        try:
            self.store._exec(f"SAVEPOINT {self.name}")
        except BaseException:
            self.store.savepoints -= 1
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.changes is not None:
            # (the database's own trouble fails the whole turn anyway)
            troubled = isinstance(exc, (peewee.OperationalError, peewee.InterfaceError))
            if isinstance(exc, Exception) and not troubled and self.store.changes() != self.changes:
                raise SavepointSkipped(
                    f"a block without a savepoint failed after it changed rows: {exc!r}"
                ) from exc
            return
        db = self.store.db
        if isinstance(db, PgDatabase):
            nothing_sent = db.take_back(f"SAVEPOINT {self.name}", undo=exc_type is not None)
            if nothing_sent:  # nothing inside it was sent, nor (if it succeeded) deferred to be written
                self.store.savepoints -= 1
                return
            if exc_type is None:
                db.defer(f"RELEASE SAVEPOINT {self.name}")  # with the next statement
                self.store.savepoints -= 1
                return
            db.forget_deferred()  # releases of savepoints inside this one: undone with it
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


def where(conditions: list[str]) -> str:
    """A WHERE clause of these conditions, all of them (none: no clause)."""
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""
