"""Opening a database by URL: the driver each backend needs, SQLite's tuning, the
schema brought to this version, and a thread that checkpoints SQLite's log."""

from __future__ import annotations

import logging
import sqlite3
import threading
from urllib.parse import parse_qs, unquote, urlparse

import peewee
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url

from martinet import migrations
from martinet.errors import StoreError
from martinet.files import create_private
from martinet.logs import mask
from martinet.store.listen import Changes
from martinet.store.pg import PgDatabase

log = logging.getLogger("martinet.store")

SCHEMES = ("sqlite", "postgres", "postgresql", "mysql", "mariadb")
# The driver each server backend needs, and the extra that installs it.
DRIVERS = {
    "postgres": ("psycopg2", "postgres"),
    "postgresql": ("psycopg2", "postgres"),
    "mysql": ("pymysql", "mysql"),
    "mariadb": ("pymysql", "mysql"),
}
# Pages of write-ahead log after which a commit checkpoints it itself (SQLite's default
# is 1,000). A checkpoint syncs the disk and takes milliseconds: done by the committing
# thread, it made one commit in a hundred of the daemon's loop take 5 to 25 ms, most of
# the average cost of a commit. The daemon checkpoints from a thread of its own instead.
WAL_BACKSTOP_PAGES = 20_000


def open_database(url: str) -> peewee.Database:
    """Connect by URL (sqlite:///path.db, postgresql://..., mysql://...) and bring the
    schema to this version: a new database gets the current one, an older one is
    migrated (martinet/migrations.py), a newer one is refused (SchemaTooNew).
    Nothing global points at it: a Store made on it is its only user. Raises
    StoreError saying what to change when the URL, the driver or the server is wrong."""
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme not in SCHEMES:
        raise StoreError(
            f"cannot use database URL {redact(url)}: martinet knows sqlite:///file.db, "
            f"postgresql://user@host/db and mysql://user@host/db"
        )
    _require_driver(scheme)
    db: peewee.Database
    try:
        if scheme == "sqlite":
            path = url.split(":///", 1)[1] if ":///" in url else ""
            path, _, query = path.partition("?")
            if not path:
                raise StoreError(f"SQLite URL {url!r} names no file; use sqlite:///path/to/file.db")
            if path != ":memory:" and not path.startswith("file:"):  # (no file, or SQLite's own URI)
                create_private(path)
            db = peewee.SqliteDatabase(
                path,
                lock_type="IMMEDIATE",  # one writer; no read-to-write upgrade deadlocks
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": _sqlite_synchronous(url, query),
                    "busy_timeout": 5000,
                    "foreign_keys": 1,
                    # A backstop: the daemon's WalCheckpointer keeps the log far shorter.
                    "wal_autocheckpoint": WAL_BACKSTOP_PAGES,
                    "journal_size_limit": 64 * 1024 * 1024,  # a long log is cut back after a checkpoint
                    # Statement journals (the undo of one multi-row statement inside a transaction)
                    # stay in memory: spilled to temporary files, they cost a write call per page.
                    "temp_store": "memory",
                },
            )
        elif scheme in ("mysql", "mariadb"):
            # TEXT holds 64 KiB on MySQL; results and args may be larger.
            # (peewee reads field_types when the Database is made: pass them in, not after.)
            db = connect_url(
                url.replace("mariadb://", "mysql://", 1), charset="utf8mb4", field_types={"TEXT": "LONGTEXT"}
            )
        elif "+" not in urlparse(url).scheme:  # PostgreSQL, in fewer round trips (pg.py)
            db = PgDatabase(**parse_url(url))
        else:  # postgresql+pool:// and the like: as peewee makes it
            db = connect_url(url)
        db.connect(reuse_if_open=True)
        migrations.upgrade(db)  # a new database gets the current schema; an older one is migrated
    # (from None: the driver's error, which may quote the URL or its password, stays out of
    # the traceback; its text is told with the password masked)
    except peewee.PeeweeException as exc:
        raise StoreError(f"cannot open database {redact(url)}: {without_password(exc, url)}") from None
    except ValueError as exc:
        raise StoreError(f"cannot read database URL {redact(url)}: {without_password(exc, url)}") from None
    except ImportError as exc:
        raise StoreError(f"cannot open database {redact(url)}: {without_password(exc, url)}") from None
    return db


