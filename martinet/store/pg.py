"""PostgreSQL with fewer round trips: statements that return nothing the caller reads
(BEGIN, SAVEPOINT, RELEASE SAVEPOINT) wait and go with the next statement, in one
query string (psycopg2 sends a query and its parameters as one text, and PostgreSQL
runs the statements of a string in order, stopping at the first error).

A turn of the daemon is one transaction with a savepoint per request and per batch
of outcomes, so that a bad one costs only itself. Sent one by one, BEGIN, each
SAVEPOINT and each RELEASE cost a round trip to the server apiece, more than the
statements they wrap; deferred, they cost none, and the isolation is the same:

- A SAVEPOINT goes with the first statement inside it. A savepoint in which nothing
  was sent (a read-only request that failed in Python, an empty batch) is never sent
  at all: there is nothing to undo or release.
- A RELEASE goes with the next statement, or with the COMMIT.
- Undoing a savepoint (ROLLBACK TO) is sent at once: the error path, rare.
- A transaction that sent nothing commits or rolls back without a word to the server.
- Rows whose ids no one reads (a turn's events when no one subscribes) are inserted
  with the COMMIT.

The statements the store runs again and again are prepared, once a connection, at
their third use (`execute_prepared`): PostgreSQL then plans them once, where it
planned each anew. On a task table full of rows not vacuumed yet, planning a claim took longer
than running it (0.76 ms against 0.33 in one EXPLAIN ANALYZE). A statement whose
parameters' types PostgreSQL cannot tell (`$1 IS NULL`) is run as it is.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import peewee

PREPARED_MAX = 200  # statements prepared a connection; more run unprepared
PREPARE_AT = 3  # a statement's use on a connection at which it is prepared (the rare ones never are)
_PLACEHOLDER = re.compile(r"%%|%s")
_PREPARABLE = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)  # not SAVEPOINT, ...


class _Session(threading.local):
    """What belongs to one connection: peewee gives each thread its own (an embedded
    daemon opens its database in the caller's thread and runs its loop in another)."""

    def __init__(self) -> None:
        self.deferred: list[str] = []
        self.prepared: dict[str, tuple[str, int]] = {}  # sql: (name, parameter count)
        self.uses: dict[str, int] = {}


class PgDatabase(peewee.PostgresqlDatabase):
    """peewee's PostgreSQL database, deferring the statements above (see the module)."""

    def init(
        self,
        database: str | None,
        register_unicode: bool = True,
        encoding: Any = None,
        isolation_level: Any = None,
        *,
        prefer_psycopg3: bool = False,
        **kwargs: Any,
    ) -> None:
        self._session = _Session()
        self._unpreparable: set[str] = set()  # a property of the statement: on any connection
        self._names = 0
        super().init(
            database, register_unicode, encoding, isolation_level, prefer_psycopg3=prefer_psycopg3, **kwargs
        )

    def defer(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Send `sql` (its parameters bound here; no result read) with the next statement."""
        if params:
            sql = self.connection().cursor().mogrify(sql, params).decode()  # type: ignore[no-untyped-call]
        # A string sent with parameters is read for placeholders whole: a % of ours is doubled.
        self._session.deferred.append(sql.replace("%", "%%"))

    def take_back(self, sql: str) -> bool:
        """Forget `sql` (no parameters, no %) and what was deferred after it, if it was not
        sent yet (True)."""
        deferred = self._session.deferred
        if sql not in deferred:
            return False
        del deferred[deferred.index(sql) :]
        return True

    def forget_deferred(self) -> None:
        """Drop what waits (a savepoint rolled back discards what was inside it)."""
        self._session.deferred.clear()

    def _initialize_connection(self, conn: Any) -> None:
        self._session.prepared.clear()  # a new connection (a reconnect) has none (peewee's is a no-op)
        self._session.uses.clear()

    def execute_prepared(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """`sql` (psycopg2's placeholders) as a prepared statement of this connection,
        prepared at its PREPARE_AT-th use. PREPARE outlives a rollback; one that fails (a parameter
        of no type PostgreSQL can tell) is undone by a savepoint and `sql` runs unprepared."""
        session = self._session
        found = session.prepared.get(sql)
        if found is None:
            if (
                sql in self._unpreparable
                or len(session.prepared) >= PREPARED_MAX
                or not _PREPARABLE.match(sql)
            ):
                return self.execute_sql(sql, params)
            if len(session.uses) > 10 * PREPARED_MAX:  # statements of one-off shapes: counted afresh
                session.uses.clear()
            uses = session.uses[sql] = session.uses.get(sql, 0) + 1
            if uses < PREPARE_AT:
                return self.execute_sql(sql, params)
            found = self._prepare(sql)
            if found is None:
                return self.execute_sql(sql, params)
        name, count = found
        return self.execute_sql(
            f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}", params
        )

    def _prepare(self, sql: str) -> tuple[str, int] | None:
        count = 0

        def number(match: re.Match[str]) -> str:
            nonlocal count
            if match.group() == "%%":
                return "%%"  # psycopg2 still reads the PREPARE for placeholders
            count += 1
            return f"${count}"

        self._names += 1  # never reused: a PREPARE outlives the failure of what came with it
        name = f"martinet_{self._names}"
        prepare = f"PREPARE {name} AS {_PLACEHOLDER.sub(number, sql)}"
        self._send_deferred()  # first, so that an error here is the PREPARE's own (first use only)
        inside = self.transaction_depth() > 0
        try:
            if inside:
                self.execute_sql(f"SAVEPOINT martinet_prepare; {prepare}; RELEASE SAVEPOINT martinet_prepare")
            else:
                self.execute_sql(prepare)
        except peewee.ProgrammingError:
            if inside:
                self.execute_sql("ROLLBACK TO SAVEPOINT martinet_prepare; RELEASE SAVEPOINT martinet_prepare")
            self._unpreparable.add(sql)
            return None
        self._session.prepared[sql] = (name, count)
        return name, count

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        deferred = self._session.deferred
        if deferred:
            sql = "; ".join([*deferred, sql])
            deferred.clear()
        return super().execute_sql(sql, params)  # type: ignore[no-untyped-call]

    def cursor(self, named_cursor: Any = None) -> Any:
        """A cursor, with what waits sent first (for callers that execute on it directly)."""
        self._send_deferred()
        return super().cursor(named_cursor)  # type: ignore[no-untyped-call]

    def _send_deferred(self) -> None:
        """What waits, sent now on its own (a round trip)."""
        deferred = self._session.deferred
        if deferred:
            sql = "; ".join(deferred)
            deferred.clear()
            super().execute_sql(sql)  # type: ignore[no-untyped-call]  # (peewee binds, if only ())

    def begin(self, isolation_level: Any = None) -> None:
        if isolation_level is None and not getattr(self, "_isolation_level", None):
            # Connected first: peewee pushes the transaction after begin(), and a connect
            # made by its first statement would empty this thread's stack of transactions.
            self.connection()  # type: ignore[no-untyped-call]
            self.defer("BEGIN")
        else:
            super().begin(isolation_level)

    def commit(self) -> None:
        if self._session.deferred == ["BEGIN"]:  # nothing was sent: nothing to commit
            self._session.deferred.clear()
            return
        self.execute_sql("COMMIT")

    def rollback(self) -> None:
        if self.take_back("BEGIN"):  # nothing was sent: nothing to undo
            return
        self._session.deferred.clear()  # releases of what is undone anyway
        super().rollback()

    def close(self) -> bool:
        self._session.deferred.clear()  # a connection closed takes its transaction with it
        return super().close()
