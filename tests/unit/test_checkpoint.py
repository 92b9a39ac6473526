"""The daemon's WAL checkpointer: SQLite's log is copied back into the database by a
thread of its own, not by the commits of the daemon's loop."""

from __future__ import annotations

import os

from martinet.store import WAL_BACKSTOP_PAGES, WalCheckpointer, open_database
from tests.harness import wait_for

ROW = "x" * 8000  # about two pages a row


def test_the_checkpointer_copies_the_log_into_the_database_file(tmp_path):
    # Given a database whose commits never checkpoint themselves (far below the backstop)
    path = tmp_path / "m.db"
    db = open_database(f"sqlite:///{path}")
    assert db.execute_sql("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_BACKSTOP_PAGES
    db.execute_sql("CREATE TABLE blob (v TEXT)")
    checkpointer = WalCheckpointer(db).start()
    try:
        before = os.path.getsize(path)
        # When 500 transactions write about 1,000 pages of log
        for _ in range(500):
            with db.atomic():
                db.execute_sql("INSERT INTO blob (v) VALUES (?)", (ROW,))
        # Then the database file itself holds them (in WAL mode only a checkpoint writes it)
        wait_for(lambda: os.path.getsize(path) >= before + 500 * len(ROW), timeout=10, what="a checkpoint")
    finally:
        checkpointer.stop()
        db.close()
    assert not checkpointer._thread.is_alive()


def test_a_checkpointer_for_a_file_it_cannot_open_gives_up_quietly(tmp_path):
    class Missing:
        database = str(tmp_path / "no" / "such" / "dir" / "m.db")

    checkpointer = WalCheckpointer(Missing()).start()  # logs a warning; commits checkpoint instead
    checkpointer.stop()
    assert not checkpointer._thread.is_alive()
