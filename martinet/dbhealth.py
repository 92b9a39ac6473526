"""The daemon's database trouble: its cause in plain words, since when, and a bounded log.

When a turn's transaction fails, every client whose request was in it is told why,
`martinet ping` shows the last failure until a commit succeeds again, and the log
says it in one line when it starts, at most once a minute while it lasts, and once
more when it ends: a full disk fails every turn, and a traceback per turn would fill
the disk that holds the log as well.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

import peewee

from martinet.present import iso

log = logging.getLogger(__name__)

# Seconds between reminders in the log while the same failure lasts: often enough to be
# seen by whoever tails the log, rare enough that a failing turn every millisecond is
# one line a minute.
REMIND_EVERY = 60.0

PG_DISK_FULL = "53100"  # SQLSTATE disk_full
MYSQL_FULL = (1021, 1114)  # ER_DISK_FULL, ER_RECORD_FILE_FULL ("The table 't' is full")
NO_SPACE = ("no space left on device", "disk full", "errno: 28", "error 28 from")


def describe(exc: BaseException, db: peewee.Database | None = None) -> str:
    """A database error as a sentence that names its cause. A full disk is said plainly
    on every backend (by the driver's error code where it has one, else by its text);
    anything else is the driver's own message."""
    driver = getattr(exc, "orig", exc)  # the driver's own error, which peewee wraps
    text = str(exc)
    lowered = text.lower()
    code = getattr(driver, "sqlite_errorcode", None)
    if (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "database or disk is full" in lowered:
        where = f"holding {db.database} " if isinstance(db, peewee.SqliteDatabase) else ""
        return f"the disk {where}is full (SQLITE_FULL)"
    if getattr(driver, "pgcode", None) == PG_DISK_FULL:
        return f"the PostgreSQL server's disk is full (disk_full): {text}"
    mysql_code = driver.args[0] if isinstance(getattr(driver, "args", None), tuple) and driver.args else None
    if mysql_code in MYSQL_FULL:
        return f"the MySQL server's disk or table space is full (error {mysql_code}): {text}"
    if any(words in lowered for words in NO_SPACE):
        return f"the database's disk is full: {text}"
    return f"database error: {text}"


@dataclass
class Trouble:
    """A failure that lasts: what it is, when it began, how many turns it has cost."""

    message: str
    since: float
    failures: int = 1
    logged_at: float = 0.0
    logged_failures: int = 1

    def report(self) -> dict:
        return {"error": self.message, "since": iso(self.since), "failures": self.failures}


class DbHealth:
    """What the daemon knows of its database's health (pure: times come in as `now`)."""

    def __init__(self) -> None:
        self.trouble: Trouble | None = None

    def failed(self, message: str, now: float) -> None:
        """A turn failed with this error (describe()'s sentence): nothing of it was committed."""
        t = self.trouble
        if t is None or t.message != message:
            self.trouble = Trouble(message, now, logged_at=now)
            log.error(
                "database: %s; nothing from this turn was committed (clients are told, workers send "
                "again); while it lasts, said again every %gs at most",
                message, REMIND_EVERY,
            )  # fmt: skip
            return
        t.failures += 1
        if now - t.logged_at >= REMIND_EVERY:
            log.error(
                "database: still failing since %s, %d turn(s) lost in all (%d since the last report): %s",
                iso(t.since), t.failures, t.failures - t.logged_failures, message,
            )  # fmt: skip
            t.logged_at, t.logged_failures = now, t.failures

    def committed(self, now: float) -> None:
        """A turn that wrote something committed: the trouble, if any, is over."""
        t = self.trouble
        if t is not None:
            self.trouble = None
            log.warning(
                "database: commits succeed again, after %d failed turn(s) since %s (%s)",
                t.failures, iso(t.since), t.message,
            )  # fmt: skip

    def report(self) -> dict | None:
        """For `martinet ping`: the failure still lasting, or None."""
        return None if self.trouble is None else self.trouble.report()
