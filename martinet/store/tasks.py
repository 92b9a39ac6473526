"""A task's way to a worker: submit (one or many), timers that queue it when it is
due, claim (leased to a worker), unclaim, and start (running)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

import peewee

from martinet.errors import StoreError
from martinet.states import HELD, TIMED, ScheduleState, TaskState, sql_list
from martinet.store.app_transaction import CHANGES
from martinet.store.dependents import Dependents
from martinet.store.pg import PgDatabase
from martinet.store.rows import RunningRow, Unreadable, decoded_args, task_row
from martinet.store.sql import Cursor

TASK_IDS_AHEAD = 64  # task ids taken from the sequence at once, for submits (Tasks._task_id)
KEY_WAIT = 0.1  # seconds the daemon's insert of a key waits for another transaction inserting it
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's error when lock_timeout runs out
_DUE = f"status IN ({sql_list(TIMED)}) AND run_at <= ?"  # timed tasks whose run_at has come
_QUEUED = f"'{TaskState.QUEUED}'"
_LEASE = (  # a claimed task, leased: its attempt counted, its last attempt's traces cleared
    f"status = '{TaskState.LEASED}', attempt = attempt + 1, worker = ?, lease_expires = ?,"
    " started_at = NULL, updated_at = ?, progress = NULL, progress_message = NULL, daemon = ?"
)
# What an attempt's end needs of its task that a claim does not send the worker (RunningRow)
_KEPT = ("max_attempts", "cancel_requested", "key_mode", "releases", "has_dependents",
         "retry_base", "retry_factor", "retry_cap")  # fmt: skip
# The claim's columns (_lease_returning), then those kept
_CLAIMED = ("id", "name", "queue", "args", "attempt", "timeout", "has_parents", "run_at", "priority")
_CLAIMED_KEPT = (*_CLAIMED, *_KEPT)
# A leased task as SqlKit.held keeps it, from a row of _lease_returning: the row's columns
# around its worker (the claim's) and its start (none yet), taken by C (a dict a row cost
# 2.9 µs a task, this 0.75).
_AROUND = RunningRow._fields.index("worker")
assert RunningRow._fields[_AROUND : _AROUND + 2] == ("worker", "started_at")
_KEPT_BEFORE = itemgetter(*(_CLAIMED_KEPT.index(f) for f in RunningRow._fields[:_AROUND]))
_KEPT_AFTER = itemgetter(*(_CLAIMED_KEPT.index(f) for f in RunningRow._fields[_AROUND + 2 :]))
_PG_START = (
    f"UPDATE task SET status = '{TaskState.RUNNING}', started_at = ?, updated_at = ?"
    " FROM unnest(?::bigint[], ?::bigint[], ?::text[]) AS s(id, attempt, worker)"
    f" WHERE task.id = s.id AND task.attempt = s.attempt AND task.worker = s.worker"
    f" AND (task.status || '') = '{TaskState.LEASED}'"  # found by id: see SqlKit.by_id_status
)


class Claimed(list[dict[str, Any]]):
    """A claim's rows, and `more`: whether a ready task it could have taken was left (read
    one past its limit; with a limit on names, whether it took all it asked for); and
    `ended`: what became of the tasks it leased that cannot run (Tasks.claim), not rows."""

    def __init__(
        self,
        rows: Iterable[dict[str, Any]] = (),
        more: bool = False,
        ended: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(rows)
        self.more = more
        self.ended = ended or []


class Tasks(Dependents):
    def submit(
        self,
        spec: dict[str, Any],
        now: float,
        mark_parents: bool = True,
        lease: tuple[str, float] | None = None,
        note: str | None = None,
    ) -> tuple[int, bool]:
        """Insert one task; returns (id, created).

        With `lease`, (worker, seconds), a task due now with neither key nor parents is
        inserted leased to that worker, as a claim would lease it (its first attempt,
        held until now + seconds): the daemon's idle worker takes it with no claim
        (server/claims.lease_at_once). A known request_id leases nothing.

        With `note`, on PostgreSQL, a task with neither key nor parents: a NOTIFY on
        CHANGES with this payload goes in the INSERT's own statement, made only when it
        creates the task (app_transaction: one statement, so one round trip, and atomic
        on a connection in autocommit mode).

        Idempotent by request_id: a retried submit returns the first one's id and
        created False, and changes nothing. Queued when `run_at` is missing or not
        after `now`, scheduled otherwise; waiting while tasks in `after` are
        unfinished; cancelled at once when one of them is dead or cancelled.
        Raises TaskNotFound, writing nothing, when `after` names an unknown task.

        A known request_id returns the task it created. A `key` that is taken
        (see models.Task.unique_key) returns the task holding it: the unique
        index decides, so concurrent submitters and several daemons agree.
        Tasks named in `after` must exist; the new task waits for them. Without
        `mark_parents` they are not marked as having dependents (app_transaction: an
        application's transaction must not lock the daemon's rows; settle_waiting marks
        them once it is committed).
        """
        Task, Dependency = self.Task, self.Dependency
        rid, key = spec.get("request_id"), spec.get("key")
        if lease is not None and (key or spec.get("after") or (spec.get("run_at") or now) > now):
            raise ValueError("only a task due now with neither key nor parents is leased as it is inserted")
        if note is not None and (key or spec.get("after") or not self.returns_ids):
            raise ValueError(
                "only a task with neither key nor parents, on PostgreSQL, is told with its insert"
            )
        if self.upserts and not key and not spec.get("after"):
            return self._submit_plain(spec, rid, now, lease, note)
        if rid:
            existing = self._exec("SELECT id FROM task WHERE request_id = ?", (rid,)).fetchone()
            if existing is not None:
                return existing[0], False
        if key:
            holder = self._exec("SELECT id FROM task WHERE unique_key = ?", (key,)).fetchone()
            if holder is not None:
                return holder[0], False
        row = self._leased(task_row(spec, now), lease, now)
        row.update(request_id=rid, key=key, unique_key=key, key_mode=spec.get("unique") if key else None)
        parents = self._check_parents(spec.get("after") or [])
        if parents:
            row["has_parents"] = True
            blocked = [p for p in parents if p.status in (TaskState.DEAD, TaskState.CANCELLED)]
            if blocked:
                row.update(status=TaskState.CANCELLED, finished_at=now, unique_key=None)
                row["reason"] = f"task {blocked[0].id} it waits on ended {blocked[0].status}"
            elif any(p.status != TaskState.SUCCEEDED for p in parents):
                row["status"] = TaskState.WAITING
        try:
            if key:
                with (
                    self.atomic(),
                    self._brief_lock_waits(key),
                ):  # a savepoint: a lost race spoils nothing else
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
            if mark_parents:
                self._mark_parents([p.id for p in parents])
        return task_id, True

    @contextmanager
    def _brief_lock_waits(self, key: str) -> Iterator[None]:
        """The daemon's insert of a key another transaction is inserting waits for that
        one's end: an application's (martinet.enqueue_in) may last. On PostgreSQL the
        wait is cut short (KEY_WAIT), and the request refused, so that one key never
        holds up the daemon's turn. (SET LOCAL, deferred: no round trip of its own;
        undone with the savepoint when the insert fails.)"""
        if not isinstance(self.db, PgDatabase):
            yield
            return
        self.db.defer(f"SET LOCAL lock_timeout = '{int(KEY_WAIT * 1000)}ms'")
        try:
            yield
        except peewee.OperationalError as exc:
            if (
                getattr(getattr(exc, "orig", None), "pgcode", None) != LOCK_NOT_AVAILABLE
            ):  # (the driver's error)
                raise
            raise StoreError(
                f"the key {key!r} is being taken by a transaction that has not committed yet "
                "(martinet.enqueue_in in an application's transaction, or another daemon): try again"
            ) from None
        self.db.defer("SET LOCAL lock_timeout = DEFAULT")

    def _leased(self, row: dict[str, Any], lease: tuple[str, float] | None, now: float) -> dict[str, Any]:
        """A new task's row, leased as a claim leases (_LEASE) when `lease` says to whom."""
        if lease is not None:
            worker, seconds = lease
            row.update(status=str(TaskState.LEASED), attempt=1, worker=worker, lease_expires=now + seconds,
                       daemon=self.daemon_id)  # fmt: skip
        return row

    def _submit_plain(
        self,
        spec: dict[str, Any],
        rid: str | None,
        now: float,
        lease: tuple[str, float] | None = None,
        note: str | None = None,
    ) -> tuple[int, bool]:
        """A task with neither key nor parents, where an INSERT can stand back for a known
        request_id (SQLite, PostgreSQL): one statement. On PostgreSQL, in the daemon's
        turn, no round trip of its own: its id is one taken ahead (_task_id), and its INSERT goes with the
        next statement, the COMMIT at the latest (an execute that no worker takes at once:
        one round trip, BEGIN to COMMIT). A request_id known already fails that INSERT, and
        so the turn (DeferredWriteFailed.sent_again), which the daemon takes again with each
        write sent at once; and then, as outside a turn, it is one round trip: the INSERT
        stands back for a known request_id, and the task it made is read. `note`: see submit."""
        row = self._leased(task_row(spec, now), lease, now)
        row["request_id"] = rid
        if note is None and isinstance(self.db, PgDatabase) and self.db.defers_writes():
            row = {"id": self._task_id(), **row}
            self._write_later(self._insert_text("task", row), row.values())
            if lease is not None:
                self._keep(row)
            return row["id"], True
        sql = self._insert_text("task", row)
        if rid is not None:
            sql += " ON CONFLICT (request_id) DO NOTHING"
        if self.returns_ids:
            sql, params = sql + " RETURNING id", list(row.values())
            if note is not None:  # (called once per row made: none when it stood back)
                sql, params = (
                    f"WITH made AS ({sql}) SELECT id, pg_notify(?, ?) FROM made",
                    [*params, CHANGES, note],
                )
            made = self._exec(sql, params).fetchone()
            if made is not None:
                return made[0], True
        elif rid is None:
            return self._insert("task", row), True
        else:
            cursor = self._exec(sql, row.values())
            if cursor.rowcount == 1:  # (lastrowid is a stale one when nothing was inserted)
                return cursor.lastrowid, True
        return self._exec("SELECT id FROM task WHERE request_id = ?", (rid,)).fetchone()[0], False

    def _task_id(self) -> int:
        """PostgreSQL: an id for a new task, taken from the task table's sequence
        TASK_IDS_AHEAD at a time (a round trip for that many submits). Like the sequence's
        own, an id taken is never given again, used or not."""
        if not self._task_ids:
            sql = "SELECT nextval(pg_get_serial_sequence('task', 'id')) FROM generate_series(1, ?)"
            taken = self._exec(sql, (TASK_IDS_AHEAD,)).fetchall()
            self._task_ids = sorted((r[0] for r in taken), reverse=True)
        return self._task_ids.pop()

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
                row = task_row(spec, now)
                if rid:
                    row["request_id"] = rid
                    new_rows[rid] = len(rows)
                slots.append((None, len(rows), True))
                rows.append(row)
        ids = self._insert_rows("task", rows)
        return [(ids[index] if task_id is None else task_id, created) for task_id, index, created in slots]

    def _known_requests(self, request_ids: list[str]) -> dict[str, int]:
        """The tasks these request ids made already, 500 ids a query. Never prepared: on
        PostgreSQL, the plan a prepared statement keeps (from its sixth run) compares every
        row read with each of its 500 parameters in turn, and reads the whole table on a
        new one (not analyzed yet); planned for the ids themselves, it hashes them once,
        or takes the index. Prepared, 20,000 tasks went in by execute_many at a fifth
        of the rate, each batch slower than the one before."""
        known: dict[str, int] = {}
        for start in range(0, len(request_ids), 500):
            chunk = request_ids[start : start + 500]
            sql = f"SELECT request_id, id FROM task WHERE request_id IN ({', '.join('?' * len(chunk))})"
            known.update(self._exec(sql, chunk, cache=False).fetchall())
        return known

    def promote_due(self, now: float, lead: float = 0.0) -> list[str]:
        """Scheduled tasks and retries whose time has come, or comes within `lead` seconds,
        become queued; returns the queues they are in (read from the due rows alone,
        through the task_due index). A task queued ahead of its run_at keeps it: claim
        says so, and its worker starts it then.

        Due means run_at <= now + lead. Waiting, stalled and running tasks never move."""
        due = _DUE
        until = now + lead
        queues = [
            q for (q,) in self._exec(f"SELECT DISTINCT queue FROM {self.due_rows} WHERE {due}", (until,))
        ]
        if queues:
            self._exec(
                f"UPDATE {self.due_rows} SET status = {_QUEUED}, updated_at = ? WHERE {due}", (now, until)
            )
        return queues

    def next_wakeup(self, lead: float = 0.0) -> float | None:
        """The earliest time at which the daemon has something to do: `lead` seconds before
        the first run_at of a scheduled or failed (retrying) task (see promote_due), or
        next_due of an active schedule; None when nothing waits. The daemon sleeps until then."""
        sql = f"SELECT MIN(run_at) FROM {self.due_rows} WHERE status IN ({sql_list(TIMED)})"
        task = self._exec(sql).fetchone()[0]
        sched = self._exec(
            f"SELECT MIN(next_due) FROM schedule WHERE status = '{ScheduleState.ACTIVE}'"
        ).fetchone()[0]
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
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Claimed:
        """Lease up to `limit` queued tasks with these names (in `queue`) to `worker`.

        fifo: higher priority first, then earlier due time, then submission
        order; random: any ready task. `accept` may refuse a candidate (a task
        name at its fleet-wide limit); refused ones stay queued.

        Each claimed task is leased (running once its worker says a handler started it:
        see start), its attempt counted (attempt + 1), held by `worker` until now + lease,
        started_at and progress cleared; it is returned with its id,
        name, queue, args (decoded), attempt, timeout, its run_at when that is still
        to come (it was queued ahead: see promote_due), when it was due (`due`, its
        run_at whether past or not: the daemon's dispatch latency) and, when it waited on
        others, their results (`parents`). Never hands one task to two workers,
        even to daemons claiming at once (see the module docstring). Fewer than
        `limit` (or none) when fewer are ready; Claimed.more says whether more are.
        """
        names = list(names)
        if limit <= 0 or not names:
            return Claimed()
        sql = f" FROM {self.ready_rows} WHERE status = {_QUEUED} AND name IN ({', '.join('?' * len(names))})"
        params: list[Any] = list(names)
        if queue is not None:
            sql += " AND queue = ?"
            params.append(queue)
        if order == "random":
            sql += " ORDER BY RAND()" if self.is_mysql else " ORDER BY RANDOM()"
        else:
            sql += " ORDER BY priority DESC, run_at, id"
        sql += " LIMIT ?"
        # Without `accept`, one candidate more than the limit: whether any is left (Claimed.more)
        params.append(limit + 1 if accept is None else limit * 2 + 8)
        if self.locks_rows:
            sql += " FOR UPDATE SKIP LOCKED"
        columns = ("id", "name", "queue", "args", "attempt", "timeout", "has_parents", "run_at")
        if self.is_postgres and accept is None:  # read and leased in one round trip
            rows, more = self._lease_returning("SELECT id" + sql, params, limit, worker, now, lease, order)
        else:
            sql = f"SELECT {', '.join(columns)}{sql}"
            rows = [dict(zip(columns, r, strict=True)) for r in self._exec(sql, params).fetchall()]
            if accept is None:
                more, rows = len(rows) > limit, rows[:limit]
            else:
                rows = [r for r in rows if accept(r)][:limit]
                more = len(rows) == limit  # (others may lie beyond the candidates read)
            if not rows:
                return Claimed()
            ids = [r["id"] for r in rows]
            self._exec(
                f"UPDATE task SET {_LEASE} WHERE id IN ({', '.join('?' * len(ids))}) AND {self.by_id_status} = {_QUEUED}",
                [worker, now + lease, now, self.daemon_id, *ids],
            )
            for r in rows:
                r["attempt"] += 1
        waiting_on = [r["id"] for r in rows if r.pop("has_parents")]
        parents = self._parent_results(waiting_on) if waiting_on else {}
        decoded, readable = decoded_args([r["args"] for r in rows])
        for r, args in zip(rows, decoded, strict=True):
            r["args"] = args
            r["due"] = r["run_at"]
            if r["run_at"] <= now:
                del r["run_at"]
            if r["id"] in parents:
                r["parents"] = parents[r["id"]]
        if readable:
            return Claimed(rows, more=more)
        # Args no handler could be called with: ended dead at once, with why, not sent (a
        # claim that raised instead would fail every turn in which a worker may take them).
        runnable, ended = [], []
        for r in rows:
            if type(r["args"]) is not Unreadable:
                runnable.append(r)
            elif info := self._end_unrunnable(
                r["id"], r["attempt"], f"its args in the database are {r['args']}", now
            ):
                ended.append(info)
        return Claimed(runnable, more=more, ended=ended)

    def _end_unrunnable(self, task_id: int, attempt: int, why: str, now: float) -> dict[str, Any] | None:
        """A task this store just leased that cannot run, ended dead (Leases)."""
        raise NotImplementedError

    def _lease_returning(
        self,
        candidates: str,
        params: list[Any],
        limit: int,
        worker: str,
        now: float,
        lease: float,
        order: str,
    ) -> tuple[list[dict[str, Any]], bool]:
        """PostgreSQL: the candidates (claim's SELECT of their ids, locked, one more than
        `limit`) leased, the first `limit` of them, by one UPDATE that returns them, put
        back in claim's order (RETURNING keeps none); and whether one was left over.

        Their ids are read first, as an array, and looked up by primary key: joined to the
        table as rows the plan may scan every queued task for them, and an `IN (subquery)`
        may run the subquery again for each row. Locked, they are still queued: no status
        to check again. The one left over stays locked, and queued, until the commit. (On
        SQLite the same UPDATE, `IN (subquery)`, measured no faster than the SELECT and
        UPDATE it would replace.)"""
        sql = (  # (c, named twice, is computed once)
            f"WITH c AS (SELECT ARRAY({candidates}) AS ids) UPDATE task SET {_LEASE}"
            " WHERE id = ANY((SELECT ids FROM c)[1:?])"
            f" RETURNING {', '.join(_CLAIMED_KEPT)}, (SELECT cardinality(ids) FROM c)"
        )
        params = [*params, worker, now + lease, now, self.daemon_id, limit]
        found = list(self._exec(sql, params))
        rows = [dict(zip(_CLAIMED, r[: len(_CLAIMED)], strict=True)) for r in found]
        for r in found:
            self._keep_running(RunningRow._make((*_KEPT_BEFORE(r), worker, None, *_KEPT_AFTER(r))))
        if order != "random":
            rows.sort(key=lambda r: (-r["priority"], r["run_at"], r["id"]))
        for r in rows:
            del r["priority"]
        return rows, bool(found) and found[0][-1] > limit

    def unclaim(self, task_id: int, attempt: int, now: float) -> tuple[str, str] | None:
        """A worker could not take the task (unknown name): back to the queue, no attempt spent.
        Returns the task's (queue, name), or None when it was not held in that attempt.
        No attempt row: the attempt never started."""
        self.held.pop(task_id, None)
        Task = self.Task
        row = Task.get_or_none(Task.id == task_id, Task.attempt == attempt, Task.status.in_(HELD))
        if row is None:
            return None
        (
            Task.update(
                status=TaskState.QUEUED,
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

    def start(self, starts: list[tuple[int, int, str]], now: float) -> None:
        """Handlers started these (id, attempt, worker): each leased task is running from
        `now` (started_at). Fenced like an outcome: an old attempt, another worker's, or
        one already running or ended changes nothing."""
        if not starts:
            return
        if self.is_postgres:  # one statement, sent with the next one (no count is read)
            for task_id, attempt, worker in starts:
                self._keep_start(task_id, attempt, worker, now)
            ids, attempts, workers = zip(*starts, strict=True)
            self._write_later(
                _PG_START, (now, now, self._array(ids), self._array(attempts), self._array(workers))
            )
            return
        sql = self._update_sql.get((("status", "started_at"), "start"))
        if sql is None:
            sql = (
                f"UPDATE task SET status = '{TaskState.RUNNING}', started_at = ?, updated_at = ?"
                f" WHERE id = ? AND attempt = ? AND worker = ? AND status = '{TaskState.LEASED}'"
            ).replace("?", self.db.param)
            self._update_sql[(("status", "started_at"), "start")] = sql
        cursor: Cursor = self.db.cursor()
        cursor.executemany(sql, [(now, now, task_id, attempt, worker) for task_id, attempt, worker in starts])
