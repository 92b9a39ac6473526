"""What other writers committed to a PostgreSQL database, heard as it happens: the
daemon LISTENs on app_transaction.CHANGES on a connection of its own (autocommit, so
that notifications arrive between transactions), and its loop polls that connection's
socket with its ZeroMQ sockets. Each notification is a JSON note: the queue of a task
made ready, its run_at when it is for later, the ids of tasks that wait on others.

A connection lost loses what was sent meanwhile: `take` then says so (None), and the
daemon looks again at everything a note could have told it."""

from __future__ import annotations

import json
import logging
from typing import Any

from martinet.store.app_transaction import CHANGES

log = logging.getLogger("martinet.daemon")


class Changes:
    """A LISTEN connection on CHANGES (PostgreSQL through psycopg2, the daemon's driver)."""

    def __init__(self, dsn: dict[str, Any]) -> None:
        import psycopg2  # type: ignore[import-untyped]  # the daemon's driver ('martinet[postgres]')

        self._conn = psycopg2.connect(**dsn)
        self._conn.autocommit = True
        with self._conn.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANGES}")

    def fileno(self) -> int:
        fileno: int = self._conn.fileno()
        return fileno

    def take(self) -> list[dict[str, Any]] | None:
        """The notes that arrived (none: nothing yet), or None when the connection is lost."""
        try:
            self._conn.poll()
        except Exception as exc:  # psycopg2's OperationalError, InterfaceError: the server went away
            log.warning("the connection that hears other writers' tasks was lost (%s); reconnecting", exc)
            self.close()
            return None
        notes: list[dict[str, Any]] = []
        for notify in self._conn.notifies:
            try:
                note = json.loads(notify.payload)
            except ValueError:
                note = None
            if isinstance(note, dict):
                notes.append(note)
            else:
                log.warning("ignored a note on %s that is not ours: %.80r", CHANGES, notify.payload)
        self._conn.notifies.clear()
        return notes

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # already gone
            pass