def listen_changes(url: str) -> Changes | None:
    """What other writers commit to the database at `url`, heard as it happens (listen.py):
    PostgreSQL reached directly only. Through `postgresql+pool://` (a transaction-mode
    pooler such as PgBouncer keeps no session to LISTEN on) and on SQLite and MySQL, None.
    Raises StoreError when the server cannot be reached."""
    if urlparse(url).scheme not in ("postgres", "postgresql"):
        return None
    try:
        return Changes(parse_url(url))
    except Exception as exc:  # psycopg2's errors: the server, the address or the login
        raise StoreError(f"cannot listen on database {redact(url)}: {without_password(exc, url)}") from None


def _require_driver(scheme: str) -> None:
    """StoreError naming the extra to install when the backend's driver is missing
    (peewee itself only says 'driver not installed', and only once it connects)."""
    if scheme not in DRIVERS:
        return
    module, extra = DRIVERS[scheme]
    try:
        __import__(module)
    except ImportError:
        raise StoreError(
            f"the {scheme} driver ({module}) is not installed: pip install 'martinet[{extra}]'"
        ) from None


class WalCheckpointer:
    """Copies a SQLite database's write-ahead log back into the database file, from a
    thread and connection of its own, so that the daemon's loop never waits for a
    checkpoint's disk syncs (SQLite releases the GIL while it works).

    A PASSIVE checkpoint never blocks the writer: it copies what no reader still needs;
    once all of it is copied, the next commit starts the log again from its beginning.
    Durability is unchanged: what a commit guarantees is decided by `synchronous`.
    """

    INTERVAL = 0.1  # seconds between checkpoints: about a few hundred commits' worth of log

    def __init__(self, db: peewee.Database) -> None:
        self.path = db.database
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="martinet-checkpoint", daemon=True)

    def start(self) -> WalCheckpointer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("cannot open %s to checkpoint it; commits will do it: %s", self.path, exc)
            return
        try:
            while not self._stop.wait(self.INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # busy or gone for a moment: try again next time
                    log.debug("checkpoint of %s did not run: %s", self.path, exc)
        finally:
            conn.close()


def _sqlite_synchronous(url: str, query: str) -> str:
    """`?synchronous=full` in a SQLite URL: every commit reaches the disk before it is
    acknowledged, so a power loss loses nothing acknowledged either. The default,
    normal, in WAL mode loses nothing when a process crashes or is killed; a power
    loss or OS crash may lose the last commits (never corrupts the database)."""
    options = parse_qs(query)
    unknown = set(options) - {"synchronous"}
    value = options.get("synchronous", ["normal"])[-1].lower()
    if unknown or value not in ("normal", "full", "extra"):
        raise StoreError(
            f"SQLite URL {redact(url)}: the only option is ?synchronous=normal|full|extra (got {query!r})"
        )
    return value


def redact(url: str) -> str:
    """The URL with its password, if any, as ***: fit for logs and errors."""
    try:
        password = urlparse(url).password
    except ValueError:  # (a port that is no number, say): mask what looks like one
        return mask(url)
    if password:
        return url.replace(f":{password}@", ":***@")
    return url


def without_password(exc: BaseException, url: str) -> str:
    """An error's text with the password of `url` masked wherever it appears (a driver's
    message may quote the connection string it was given), and anything else that
    looks like one (logs.mask)."""
    text = str(exc)
    try:
        password = urlparse(url).password
    except ValueError:
        password = None
    if password:
        for form in {password, unquote(password)}:
            text = text.replace(form, "***")
    return mask(text)
