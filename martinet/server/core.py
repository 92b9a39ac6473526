"""The server's core: its state (connected workers, lanes, waiters, timers) and its
decisions, with no sockets (the loop, loop.py, owns those).

A turn takes what the sockets held (raw frames, per socket) and `now`, writes it in
one transaction with the turn's claims (group commit), and returns an Outbox: what
to send once committed. Its picture of the database (workers' tasks and slots,
lanes' running counts and starts) changes as the turn goes, since a claim takes
the slot an outcome of the same turn freed; if the commit fails, the core undoes
those changes exactly (Peers and Lanes keep what each change replaced, see their
rollback), so that an outcome its worker sends again frees its slot once, not twice.

The decisions live beside this module: workers.py (hello, reject, bye, a lost
worker), outcomes.py (the status socket), claims.py, timers.py (due tasks, ticks,
time limits, waits), ops.py (client requests).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import peewee

from martinet import protocol
from martinet.config import Settings, keep_seconds
from martinet.dbhealth import DbHealth, describe
from martinet.errors import BadInput, MartinetError, ProtocolError
from martinet.models import TERMINAL
from martinet.present import maybe_task_info
from martinet.protocol import Cmd
from martinet.retention import Retention
from martinet.server import claims, ops, outcomes, timers, workers
from martinet.server.events import EventHub, attempt_event
from martinet.server.lanes import RATE_LOOKBACK, Lanes, lane_settings, queue_columns, rate_of
from martinet.server.outbox import Outbox
from martinet.server.peers import Peer, Peers
from martinet.store import Store
from martinet.validate import Limits

log = logging.getLogger("martinet.daemon")

Messages = list[tuple[bytes, list[bytes]]]  # (ident, frames) as read from a socket
DB_ERRORS = (peewee.OperationalError, peewee.InterfaceError, peewee.DatabaseError)


def error(kind: str, message: str) -> dict:
    return {"type": kind, "message": message}


class Core:
    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], float], epoch: str, database_id: str
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock  # for what must be timed after the turn's `now` (a wait's why)
        self.epoch = epoch
        self.database_id = database_id
        self.limits = Limits(settings.max_payload, settings.max_name_length, settings.min_interval)
        self.peers = Peers()
        self.lanes = Lanes()
        self.retention = Retention(
            keep_seconds("keep_finished", settings.keep_finished),
            keep_seconds("keep_dead", settings.keep_dead),
            keep_events=keep_seconds("keep_events", settings.keep_events),
        )
        self.hub = EventHub()  # event subscribers, and events still to record (events.py)
        self.db_health = DbHealth()  # the database's last failure, for ping and the log
        self.dispatch_pending = True
        self.next_wakeup: float | None = None
        self.wakeup_dirty = True
        self.next_tick = 0.0
        self.rate_wakeup: float | None = None  # when a rate limit lets a waiting task start
        self.overdue_after: tuple[float, int] | None = None  # where the next overdue scan starts
        self.waiters: dict[int, list[tuple[bytes, str, float]]] = {}
        self.waiters_due = math.inf  # the earliest wait deadline (or earlier): scan only then
        self.ended_elsewhere: list[int] = []  # ended by a lost worker: their waiters are owed an answer
        self._turn_waits: list[tuple[int, tuple[bytes, str, float]]] = []  # waits added this turn

    def load_lanes(self, now: float) -> None:
        """Queue settings (the config file's win at start), task-name limits, and what
        runs and started recently, so limits hold across a restart."""
        for name, settings in getattr(self.settings, "queues", {}).items():
            self.store.save_queue(name, now, **queue_columns(settings))
        state = self.store.lanes_state(now, RATE_LOOKBACK)
        for row in state["queues"]:
            self.lanes.configure(row["name"], **lane_settings(row))
        for row in state["names"]:
            self.lanes.limit_name(row["name"], row["concurrency"], rate_of(row))
        for queue, name, count in state["running"]:
            for _ in range(count):
                self.lanes.started(queue, name, 0.0)
        for queue, name, started in state["recent"]:
            for lane in (self.lanes.queue(queue), self.lanes.names.get(name)):
                if lane is not None and lane.rate is not None:
                    lane.starts.append(started)
        for queue in state["ready"]:
            self.lanes.ready(queue)

    # ---- one turn -------------------------------------------------------------

    def turn(self, client: Messages, status: Messages, worker: Messages, now: float) -> Outbox:
        """Read what arrived, write it and the turn's claims in one transaction (group
        commit), and say what to send: replies, acks, events, and tasks."""
        out = Outbox()
        troubled = self.db_health.trouble is not None
        changes = self.store.changes() if troubled else None
        saved = self._begin()
        try:
            with self.store.atomic():
                for ident, frames in client:
                    self.on_client(ident, frames, out, now)
                if status:
                    outcomes.on_status_batch(self, status, out, now)
                for ident, frames in worker:
                    if self.heartbeat_of_known(ident, frames, now):
                        continue
                    with self.isolated(f"a message on the worker socket from {ident!r}"):
                        workers.on_worker(self, ident, frames, out, now)
                timers.run(self, out, now)
                claims.claim(self, out, now)
                out.events = self.hub.record(self.store, out.events, now)
        except DB_ERRORS as exc:
            self._rollback(saved, exc, out, now)
        except BaseException:  # a bug of ours (the loop logs it): nothing of the turn stands
            self._undo(saved)
            raise
        else:
            self.peers.commit()
            self.lanes.commit()
            # SQLite counts the rows changed: an empty commit proves nothing about a full disk.
            # Elsewhere any commit ends the trouble (no cheap count there).
            if troubled and (changes is None or self.store.changes() != changes):
                self.db_health.committed(now)
        self.answer_waiters(out)
        return out

    def _begin(self) -> tuple[Any, ...]:
        """What a failed turn puts back: the tables keep their own (begin), the rest here."""
        self.peers.begin()
        self.lanes.begin()
        self._turn_waits = []
        return (self.next_tick, self.overdue_after, self.next_wakeup, len(self.ended_elsewhere))

    def _rollback(self, saved: tuple[Any, ...], exc: Exception, out: Outbox, now: float) -> None:
        """The turn's transaction failed: its state changes are undone exactly, clients
        learn why, and workers will send again what was not acknowledged. A worker that
        said hello in the turn is asked to say it again (its welcome was not sent)."""
        why = describe(exc, self.store.db)
        self.db_health.failed(why, now)
        self.reconnect()
        out.rolled_back(
            error("StoreError", f"the daemon's database failed, so this request was not carried out: {why}")
        )
        self._undo(saved)
        again = protocol.encode(Cmd.HELLO_AGAIN, {"epoch": self.epoch})
        out.always.extend((ident, again) for ident in dict.fromkeys(out.hellos))

    def _undo(self, saved: tuple[Any, ...]) -> None:
        """The state a rolled back turn changed, as it was before the turn."""
        self.peers.rollback()
        self.lanes.rollback()
        self.next_tick, self.overdue_after, self.next_wakeup, ended = saved
        del self.ended_elsewhere[ended:]
        for task_id, wait in self._turn_waits:  # its client was told the request failed
            waits = self.waiters.get(task_id, [])
            if wait in waits:
                waits.remove(wait)
            if not waits:
                self.waiters.pop(task_id, None)
        self.hub.pending = []  # events made in the turn that was rolled back
        self.wakeup_dirty = self.dispatch_pending = True
        self.rate_wakeup = None

    def reconnect(self) -> None:
        try:
            self.store.db.close()
        except peewee.PeeweeException:
            pass
        try:
            self.store.db.connect(reuse_if_open=True)
        except peewee.PeeweeException as exc:
            log.error("database still unreachable: %s", exc)

    @contextmanager
    def isolated(self, what: str) -> Iterator[None]:
        """One message's work in a savepoint: an unexpected error drops that message only."""
        try:
            with self.store.atomic():
                yield
        except (peewee.OperationalError, peewee.InterfaceError):
            raise  # the database itself is in trouble: the whole turn fails
        except Exception:
            log.exception("dropped %s after an unexpected error", what)

    def next_deadline(self, now: float) -> float:
        """When the loop must take a turn even if nothing arrives (now: there is work to send)."""
        if self.dispatch_pending and self.peers.any_credit():
            return now
        deadlines = [self.next_tick, self.waiters_due]
        for deadline in (
            self.next_wakeup,
            self.rate_wakeup,
            self.peers.next_heartbeat(self.settings.heartbeat_interval),
        ):
            if deadline is not None:
                deadlines.append(deadline)
        catch_up = self.hub.next_turn()
        if catch_up is not None:
            deadlines.append(catch_up)
        return min(deadlines)

    def not_listening(self, gap: float) -> None:
        """The daemon did not read its sockets for `gap` seconds longer than it meant to (it
        was paused, its disk was slow, another process held the database's lock): a worker's
        silence over that time is the daemon's, not the worker's, and does not count."""
        interval = self.settings.heartbeat_interval
        if gap > interval / 4:
            self.peers.excuse(gap)
            log.log(
                logging.WARNING if gap > interval else logging.DEBUG,
                "the daemon did not read its sockets for %.2fs (paused, or held up by its database); "
                "workers' silence over that time is not held against them", gap,
            )  # fmt: skip

    _HEARTBEAT_HEAD = protocol.PREFIX + bytes([Cmd.HEARTBEAT])

    def heartbeat_of_known(self, ident: bytes, frames: list[bytes], now: float) -> bool:
        """A known worker's heartbeat, noted without decoding it or a savepoint: most of what
        idle workers send, so it must cost next to nothing (its header is not read anyway)."""
        if not frames or not frames[0].startswith(self._HEARTBEAT_HEAD):
            return False
        peer = self.peers.by_ident(ident)
        if peer is None:
            return False
        self.peers.seen(peer.worker_id, now)
        return True

    # ---- reading messages ------------------------------------------------------------

    def decode(self, sock_name: str, ident: bytes, frames: list[bytes], out: Outbox | None = None) -> Any:
        """(command, header), or (None, None) for a message dropped as malformed; with `out`
        (the client socket), a request whose id can be read gets a refusal saying why."""
        try:
            return protocol.decode(frames)
        except ProtocolError as exc:
            self.malformed(sock_name, ident, str(exc), sum(map(len, frames)), protocol.describe(exc.raw))
            if out is not None and (rid := protocol.recover_rid(frames)) is not None:
                out.replies.append(
                    (
                        ident,
                        {"rid": rid, "ok": False, "error": error("BadInput", f"unreadable request: {exc}")},
                    )
                )
            return None, None

    def malformed(
        self, sock_name: str, ident: bytes, why: str, size: int, shown: str = "",
        what: str = "dropped a malformed frame",
    ) -> None:  # fmt: skip
        """A message dropped because it could not be read: recorded as an event (at most
        events.MALFORMED_PER_SECOND a second) and logged (MALFORMED_LOGGED_PER_SECOND)."""
        peer = self.peers.by_ident(ident) if sock_name == "worker" else None
        where = ident[:16].hex() + ("..." if len(ident) > 16 else "")  # a peer may choose its own (ZMTP 1.0)
        if peer is not None:
            where += f" (worker {peer.worker_id})"
        self.hub.malformed(sock_name, where, why, size, self.clock())
        if self.hub.may_log():
            log.warning(
                "%s on the %s socket from %s: %s (%d bytes%s)",
                what, sock_name, where, why, size, f": {shown}" if shown else "",
            )  # fmt: skip

    # ---- the client socket -------------------------------------------------------------

    def on_client(self, ident: bytes, frames: list[bytes], out: Outbox, now: float) -> None:
        cmd, header = self.decode("client", ident, frames, out)
        if cmd is None:
            return
        rid = header.get("rid")
        if cmd is not Cmd.REQUEST:
            log.warning("dropped a %s command on the client socket from %r", cmd.name, ident)
            return
        op = header.get("op")
        handler = ops.OPS.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise BadInput(f"unknown request {op!r}")
            if len(frames[0]) > self.limits.max_payload:
                raise BadInput(
                    f"request is {len(frames[0])} bytes, over the limit of "
                    f"{self.limits.max_payload} (max_payload)"
                )
            with self.store.atomic():  # a savepoint: one bad request spoils no other
                reply = handler(ops.Request(self, header, now, out, ident))
        except MartinetError as exc:
            reply = {"ok": False, "error": error(type(exc).__name__, str(exc))}
        except (peewee.IntegrityError, peewee.DataError) as exc:
            reply = {"ok": False, "error": error("BadInput", f"the database refused it: {exc}")}
        except (peewee.OperationalError, peewee.InterfaceError):
            out.replies.append((ident, {"rid": rid}))  # answered with the turn's error (turn)
            raise  # the database itself is in trouble: the whole turn fails
        except Exception:  # a bug of ours must cost one request, never the daemon
            log.exception("request %r from %r failed unexpectedly", op, ident)
            reply = {
                "ok": False,
                "error": error("InternalError", "the daemon could not handle this request; see its log"),
            }
        if reply is not None:
            reply.setdefault("ok", True)
            reply["rid"] = rid
            out.replies.append((ident, reply))

    def wait(self, task_id: int, ident: bytes, rid: Any, deadline: float) -> None:
        """A client waits for the task's end (answered by answer_waiters, or at the deadline)."""
        wait = (ident, rid, deadline)
        self.waiters.setdefault(task_id, []).append(wait)
        self._turn_waits.append((task_id, wait))
        self.waiters_due = min(self.waiters_due, deadline)

    # ---- what a turn's decisions share --------------------------------------------------

    def queues_ready(self) -> None:
        """Tasks became ready somewhere (due times came, retries, lost tasks): find where."""
        for queue in self.store.ready_queues():
            self.lanes.ready(queue)

    def ended_all(self, infos: list[dict], now: float) -> list[int]:
        """Attempts that ended without a word from their worker: free their lanes."""
        for info in infos:
            self.lanes.ended(info["queue"], info["name"])
            self.peers.release(info["id"], now)
            settled = info["dependents"]
            if info["status"] in TERMINAL:  # dead: its waiters, and those of what waited on it, get an answer
                self.ended_elsewhere.extend([info["id"], *settled["cancelled"]])
            self.lanes.ready(info["queue"])
            self.hub.pending.append(attempt_event(info))  # recorded with the turn (or the next)
            self.cancelled_events(self.hub.pending, settled["cancelled"])
        return [info["id"] for info in infos]

    def cancelled_events(self, events: list, task_ids: list[int]) -> None:
        """Events for tasks cancelled without running: revoked, or a task they waited on failed."""
        for task_id in task_ids:
            item = maybe_task_info(self.store.get_task(task_id))
            if item is not None:
                events.append(
                    {
                        "event": "cancelled", "id": task_id, "name": item["name"], "queue": item["queue"],
                        "attempt": item["attempt"], "status": item["status"], "outcome": None,
                        "reason": item["reason"],
                    }
                )  # fmt: skip

    # ---- after the commit ----------------------------------------------------------

    def answer_waiters(self, out: Outbox) -> None:
        """Clients waiting for tasks that ended get their answer (after the turn's events)."""
        ended, self.ended_elsewhere = [*out.ended, *self.ended_elsewhere], []
        for task_id in ended:
            waits = self.waiters.pop(task_id, None)
            if not waits:
                continue
            item = maybe_task_info(self.store.get_task(task_id))
            if item is None or item["status"] not in TERMINAL:  # its turn was rolled back: keep waiting
                self.waiters[task_id] = waits
                continue
            for ident, rid, _ in waits:
                out.answers.append((ident, {"rid": rid, "ok": True, "done": True, "item": item}))

    def task_messages(self, batches: list[tuple[Peer, list[dict]]], sent_at: float, now: float) -> None:
        """The claimed rows become TASK messages as they leave: a start counts from when
        it was sent, and a task leased ahead of its run_at says when to start (start_in)."""
        self.lanes.restamp(now, sent_at)
        for _peer, rows in batches:
            for row in rows:
                run_at = row.pop("run_at", None)
                if run_at is not None and run_at > sent_at:
                    row["start_in"] = run_at - sent_at

    def undelivered(self, peer: Peer, rows: list[dict], now: float) -> None:
        """Tasks claimed for a connection that is gone (its worker reconnected meanwhile, as
        workers do while the daemon is paused, or it died): they never left, so they go back
        to the queue with no attempt spent. The worker is not judged by it: it gets nothing
        more on that connection, and its next hello, or its silence, decides the rest."""
        with self.store.atomic():
            for row in rows:
                lane = self.store.unclaim(row["id"], row["attempt"], now)
                self.peers.release(row["id"], now)
                if lane is not None:
                    self.lanes.ended(*lane)
                    self.lanes.ready(lane[0])
        self.peers.unreachable(peer)
        self.dispatch_pending = True
        log.warning(
            "worker %s could not be reached: tasks %s back to the queue, unspent",
            peer.worker_id, [row["id"] for row in rows],
        )  # fmt: skip
