"""store.atomic() on every backend: the error that made a transaction fail is the one raised,
even when the database already ended the transaction itself (SQLite does, after
SQLITE_FULL) and the rollback that follows fails too."""

from __future__ import annotations

import peewee
import pytest

from martinet.models import Task
from tests.store.support import submit

FULL = "database or disk is full"


def test_the_error_survives_a_rollback_the_database_already_did(store):
    # Given a transaction that the database ends under us, as SQLite does after SQLITE_FULL
    with pytest.raises(peewee.OperationalError) as raised:
        with store.atomic():
            submit(store)
            store.db.execute_sql("ROLLBACK")
            raise peewee.OperationalError(FULL)
    # Then the caller sees why, not "cannot rollback - no transaction is active"
    assert str(raised.value) == FULL
    assert Task.select().count() == 0
    with store.atomic():  # and the store works on
        submit(store)
    assert Task.select().count() == 1


def test_the_error_survives_a_savepoint_the_database_already_dropped(store):
    # Given a savepoint (one request of a turn) whose transaction the database ended
    with pytest.raises(peewee.OperationalError) as raised:
        with store.atomic():
            submit(store)
            with store.atomic():
                submit(store)
                store.db.execute_sql("ROLLBACK")
                raise peewee.OperationalError(FULL)
    # Then neither "no such savepoint" nor a failed rollback hides it
    assert str(raised.value) == FULL
    assert Task.select().count() == 0
    assert store.savepoints == 0


def test_a_bug_inside_a_savepoint_whose_rollback_fails_raises_the_database_error(store):
    # A failed rollback hides only a database error that explains it: after any other
    # error, the database's own trouble must reach the caller (the daemon reconnects).
    with pytest.raises(peewee.PeeweeException) as raised:
        with store.atomic():
            with store.atomic():
                store.db.execute_sql("ROLLBACK")
                raise KeyError("a bug of ours")
    chain, exc = [], raised.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__context__
    assert any(isinstance(e, KeyError) for e in chain)  # the bug is in its traceback
