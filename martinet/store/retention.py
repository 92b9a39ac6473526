"""Retention: finished tasks pruned in bounded batches, and the event log (appended
each turn, read from an id on, pruned oldest first)."""

from __future__ import annotations

from itertools import repeat
from typing import Any, NamedTuple

from martinet.states import TERMINAL, sql_list
from martinet.store.pg import PgDatabase
from martinet.store.rows import Pruned
from martinet.store.sql import SqlKit

# Finished tasks read per prune call: a delete of 500 tasks (and their attempts) takes
# a few milliseconds, short enough to run inside a turn of the daemon's loop.
PRUNE_BATCH = 500
EVENT_COLUMNS = ("task_id", "name", "kind", "at", "body")  # what record_events writes
# A transaction-scoped advisory lock that every daemon on a PostgreSQL database takes
# before it records events ("martinet" in ASCII): see record_events.
EVENTS_LOCK = "SELECT pg_advisory_xact_lock(7881706667185694068)"


class EventRows(NamedTuple):
    """Events to record (Retention.record_events), column by column: one item an event."""

    task_ids: list[int | None]
    names: list[str | None]
    kinds: list[str]
    bodies: list[str]  # each a JSON object


class Retention(SqlKit):
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
            finished = sql_list(TERMINAL)
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
            counted = self._exec(f"SELECT COUNT(*) FROM attempt WHERE task_id IN ({marks})", ids, cache=False)
            return Pruned(len(ids), counted.fetchone()[0], more, last)
        attempts = self._exec(f"DELETE FROM attempt WHERE task_id IN ({marks})", ids, cache=False).rowcount
        self._exec(
            f"DELETE FROM dependency WHERE task_id IN ({marks}) OR parent_id IN ({marks})",
            ids * 2,
            cache=False,
        )
        deleted = self._exec(f"DELETE FROM task WHERE id IN ({marks})", ids, cache=False).rowcount
        return Pruned(deleted, attempts, more, last)

    def record_events(self, events: EventRows, at: float, read_ids: bool = True) -> list[int]:
        """Append events, all made `at`, in multi-row INSERTs, in the caller's transaction;
        returns their ids, in order. With `read_ids` False (no one will read them)
        PostgreSQL inserts them with the next statement, the commit at the latest
        (SqlKit._write_later), saving the turn a round trip, and this returns [].

        On PostgreSQL the bodies go as one JSON array, its elements kept as they are
        written (`json`, not `jsonb`): a text array would escape each body's quotes, and
        the bodies are most of a turn's bytes. A body PostgreSQL might not take as JSON
        (Python's NaN and Infinity, which json.dumps writes; an escaped surrogate, which
        some versions refuse) sends the turn's bodies as a text array instead.

        On PostgreSQL the ids are in commit order whatever the number of daemons: each
        takes EVENTS_LOCK first (held to its commit, in the commit's round trip when the
        ids are not read), so a reader after an id never skips one committed later by
        another daemon (server/events.py, EventHub.follow). One daemon alone waits on no
        one: the lock costs it a function call in a string it sends anyway. Its rows are
        drawn from the table's sequence in the order of the arrays, so the ids it returns,
        sorted, are the events'."""
        task_ids, names, kinds, bodies = events
        if not bodies:
            return []
        if self.is_postgres:
            if isinstance(self.db, PgDatabase):
                self.db.defer(EVENTS_LOCK)
            else:
                self._exec(EVENTS_LOCK)
            joined = ",".join(bodies)
            as_json = not ("NaN" in joined or "Infinity" in joined or "\\ud" in joined)
            sql = self._event_insert(as_json)
            body_param = f"[{joined}]" if as_json else self._array(bodies)
            params = [at, self._array(task_ids), self._array(names), self._array(kinds), body_param]
            if not read_ids:
                self._write_later(sql, params)
                return []
            return sorted(r[0] for r in self._exec(sql + " RETURNING id", params))
        return self._insert_values(
            "event", EVENT_COLUMNS, list(zip(task_ids, names, kinds, repeat(at), bodies))
        )

    def _event_insert(self, as_json: bool) -> str:
        """PostgreSQL's INSERT of a turn's events (record_events), one text whatever their
        count (prepared): the time, the columns as arrays, the bodies as a JSON array
        (`as_json`) or a text array, zipped in order by ROWS FROM."""
        key = ("event", ("json" if as_json else "text",))
        sql = self._insert_sql.get(key)
        if sql is None:
            bodies = "json_array_elements(?::json)" if as_json else "unnest(?::TEXT[])"
            arrays = [f"unnest({a})" for a in self._array_params("event", EVENT_COLUMNS[:3])]
            sql = self._insert_sql[key] = (
                f"INSERT INTO event ({', '.join(EVENT_COLUMNS)}) SELECT t, n, k, ?::DOUBLE PRECISION, b::TEXT"
                f" FROM ROWS FROM ({', '.join(arrays)}, {bodies}) AS r(t, n, k, b)"
            )
        return sql

    def events_after(self, after: int, limit: int) -> list[tuple[int, float, str]]:
        """Up to `limit` events with an id above `after`, oldest first: (id, at, body)."""
        sql = "SELECT id, at, body FROM event WHERE id > ? ORDER BY id LIMIT ?"
        return [tuple(r) for r in self._exec(sql, (after, limit)).fetchall()]

    def events_of(self, task_id: int, limit: int = 50) -> list[tuple[int, float, str]]:
        """A task's latest `limit` events, oldest first: (id, at, body)."""
        sql = "SELECT id, at, body FROM event WHERE task_id = ? ORDER BY id DESC LIMIT ?"
        return [tuple(r) for r in reversed(self._exec(sql, (task_id, limit)).fetchall())]

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
