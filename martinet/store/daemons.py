"""The daemons that use the database, a row a start (models.DaemonRow): where clients
reach each one, and its heartbeat, so that `martinet daemons` lists them and a daemon
starting on SQLite can tell that another one already serves the file."""

from __future__ import annotations

import json
from typing import Any

import peewee

from martinet.store.app_transaction import CHANGES
from martinet.store.pg import PgDatabase
from martinet.store.sql import SqlKit

KEEP_STOPPED = 7 * 86400.0  # seconds a stopped (or long silent) daemon's row is kept


class Daemons(SqlKit):
    def daemon_started(self, row: dict[str, Any], now: float) -> None:
        """This daemon's row (models.DaemonRow's columns but its times); rows of daemons
        stopped or silent for over KEEP_STOPPED go."""
        DaemonRow = self.DaemonRow
        DaemonRow.delete().where(DaemonRow.beat_at < now - KEEP_STOPPED).execute()
        DaemonRow.insert(started_at=now, beat_at=now, **row).execute()

    def daemon_beat(self, daemon_id: str, now: float) -> None:
        """(On PostgreSQL sent with the next statement: no count is read.)"""
        self._write_later("UPDATE daemon SET beat_at = ? WHERE id = ?", (now, daemon_id))

    def daemon_stopped(self, daemon_id: str, now: float) -> None:
        """A daemon stopped (or was found dead: its process is gone)."""
        DaemonRow = self.DaemonRow
        DaemonRow.update(stopped_at=now).where(
            DaemonRow.id == daemon_id, DaemonRow.stopped_at.is_null()
        ).execute()

    def daemons(self) -> list[dict[str, Any]]:
        """Every daemon's row, the latest started first."""
        DaemonRow = self.DaemonRow
        rows: peewee.BaseQuery = (
            DaemonRow.select().order_by(DaemonRow.started_at.desc(), DaemonRow.id).dicts()
        )
        return list(rows)  # (dicts: peewee's stubs say a query yields models)

    def announce(self, note: dict[str, Any]) -> None:
        """A note to the other daemons (listen.py), delivered at this transaction's commit:
        on PostgreSQL, a NOTIFY that goes with the COMMIT (no round trip of its own);
        elsewhere nothing (no LISTEN there: the others read the table each tick)."""
        payload = json.dumps(note)
        if isinstance(self.db, PgDatabase):
            self.db.defer("SELECT pg_notify(%s, %s)", (CHANGES, payload))
        elif self.is_postgres:
            self._exec("SELECT pg_notify(?, ?)", (CHANGES, payload), cache=False)
