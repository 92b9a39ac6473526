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
- Writes whose result no one reads (a handler's start, an outcome's UPDATE and its
  attempt row) go with the next statement too (`defer_prepared`), prepared as any other.
  Should one of them fail, the statement it went with raises DeferredWriteFailed, an
  OperationalError, never the error of the request or batch that happened to carry it
  (whose savepoint would catch it and go on): the daemon rolls the turn back and takes
  it again with every write sent at once (`writes_at_once`), so that an error is its
  own statement's, and a bad outcome costs only itself.
- An attempt's end is written without its task's row read first when this daemon
  leased it: the store keeps what a read would find (SqlKit.held), its own changes
  keep that up to date, and the UPDATE is fenced by what may change while a task is
  held (its worker, start, cancel request, dependents). Should another writer have
  changed one, the statement fails (HELD_CHANGED), as a deferred write does, and the
  turn is taken again, the rows read. An end's turn is then one round trip.

Arrays (the `unnest` forms of the store's multi-row writes) go as one array literal
each (`array`): psycopg2 adapts a list value by value, an adapter object and a quoting
call for each, which cost the daemon more than a millisecond a turn of 33 outcomes.
A column of one type, as all of a turn's are, is written without a Python step a
value, and each distinct time once (a turn's times are mostly its `now`): value by
value, the literals took a sixth of the daemon's CPU in a drain.

The statements the store runs again and again are prepared, once a connection, at
their third use (`execute_prepared`): PostgreSQL then plans them once, where it
planned each anew. On a task table full of rows not vacuumed yet, planning a claim took longer
than running it (0.76 ms against 0.33 in one EXPLAIN ANALYZE). A statement whose
parameters' types PostgreSQL cannot tell (`$1 IS NULL`) is run as it is.

A prepared statement is prepared again as its uses grow (at REPLAN_FIRST, then each
time they grow REPLAN_GROWTH-fold). PostgreSQL keeps the plan it made at a statement's
sixth run for as long as the statement lives, unless an ANALYZE of its tables comes
first: made on the small table of a new database, which autovacuum has not analyzed
yet, it reads the whole table for a few ids, and went on doing so as the table grew.
A statement used too seldom for its replan to come in time, a bulk submit's lookup
of its request ids, is never prepared (Tasks._known_requests).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import peewee

PREPARED_MAX = 200  # statements prepared a connection; more run unprepared
PREPARE_AT = 3  # a statement's use on a connection at which it is prepared (the rare ones never are)
REPLAN_FIRST = 64  # a prepared statement's use at which it is prepared again (see the module)
REPLAN_GROWTH = 4  # ... and again each time its uses grow this many times
REQUEST_ID_INDEX = "task_request_id"  # (models.Task: unique)
# What fails an end written without its rows read, when they changed (SqlKit._update_as_kept)
HELD_CHANGED = "martinet: held tasks changed since this daemon last wrote them"
_PLACEHOLDER = re.compile(r"%%|%s")
_PREPARABLE = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)  # not SAVEPOINT, ...


class TakeAgain(peewee.OperationalError):
    """The transaction failed in a way that does not say whose error it was: take it
    again within `writes_at_once()` (SqlKit's), where each write's error is its own.
    An OperationalError, so that no handler of one request or batch takes it for its
    own error: like the database's own trouble, it fails the whole transaction.
    `expected`: it comes now and then in normal work (logged quietly)."""

    @property
    def expected(self) -> bool:
        return False


class DeferredWriteFailed(TakeAgain):
    """A write deferred to go with a later statement failed (see the module): the
    transaction as a whole failed, whatever statement carried it. `sent_again`: it was
    a new task's INSERT whose request_id a task has already (Tasks._submit_plain: a
    client's request sent again, expected now and then)."""

    @property
    def expected(self) -> bool:
        return self.sent_again or HELD_CHANGED in str(self.__cause__)

    @property
    def sent_again(self) -> bool:
        diag = getattr(getattr(self.__cause__, "orig", None), "diag", None)
        return getattr(diag, "constraint_name", None) == REQUEST_ID_INDEX


class _Write(str):
    """A deferred statement that writes (see DeferredWriteFailed), not BEGIN or a savepoint."""


class Array:
    """A list of None, bools, ints, floats and strings that psycopg2 sends as one array
    literal ('{1,"a\\"b",NULL}'), quoted once as a string, where it would adapt each
    value (ARRAY[...]). The literal has no type: the statement casts it (`?::bigint[]`).
    A value of another type (bytes, a Decimal) sends the list as psycopg2 would."""

    __slots__ = ("values", "_conn")

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = values
        self._conn: Any = None

    def __conform__(self, protocol: Any) -> Array:
        return self

    def prepare(self, conn: Any) -> None:
        self._conn = conn

    def getquoted(self) -> bytes:
        from psycopg2.extensions import QuotedString, adapt  # type: ignore[import-untyped]  # (psycopg2 is adapting this)

        literal = _literal(self.values)
        quoted = adapt(list(self.values)) if literal is None else QuotedString(literal)
        if self._conn is not None:
            quoted.prepare(self._conn)
        result: bytes = quoted.getquoted()
        return result

    def __repr__(self) -> str:
        return f"Array({self.values!r})"


def _literal(values: Sequence[Any]) -> str | None:
    """PostgreSQL's text form of a one-dimensional array of `values`, or None for a value
    it does not write (see Array). A column of one type (every array the daemon sends in
    a turn) is written by C loops (`_of_one_type`); others value by value."""
    kinds = set(map(type, values))
    if len(kinds) == 1:
        written = _of_one_type(kinds.pop(), values)
        if written is not None:
            return written
    items = []
    for value in values:
        kind = type(value)
        if kind is str:
            items.append(_quoted(value))
        elif value is None:
            items.append("NULL")
        elif kind is bool:
            items.append("t" if value else "f")
        elif kind is int:
            items.append(str(value))
        elif kind is float:
            items.append(_float(value))
        elif isinstance(value, str):  # a StrEnum (a task's status): its value
            items.append(_quoted(str.__str__(value)))
        else:
            return None
    return "{" + ",".join(items) + "}"


def _of_one_type(kind: type, values: Sequence[Any]) -> str | None:
    """The literal of `values`, all of type `kind`, without a Python step a value; None
    when they need one (the caller then writes them value by value)."""
    if kind is int:
        return "{" + ",".join(map(str, values)) + "}"
    if kind is float:
        # A turn's times are mostly its own `now`: each distinct one is written once (a
        # float's shortest repr costs about a microsecond). 0.0 == -0.0: not told apart here.
        distinct = set(values)
        if 0.0 in distinct or not all(map(math.isfinite, distinct)):
            return None
        if len(distinct) == len(values):
            return "{" + ",".join(map(repr, values)) + "}"
        texts = {value: repr(value) for value in distinct}
        return "{" + ",".join(map(texts.__getitem__, values)) + "}"
    if issubclass(kind, str):  # a StrEnum too: joined as its value
        text = "\x00".join(values)  # PostgreSQL's text holds no NUL: none is a value's own...
        if text.count("\x00") != len(values) - 1:
            return None  # ... unless one is (PostgreSQL refuses it, as it would value by value)
        return "{" + _quoted(text).replace("\x00", '","') + "}"
    if kind is bool:
        return "{" + ",".join(["t" if value else "f" for value in values]) + "}"
    if kind is type(None):
        return "{" + ",".join(["NULL"] * len(values)) + "}"
    return None


def _float(value: float) -> str:
    """A float as PostgreSQL reads it back exactly: the shortest repr, or its names of
    infinity and NaN."""
    if math.isfinite(value):
        return repr(value)
    return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"


def _quoted(text: str) -> str:
    """An array element: in double quotes, its backslashes and double quotes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Prepared:
    """A statement prepared on a connection: its name, its parameters, its uses so far
    and the use at which it is prepared again."""

    __slots__ = ("name", "count", "uses", "replan_at")

    def __init__(self, name: str, count: int, uses: int = PREPARE_AT, replan_at: int = REPLAN_FIRST) -> None:
        self.name, self.count, self.uses, self.replan_at = name, count, uses, replan_at


class _Session(threading.local):
    """What belongs to one connection: peewee gives each thread its own (an embedded
    daemon opens its database in the caller's thread and runs its loop in another)."""

    def __init__(self) -> None:
        self.deferred: list[str] = []
        self.at_once = False  # (writes_at_once)
        self.prepared: dict[str, _Prepared] = {}
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
        self._literal_arrays = isinstance(getattr(self, "_adapter", None), peewee.Psycopg2Adapter)  # (array)

    def array(self, values: Sequence[Any]) -> Any:
        """`values` as a parameter of the type `?::type[]`: one literal (Array) with
        psycopg2, the list itself with another driver."""
        return Array(values) if self._literal_arrays else values

    def defer(self, sql: str, params: Sequence[Any] = (), write: bool = False) -> None:
        """Send `sql` (its parameters bound here; no result read) with the next statement.
        `write`: its failure fails the transaction (DeferredWriteFailed)."""
        if params:
            sql = self.connection().cursor().mogrify(sql, params).decode()  # type: ignore[no-untyped-call]
        # A string sent with parameters is read for placeholders whole: a % of ours is doubled.
        sql = sql.replace("%", "%%")
        self._session.deferred.append(_Write(sql) if write else sql)

    def defer_prepared(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A write whose result no one reads, run as execute_prepared runs it, sent with
        the next statement (the COMMIT at the latest); at once outside a transaction."""
        if not self.defers_writes():
            self.execute_prepared(sql, params)
            return
        self.defer(self._prepared_text(sql), params, write=True)

    def defers_writes(self) -> bool:
        """Whether defer_prepared sends a write later: in a transaction, unless within
        writes_at_once."""
        return self.transaction_depth() > 0 and not self._session.at_once

    @contextmanager
    def writes_at_once(self) -> Iterator[None]:
        """Within: defer_prepared sends each write at once, so that an error is its own."""
        self._session.at_once = True
        try:
            yield
        finally:
            self._session.at_once = False

    def take_back(self, sql: str, undo: bool = True) -> bool:
        """Forget `sql` (no parameters, no %) and what was deferred after it, if it was not
        sent yet (True). Unless `undo`, only if nothing deferred after it writes."""
        deferred = self._session.deferred
        if sql not in deferred:
            return False
        at = deferred.index(sql)
        if not undo and any(isinstance(d, _Write) for d in deferred[at:]):
            return False
        del deferred[at:]
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
        return self.execute_sql(self._prepared_text(sql), params)

    def _prepared_text(self, sql: str) -> str:
        """What runs `sql`: EXECUTE of its prepared statement, prepared now if this is its
        PREPARE_AT-th use (and again as its uses grow); `sql` itself before that, or when
        it cannot be prepared."""
        session = self._session
        found = session.prepared.get(sql)
        if found is not None:
            found.uses += 1
            if found.uses >= found.replan_at:
                found = self._prepare(sql, again=found) or found
        else:
            if (
                sql in self._unpreparable
                or len(session.prepared) >= PREPARED_MAX
                or not _PREPARABLE.match(sql)
            ):
                return sql
            if len(session.uses) > 10 * PREPARED_MAX:  # statements of one-off shapes: counted afresh
                session.uses.clear()
            uses = session.uses[sql] = session.uses.get(sql, 0) + 1
            if uses < PREPARE_AT:
                return sql
            found = self._prepare(sql)
            if found is None:
                return sql
        name, count = found.name, found.count
        return f"EXECUTE {name}({', '.join(['%s'] * count)})" if count else f"EXECUTE {name}"

    def _prepare(self, sql: str, again: _Prepared | None = None) -> _Prepared | None:
        """`sql` prepared under a new name; `again`: its statement until now, dropped
        once the new one is there (kept, should the PREPARE fail)."""
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
        if again is not None:  # (like PREPARE, outlives a rollback; runs only if the PREPARE did)
            prepare += f"; DEALLOCATE {again.name}"
        if self.transaction_depth() > 0:
            prepare = f"SAVEPOINT martinet_prepare; {prepare}; RELEASE SAVEPOINT martinet_prepare"
        self._send_deferred()  # first, so that an error here is the PREPARE's own
        try:
            self.execute_sql(prepare)
        except peewee.ProgrammingError:
            if self.transaction_depth() > 0:
                self.execute_sql("ROLLBACK TO SAVEPOINT martinet_prepare; RELEASE SAVEPOINT martinet_prepare")
            if again is not None:  # prepared before, so it can be: the old plan, until the next try
                again.replan_at *= REPLAN_GROWTH
                return None
            self._unpreparable.add(sql)
            return None
        made = _Prepared(name, count)
        if again is not None:
            made.uses, made.replan_at = again.uses, again.replan_at * REPLAN_GROWTH
        self._session.prepared[sql] = made
        return made

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if not self._session.deferred:
            return super().execute_sql(sql, params)  # type: ignore[no-untyped-call]
        return self._with_deferred([sql], params)

    def _with_deferred(self, statements: list[str], params: Any) -> Any:
        """What waits, then `statements`, in one query string (see DeferredWriteFailed)."""
        deferred = self._session.deferred
        writes = any(isinstance(d, _Write) for d in deferred)
        sql = "; ".join([*deferred, *statements])
        deferred.clear()
        try:
            return super().execute_sql(sql, params)  # type: ignore[no-untyped-call]
        except peewee.DatabaseError as exc:
            if not writes or isinstance(exc, peewee.OperationalError):
                raise
            raise DeferredWriteFailed(f"a write sent with a later statement failed: {exc}") from exc

    def cursor(self, named_cursor: Any = None) -> Any:
        """A cursor, with what waits sent first (for callers that execute on it directly)."""
        self._send_deferred()
        return super().cursor(named_cursor)  # type: ignore[no-untyped-call]

    def _send_deferred(self) -> None:
        """What waits, sent now on its own (a round trip)."""
        if self._session.deferred:
            self._with_deferred([], None)  # (peewee binds, if only ())

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
