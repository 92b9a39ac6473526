"""The worker's own journal: the outcomes the daemon has not acknowledged yet.

A worker keeps each outcome until the daemon says it is committed, but before
this journal it kept them in memory only: a worker killed with kill -9 right
after a handler returned lost the result, and the handler ran again. The
journal is a small SQLite file, written by the worker's loop alone, holding
every result or error not yet acknowledged (as sent), and the worker's id.

A worker started again on the same journal takes its worker id from it, says
in its hello that those attempts are its own (the daemon gives them back,
even if it had declared the worker gone) and sends the outcomes again. The
tasks it held without an outcome need no record here: the daemon knows which
tasks run on that worker id, and ends those the hello does not report `lost`
at once (counted by its poison rule), then runs them again.

An outcome is committed before it is sent (write-ahead): one transaction for
the outcomes of one pass of the worker loop, never one per outcome. Deleting
acknowledged ones is not urgent (one sent again is fenced and acked again), so
acks ride along with the next commit, or are written within a second. WAL with
``synchronous=NORMAL``: a commit survives the process dying (the point of the
journal); a power loss may lose the last few commits, which costs a handler
run again, never a wrong result. The file is locked (``flock`` on
``PATH.lock``) so that two workers never share it.

A journal belongs to one database. Every outcome is kept with the identity of
the database its task came from (models.DatabaseIdentity, which the daemon
gives in its welcome; not its epoch, which changes at each start), and is
only ever sent to, or reported in a hello to, a daemon of that database:
daemons sharing one database share its identity, so any of them may take it.
Task ids and attempt numbers alone cannot tell databases apart (every
database has a task 1, attempt 1), and fencing could not stop an outcome
that was for another one. An outcome for another database is kept, not sent
(the worker says so in its log, with this file's path) until the worker
talks to a daemon of that database again. The default journals are kept per
daemon address, so that the workers of two daemons on one host never even
share a file.

Format 1 journals (before identities) are upgraded in place; their outcomes
do not say which database they were for, so they are kept and never sent
(UNKNOWN): sent to a daemon of another database, they would end its tasks
with results that are not theirs, whereas not sent, their tasks only run
again when their leases expire (at-least-once allows it).

This is worker-local state, hence the stdlib ``sqlite3`` and not peewee.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
from pathlib import Path
from typing import NamedTuple

from martinet.errors import JournalError

try:  # POSIX: flock; Windows: msvcrt's byte-range lock (either is released with its descriptor)
    import fcntl
except ImportError:  # tested with fcntl hidden (tests/unit/test_portable.py)
    fcntl = None  # type: ignore[assignment]
from martinet.files import create_private

FORMAT = "2"  # the journal's schema version, kept in its meta table; 2: outcomes keep their database
UNKNOWN = ""  # the database of an outcome that does not say (format 1, or a daemon without identity)
ACK_DELAY = 1.0  # seconds acknowledged outcomes may stay in the file: resent, they are harmless
MAX_SLOTS = 1000  # default journals per host without --worker-id: far more workers than one host runs

META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
OUTCOME = """CREATE TABLE {name} (
    database TEXT NOT NULL, id INTEGER NOT NULL, attempt INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (database, id, attempt)
) WITHOUT ROWID"""


class Kept(NamedTuple):
    """An outcome the journal keeps: its body as it was sent (messages.Outcome.body), and
    the database, task and attempt it is for (its key)."""

    database: str
    task_id: int
    attempt: int
    body: bytes


def state_dir() -> Path:
    """Where default journals live: $MARTINET_STATE_DIR, else $XDG_STATE_HOME/martinet,
    else ~/.local/state/martinet."""
    if os.environ.get("MARTINET_STATE_DIR"):
        return Path(os.environ["MARTINET_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "martinet"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200]


def _file_name(worker_id: str) -> str:
    return "worker-" + _safe(worker_id) + ".journal"


class Journal:
    """One worker's journal file, locked for as long as it is open.

    Changes are buffered by `ended` and `acked` and written by `commit`, in one
    transaction.
    """

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._ended: list[tuple[str, int, int, bytes]] = []
        self._acked: list[tuple[str, int, int]] = []
        self._acked_since = 0.0  # when the oldest buffered ack came
        create_private(path)  # outcomes (results) and the worker's session
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(META)
            found = self.meta("format")
            if found is None:
                self._create()
            elif found == "1":
                self._upgrade_from_1()
            elif found != FORMAT:
                raise JournalError(
                    f"journal {path} has format {found}, this martinet reads format {FORMAT}; "
                    "start this worker with another --journal (or --no-journal)"
                )
        except sqlite3.DatabaseError as exc:
            self._release()
            raise JournalError(
                f"journal {path} cannot be read ({exc}); move it aside (its results are then "
                "lost, and their tasks run again), or start with another --journal"
            ) from None

    def _create(self) -> None:
        self._db.execute("BEGIN")
        self._db.execute(OUTCOME.format(name="outcome"))
        self._set_meta("format", FORMAT)
        self._db.execute("COMMIT")

    def _upgrade_from_1(self) -> None:
        """Format 1 to 2, in one transaction: the outcomes it holds are for UNKNOWN."""
        db = self._db
        db.execute("BEGIN")
        db.execute(OUTCOME.format(name="outcome_v2"))
        db.execute("INSERT INTO outcome_v2 SELECT ?, id, attempt, body FROM outcome", (UNKNOWN,))
        db.execute("DROP TABLE outcome")
        db.execute("ALTER TABLE outcome_v2 RENAME TO outcome")
        self._set_meta("format", FORMAT)
        db.execute("COMMIT")

    # ---- opening ----------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> Journal:
        """Open (or create) the journal at `path`; JournalError if another worker has it."""
        path = Path(path)
        lock_fd = _lock(path)
        if lock_fd is None:
            raise JournalError(f"journal {path} is in use by another worker{_holder(path)}")
        return cls(path, lock_fd)

    @classmethod
    def open_default(cls, worker_id: str | None, daemon: str) -> Journal:
        """The default journal, in a folder of the state directory for the daemon's
        address `daemon` ("host:port", its worker port): worker-ID.journal for a named
        worker; without a name, the first journal of this host there that no running
        worker holds."""
        directory = state_dir() / _safe(daemon.replace(":", "-"))
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # journals hold task arguments
        except OSError as exc:
            raise JournalError(
                f"cannot create the state directory {directory} ({exc}); set MARTINET_STATE_DIR, "
                "or pass --journal PATH or --no-journal"
            ) from None
        if worker_id is not None:
            return cls.open(directory / _file_name(worker_id))
        host = socket.gethostname()
        for n in range(1, MAX_SLOTS + 1):
            path = directory / _file_name(f"{host}-{n}")
            lock_fd = _lock(path)
            if lock_fd is not None:
                return cls(path, lock_fd)
        raise JournalError(f"all {MAX_SLOTS} default journals in {directory} are in use; pass --journal PATH")

    # ---- identity and recovery --------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def claim_worker_id(self, wanted: str | None, fresh: str) -> str:
        """The worker id to run as: the journal's own when it has one. A different
        `wanted` id is refused while the journal still holds results of the old one."""
        stored = self.meta("worker_id")
        if stored is not None and wanted in (None, stored):
            return stored
        if stored is not None and not self.is_empty():
            raise JournalError(
                f"journal {self.path} holds results of worker {stored!r}; start it with "
                f"--worker-id {stored} (or remove the file: its results are then lost, and "
                "their tasks run again)"
            )
        worker_id = wanted or fresh
        self._set_meta("worker_id", worker_id)
        return worker_id

    def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM outcome LIMIT 1").fetchone() is None

    def recover(self) -> list[Kept]:
        """The outcomes a previous run left unacknowledged."""
        rows = self._db.execute("SELECT database, id, attempt, body FROM outcome ORDER BY database, id")
        return [Kept(d, i, a, bytes(b)) for d, i, a, b in rows.fetchall()]

    def database(self) -> str | None:
        """The identity of the database whose daemon last welcomed this journal's worker."""
        return self.meta("database")

    def session(self) -> str | None:
        """The session the daemon's last welcome gave this journal's worker: a restarted
        worker proves with it that it is the same one (see server/workers.py)."""
        return self.meta("session")

    def tie(self, database: str, session: str | None = None) -> None:
        """Note the database of the daemon that welcomed the worker, and the session it
        gave (written at once)."""
        try:
            if self.meta("database") != database:
                self._set_meta("database", database)
            if session is not None and self.meta("session") != session:
                self._set_meta("session", session)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write the journal {self.path}: {exc}") from None

    # ---- buffered changes, written by commit() ----------------------------------

    def ended(self, database: str, task_id: int, attempt: int, body: bytes) -> None:
        """A handler ended with this outcome, for a task of `database`: commit before sending it."""
        self._ended.append((database, task_id, attempt, body))

    def acked(self, database: str, task_id: int, attempt: int, now: float) -> None:
        """The daemon committed this outcome: it may go, with the next commit."""
        if not self._acked:
            self._acked_since = now
        self._acked.append((database, task_id, attempt))

    def commit(self, now: float, force: bool = False) -> None:
        """Write the buffered outcomes, and the acks with them, in one transaction.
        Acks alone wait (for `force`, or ACK_DELAY) to ride along with outcomes."""
        if not self._ended and not (self._acked and (force or now - self._acked_since >= ACK_DELAY)):
            return
        db = self._db
        try:
            db.execute("BEGIN")
            if self._ended:
                db.executemany(
                    "INSERT OR REPLACE INTO outcome (database, id, attempt, body) VALUES (?, ?, ?, ?)",
                    self._ended,
                )
            if self._acked:
                db.executemany(
                    "DELETE FROM outcome WHERE database = ? AND id = ? AND attempt = ?", self._acked
                )
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            try:
                if db.in_transaction:  # after SQLITE_FULL, SQLite may have rolled back already
                    db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the write's own error is the one to report
            # What was buffered stays buffered: the next commit writes it.
            raise JournalError(f"cannot write the journal {self.path}: {exc}") from None
        self._ended, self._acked = [], []

    def close(self) -> None:
        """Commit what is buffered, close the file and release its lock."""
        try:
            self.commit(0.0, force=True)
        finally:
            self._db.close()
            self._release()

    def _release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1


def _lock(path: Path) -> int | None:
    """Take PATH.lock (flock, exclusive) and write our pid in it; None if someone holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise JournalError(f"cannot open {lock_path} ({exc}); pass another --journal PATH") from None
    if not _try_lock(fd):
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _try_lock(fd: int) -> bool:
    """An exclusive lock on the open file `fd`, without waiting: False if another holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    import msvcrt

    try:  # its first byte, which the pid written after it does not need
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        pid = path.with_name(path.name + ".lock").read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
