"""This daemon among the daemons that use its database (store/daemons.py): its row,
written at start, beaten every tick and closed at stop; the others' rows, read every
tick (look_around: their timers, and once one stops or goes silent, its ready tasks
and its leases); `martinet daemons`.

SQLite serves one daemon: a second one started on the same file is refused, naming
the first. A row whose daemon did not stop is still serving while its heartbeat is
fresh, unless its process is gone from this very host (a kill -9 just before a
restart): that one is marked stopped and the new daemon starts."""

from __future__ import annotations

import logging
import os
import socket
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import peewee

from martinet.errors import MartinetError
from martinet.present import iso
from martinet.server import elsewhere
from martinet.server.events import attempt_event
from martinet.server.outbox import Outbox
from martinet.server.state import Request, State
from martinet.states import TERMINAL

log = logging.getLogger("martinet.daemon")

SILENT_AFTER = 3  # heartbeat intervals without a beat after which a daemon is silent


def register(core: State, address: str, now: float) -> None:
    """Write this daemon's row; on SQLite, refuse to start when another daemon serves it."""
    store, host = core.store, socket.gethostname()
    if isinstance(store.db, peewee.SqliteDatabase):
        for row in store.daemons():
            if state(core, row, now) != "serving":
                continue
            if row["host"] == host and not _alive(row["pid"], row["id"]):
                store.daemon_stopped(row["id"], now)  # killed without stopping: gone
                log.warning(
                    "daemon %s (pid %s) did not stop cleanly; its row is closed", row["id"], row["pid"]
                )
                continue
            raise MartinetError(
                f"another martinet serve (pid {row['pid']} on {row['host']}, serving {row['address']} "
                f"since {iso(row['started_at'])}) is using this SQLite database: SQLite serves one "
                "daemon; stop that one first, or use PostgreSQL for several"
            )
    try:
        version = package_version("martinet")
    except PackageNotFoundError:  # run from a source tree
        version = "unknown"
    row = {"id": core.epoch, "host": host, "pid": os.getpid(), "address": address, "version": version}
    store.daemon_started(row, now)
    _HERE.add(core.epoch)


def look_around(core: State, out: Outbox, now: float) -> None:
    """Each tick: this daemon's beat, and the other daemons on the database. While there
    are others, what they write may be due sooner than this daemon knows (a schedule, a
    delayed task): its next wakeup is read again, at most a tick late. One that stopped
    or went silent since leaves its ready tasks to the rest (every queue is looked at),
    and the attempts it leased end as lost (Store.release_daemon) once its workers had
    as long again to move to another daemon, without waiting for the leases to run out."""
    if core.db_health.trouble is None:  # a beat's small write must not hide a full disk
        core.store.daemon_beat(core.epoch, now)
    serving = {
        row["id"]
        for row in core.store.daemons()
        if row["id"] != core.epoch and state(core, row, now) == "serving"
    }
    if serving:
        core.wakeup_dirty = True
        if core.peers.any_credit():  # the others' ready tasks, should a note have been missed
            if core.store.is_postgres:  # (notes name the queues: elsewhere.tell)
                core.lanes.ready()
            else:  # MySQL has no notes: the queues are looked for, while a worker has room
                core.queues_ready()
            core.dispatch_pending = True
    # Events: while others record them too, live subscribers follow the table (events.py),
    # read at least each tick; the others hear that this daemon's clients watch.
    foreign = bool(serving) and core.store.is_postgres
    if foreign or core.hub.foreign:  # (and once more after the last other one went)
        core.hub.stale = True
    core.hub.foreign = foreign
    if foreign and core.hub.subscribers:
        elsewhere.watch(core)
    gone = core.other_daemons - serving
    if gone:
        log.warning("daemon(s) %s no longer serve: their ready tasks are ours too", ", ".join(sorted(gone)))
        core.queues_ready()
        core.wakeup_dirty = core.dispatch_pending = True
        # Their workers move to another daemon within as long again (the same liveness)
        # and it adopts what they still run: the leases left after that were lost.
        wait = SILENT_AFTER * core.settings.heartbeat_interval
        core.leases_to_end.update({daemon_id: now + wait for daemon_id in gone})
    for daemon_id, at in sorted(core.leases_to_end.items()):
        if now >= at and daemon_id not in serving:
            del core.leases_to_end[daemon_id]
            lost = core.store.release_daemon(daemon_id, now)
            if lost:
                log.warning(
                    "tasks %s leased by daemon %s were lost with it", [i["id"] for i in lost], daemon_id
                )
            for info in lost:  # (not this daemon's lanes: their slots were never counted here)
                out.events.append(attempt_event(info))
                core.cancelled_events(out.events, info["dependents"]["cancelled"])
                if info["status"] in TERMINAL:
                    out.ended.extend([info["id"], *info["dependents"]["cancelled"]])
            core.wakeup_dirty = core.dispatch_pending = True
    core.other_daemons = serving


def stopped(core: State, now: float) -> None:
    core.store.daemon_stopped(core.epoch, now)
    _HERE.discard(core.epoch)


def state(core: State, row: dict[str, Any], now: float) -> str:
    """serving, silent (no heartbeat for SILENT_AFTER intervals) or stopped."""
    if row["stopped_at"] is not None:
        return "stopped"
    return "silent" if row["beat_at"] < now - SILENT_AFTER * core.settings.heartbeat_interval else "serving"


def daemons(r: Request) -> dict[str, Any] | None:
    """The `daemons` request: every daemon's row, with its state, this one marked."""
    core, now = r.core, r.now
    items = []
    for row in core.store.daemons():
        times = {key: iso(row[key]) for key in ("started_at", "beat_at", "stopped_at")}
        items.append({**row, **times, "state": state(core, row, now), "this": row["id"] == core.epoch})
    return {"items": items}


def _alive(pid: int, daemon_id: str) -> bool:
    """Whether the daemon of a row written on this host may still run: its process is
    there, and is not this one (a restart that got the same pid, as pid 1 in a
    container does) unless that daemon runs in this process (an embedded one)."""
    if pid == os.getpid():
        return daemon_id in _HERE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a process killed but not reaped yet (a zombie) runs no more
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc here
        return True


_HERE: set[str] = set()  # the daemons running in this process, by id
