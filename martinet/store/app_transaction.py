"""A task inserted in an application's own PostgreSQL transaction (martinet.enqueue_in):
the store's submit, run on the caller's connection, inside the caller's transaction,
so that the task exists if and only if that transaction commits.

The connection is lent for the call only: nothing here commits, rolls back or closes
the caller's transaction (a connection in autocommit mode, which has none, gets one
of its own for the task), and a key taken by another task is decided in a savepoint,
so that losing that race spoils nothing of the caller's work. With the task goes a NOTIFY
on CHANGES (PostgreSQL delivers it at the commit, and never for a transaction
rolled back): a daemon listening there (listen.py) learns of the task at once.

What the daemon does on its own submit holds here too, by the same code (Tasks.submit):
a known request_id or a key in use returns the task that has it, `after` names tasks
that must exist. A task that waits on others is looked at again by the daemon once it
hears of it: one of them may end between this read of it and the caller's commit, and
that end could not see the dependency yet (Dependents.settle_waiting).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import peewee

from martinet.errors import BadInput, StoreError

if TYPE_CHECKING:
    from martinet.store import Store

CHANGES = "martinet_changes"  # the NOTIFY channel: what other writers committed


class _CallersTransaction:
    """What peewee's stack of transactions holds while a connection is lent: the store's
    atomic() then makes savepoints, never a BEGIN or a COMMIT of its own."""


class _Lent(peewee.PostgresqlDatabase):
    """peewee's PostgreSQL database over a connection it does not own. peewee keeps a
    thread's connection and transactions apart from another thread's: each thread
    lends its own, for one call."""

    def lend(self, connection: Any) -> None:
        self._state.set_connection(connection)  # type: ignore[attr-defined]
        self.push_transaction(_CallersTransaction())

    def give_back(self) -> None:
        """Forget the connection: the caller keeps it, open, in its transaction."""
        self._state.reset()  # type: ignore[attr-defined]


_db = _Lent(None)
_store: Store | None = None


def submit_in(connection: Any, spec: dict[str, Any], now: float) -> tuple[int, bool]:
    """Insert the task `spec` (validate.check_task's) through `connection`, in its open
    transaction; returns (id, created) as Store.submit does, and tells listening
    daemons at the commit when it created one. A connection in autocommit mode has no
    transaction to join: the task is committed at once, in one of its own (a task with
    neither key nor parents is one statement, its NOTIFY in it: one round trip)."""
    store = _lent_store()
    conn = _dbapi(connection)
    plain = not spec.get("key") and not spec.get("after")
    own = not plain and bool(getattr(conn, "autocommit", False))
    _db.lend(conn)
    try:
        if own:
            store._exec("BEGIN", cache=False)
        try:
            task_id, created = _submit(store, spec, now, plain)
        except BaseException:
            if own:
                store._exec("ROLLBACK", cache=False)
            raise
        if own:
            store._exec("COMMIT", cache=False)
    finally:
        _db.give_back()
    return task_id, created


def _submit(store: Store, spec: dict[str, Any], now: float, plain: bool) -> tuple[int, bool]:
    """`plain`: with neither key nor parents, its note goes in the INSERT's statement."""
    note: dict[str, Any] = {"queue": spec.get("queue") or "default"}
    if spec.get("run_at") is not None and spec["run_at"] > now:
        note["run_at"] = spec["run_at"]
    try:
        task_id, created = store.submit(
            spec, now, mark_parents=False, note=json.dumps(note) if plain else None
        )
    except peewee.ProgrammingError as exc:
        if "does not exist" in str(exc):
            raise StoreError(
                f"enqueue_in: this database has no martinet tables ({exc}); "
                "start `martinet serve` on it once to make them"
            ) from None
        raise
    if created and not plain:
        if spec.get("after"):
            note["waiting"] = [task_id]
        store._exec("SELECT pg_notify(?, ?)", (CHANGES, json.dumps(note)))
    return task_id, created


def _lent_store() -> Store:
    global _store
    if _store is None:
        from martinet.store import Store  # (the package imports this module's neighbours)

        _store = Store(_db)
    return _store


def _dbapi(connection: Any) -> Any:
    """The DB-API connection behind what the caller gave: a psycopg (2 or 3) connection
    or cursor, Django's `django.db.connection`, a SQLAlchemy Connection or Session."""
    if hasattr(connection, "ensure_connection"):  # Django's connection wrapper
        connection.ensure_connection()
        connection = connection.connection
    elif hasattr(connection, "get_bind") and callable(getattr(connection, "connection", None)):
        connection = connection.connection().connection  # a SQLAlchemy Session: its Connection's
    elif hasattr(connection, "exec_driver_sql"):  # a SQLAlchemy Connection: its DB-API connection
        if not connection.in_transaction():
            connection.begin()  # as its own execute would (autobegin): its commit() then commits ours
        connection = connection.connection
    elif not hasattr(connection, "cursor") and hasattr(connection, "execute"):
        connection = connection.connection  # a cursor: its connection
    if not hasattr(connection, "cursor"):
        raise BadInput(
            f"enqueue_in needs a PostgreSQL connection (psycopg 2 or 3, Django's or SQLAlchemy's), "
            f"not {type(connection).__name__}"
        )
    module = type(connection).__module__
    if not module.startswith(("psycopg", "sqlalchemy")):
        raise BadInput(f"enqueue_in works on PostgreSQL through psycopg 2 or 3, not through {module}")
    return connection
