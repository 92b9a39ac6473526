"""The event loop of `martinet serve`: three ROUTER sockets, the store, the worker table.

One thread owns everything here. Each turn of the loop reads what the sockets
hold, writes it in one transaction (group commit), and only then sends the
replies, acknowledgements and events that depend on it; then it leases due
tasks to workers with credit (claim, commit, then send).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import peewee
import zmq

from martinet import protocol
from martinet.client_ops import ClientOps
from martinet.config import Settings, keep_seconds
from martinet.dbhealth import DbHealth, describe
from martinet.errors import BadInput, MartinetError, ProtocolError
from martinet.events import EventHub, attempt_event
from martinet.lanes import RATE_LOOKBACK, Lanes, lane_settings, queue_columns, rate_of
from martinet.models import LEASED, QUEUED, STALLED, TERMINAL
from martinet.peers import Peers
from martinet.present import maybe_task_info
from martinet.protocol import Cmd
from martinet.retention import Retention
from martinet.retry import RetryPolicy
from martinet.store import Outcome, Store, WalCheckpointer, open_database, redact
from martinet.validate import (
    MAX_ERROR_MESSAGE,
    MAX_TRACEBACK,
    Limits,
    clean_tail,
    clean_text,
    finite,
    is_id,
    is_rate,
    is_worker_id,
)

log = logging.getLogger(__name__)

# A delayed task (or a retry) is queued and leased this long before it is due, so that
# the turn that claims it and the trip to the worker are over by then; the worker holds
# it and starts it on time (the TASK row's start_in). Its thread waits meanwhile.
TIMER_LEAD = 0.02
DRAIN_LIMIT = 2000  # messages read from one socket per turn: bounds a turn's latency
# Claim queries in one turn at most, whatever the state of limits and queues: a turn that
# reaches it answers its sockets and goes on claiming in the next one.
CLAIMS_PER_TURN = 200
MAX_PEERS = 10_000  # connected workers at most: a flood of hellos cannot grow memory without bound
# Tasks a hello may say its worker holds (running, or with an unacknowledged outcome): a
# worker's outbox may hold more than its capacity after an outage, so the list is not bound
# by that; but the daemon readopts no more than the capacity (Daemon._on_hello): outcomes
# it committed already (their acks were lost) are not readopted and take no room.
MAX_HELD = 10_000
# Running tasks checked against their time limit per tick (Daemon._time_limits): a bounded
# batch of writes, like retention's; the next tick goes on from where this one stopped.
OVERDUE_BATCH = 500


@dataclass
class Outbox:
    """What a turn will send once its transaction is committed."""

    replies: list[tuple[bytes, dict]] = field(default_factory=list)  # client ident, header
    acks: dict[bytes, list[list[int]]] = field(default_factory=dict)  # status ident: [[id, attempt], ...]
    events: list = field(default_factory=list)  # dicts; once recorded, (event id, body)
    ended: list[int] = field(default_factory=list)  # task ids whose waiters can be answered
    tasks: list[tuple[Any, list[dict]]] = field(default_factory=list)  # claimed: (peer, rows) to send


class Daemon(ClientOps):
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        port_option: str = "--{role}-port",
    ) -> None:
        self.settings = settings
        # How the caller names a port's setting in a port clash: a CLI flag, a keyword argument.
        self.port_option = port_option
        self.clock = clock
        self.limits = Limits(settings.max_payload, settings.max_name_length, settings.min_interval)
        self.epoch = secrets.token_hex(4)  # changes at each start; the database's identity does not
        self.database_id = ""  # the database's identity (models.DatabaseIdentity), read by open()
        self.peers = Peers()
        self.lanes = Lanes()
        self.retention = Retention(
            keep_seconds("keep_finished", settings.keep_finished),
            keep_seconds("keep_dead", settings.keep_dead),
            keep_events=keep_seconds("keep_events", settings.keep_events),
        )
        self.store: Store | None = None
        self._checkpointer: WalCheckpointer | None = None
        self.ctx: zmq.Context | None = None
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._dispatch_pending = True
        self._next_wakeup: float | None = None
        self._wakeup_dirty = True
        self._next_tick = 0.0
        self._rate_wakeup: float | None = None  # when a rate limit lets a waiting task start
        self._overdue_after: tuple[float, int] | None = None  # where the next overdue scan starts
        self._cancels: list[tuple[bytes, int]] = []  # (worker ident, task id): attempts timed out
        self._waiters: dict[int, list[tuple[bytes, str, float]]] = {}
        self._waiters_due = math.inf  # the earliest wait deadline (or earlier): scan only then
        self._ended_elsewhere: list[
            int
        ] = []  # tasks ended by a lost worker, whose waiters are owed an answer
        self.hub = EventHub()  # event subscribers, and events still to record (events.py)
        self.db_health = DbHealth()  # the database's last failure, for ping and the log
        self.ports: dict[str, int] = {}

    # ---- life cycle ---------------------------------------------------------

    def open(self) -> None:
        """Bind the sockets and open the database; errors say what to change."""
        s = self.settings
        self.ctx = zmq.Context()
        try:
            self.client = self._bind("client", s.client_port)
            self.worker = self._bind("worker", s.worker_port)
            self.status = self._bind("status", s.status_port)
            db = open_database(s.db)
        except BaseException:
            self.ctx.destroy(linger=0)
            raise
        if isinstance(db, peewee.SqliteDatabase):
            self._checkpointer = WalCheckpointer(db).start()
        retry = RetryPolicy(s.retry_base, s.retry_factor, s.retry_cap)
        self.store = Store(db, retry, s.poison_after, s.max_releases)
        self.database_id = self.store.database_id()
        with self.store.atomic():
            self._load_lanes(self.clock())
        self.poller = zmq.Poller()
        for sock in (self.client, self.worker, self.status):
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        log.info(
            "martinet serving on %s (client %d, worker %d, status %d), database %s (id %s), epoch %s",
            s.bind,
            self.ports["client"],
            self.ports["worker"],
            self.ports["status"],
            redact(s.db),
            self.database_id,
            self.epoch,
        )

    def _load_lanes(self, now: float) -> None:
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

    def _bind(self, role: str, port: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer raises, never vanishes
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.max_message(self.settings.max_payload))
        try:
            if port == 0:
                port = sock.bind_to_random_port(f"tcp://{self.settings.bind}")
            else:
                sock.bind(f"tcp://{self.settings.bind}:{port}")
        except zmq.ZMQError as exc:
            sock.close(0)
            if exc.errno == errno.EADDRINUSE:
                raise MartinetError(
                    f"the {role} port {port} on {self.settings.bind} is already in use "
                    f"(is another martinet serve running?); choose another with "
                    f"{self.port_option.format(role=role)}"
                ) from None
            raise MartinetError(
                f"cannot bind the {role} socket to {self.settings.bind}:{port}: {exc}"
            ) from None
        self.ports[role] = port
        return sock

    def stop(self) -> None:
        """Ask the loop to finish its turn and exit; safe from signal handlers and threads."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        if self.store is None:
            self.open()
        try:
            while not self._stopping:
                before = self.clock()
                deadline = self._next_deadline(before)
                wait = _poll_ms(deadline - before)
                ready = dict(self.poller.poll(wait))
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                now = self.clock()
                self._not_listening(now - before - wait / 1000)
                if not ready and now < deadline:
                    continue  # woke early, on purpose: see _poll_ms
                try:
                    self._turn(ready, now)
                except Exception:  # a bug of ours: that turn is rolled back, the daemon lives on
                    log.exception("a turn of the loop failed; nothing of it was committed")
                self._not_listening(self.clock() - now)
        finally:
            self.close()

    def close(self) -> None:
        if self.ctx is not None:
            for sock in (self.client, self.worker, self.status):
                sock.close(0)
            self.ctx.term()
            self.ctx = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self.store is not None:
            self.store.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        log.info("martinet stopped")

    def _not_listening(self, gap: float) -> None:
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

    # ---- one turn -------------------------------------------------------------

    def _next_deadline(self, now: float) -> float:
        """When the loop must take a turn even if nothing arrives (now: there is work to send)."""
        if self._dispatch_pending and self.peers.any_credit():
            return now
        deadlines = [self._next_tick, self._waiters_due]
        for deadline in (
            self._next_wakeup,
            self._rate_wakeup,
            self.peers.next_heartbeat(self.settings.heartbeat_interval),
        ):
            if deadline is not None:
                deadlines.append(deadline)
        catch_up = self.hub.next_turn()
        if catch_up is not None:
            deadlines.append(catch_up)
        return min(deadlines)

    def _turn(self, ready: dict, now: float) -> None:
        """Read what arrived, write it and the turn's claims in one transaction (group
        commit), then send what depends on it: replies, acks, events, and tasks."""
        out = Outbox()
        troubled = self.db_health.trouble is not None
        changes = self.store.changes() if troubled and self.store else None
        try:
            with self.store.atomic():
                if self.client in ready:
                    for ident, frames in self._drain(self.client):
                        self._on_client(ident, frames, out, now)
                if self.status in ready:
                    self._on_status_batch(self._drain(self.status), out, now)
                if self.worker in ready:
                    for ident, frames in self._drain(self.worker):
                        if self._heartbeat_of_known(ident, frames, now):
                            continue
                        with self._isolated(f"a message on the worker socket from {ident!r}"):
                            self._on_worker(ident, frames, out, now)
                self._timers(out, now)
                self._claim(out, now)
                out.events = self.hub.record(self.store, out.events, now)
        except (peewee.OperationalError, peewee.InterfaceError, peewee.DatabaseError) as exc:
            why = describe(exc, self.store.db if self.store else None)
            self.db_health.failed(why, now)
            self._reconnect()
            # Clients learn their request failed, and why; workers will resend unacknowledged results.
            error = _err(
                "StoreError", f"the daemon's database failed, so this request was not carried out: {why}"
            )
            out.replies = [
                (ident, {"rid": h.get("rid"), "ok": False, "error": error}) for ident, h in out.replies
            ]
            for _peer, rows in out.tasks:  # the claims were rolled back: so are their slots
                for row in rows:
                    self.peers.release(row["id"], now)
                    self.lanes.ended(row["queue"], row["name"])
            out.acks, out.events, out.ended, out.tasks = {}, [], [], []
            self.hub.pending = []  # events made in the turn that was rolled back
            self._cancels = []  # the time-outs were rolled back too
            self._dispatch_pending = True
        else:
            # SQLite counts the rows changed: an empty commit proves nothing about a full disk.
            # Elsewhere any commit ends the trouble (no cheap count there).
            if troubled and (changes is None or (self.store and self.store.changes()) != changes):
                self.db_health.committed(now)
        self._flush(out, now)
        self._send_tasks(out.tasks, now)

    _HEARTBEAT_HEAD = protocol.PREFIX + bytes([Cmd.HEARTBEAT])

    def _heartbeat_of_known(self, ident: bytes, frames: list[bytes], now: float) -> bool:
        """A known worker's heartbeat, noted without decoding it or a savepoint: most of what
        idle workers send, so it must cost next to nothing (its header is not read anyway)."""
        if not frames or not frames[0].startswith(self._HEARTBEAT_HEAD):
            return False
        peer = self.peers.by_ident(ident)
        if peer is None:
            return False
        self.peers.seen(peer.worker_id, now)
        return True

    def _reconnect(self) -> None:
        try:
            self.store.db.close()
        except peewee.PeeweeException:
            pass
        try:
            self.store.db.connect(reuse_if_open=True)
        except peewee.PeeweeException as exc:
            log.error("database still unreachable: %s", exc)

    @contextmanager
    def _isolated(self, what: str):
        """One message's work in a savepoint: an unexpected error drops that message only."""
        try:
            with self.store.atomic():
                yield
        except (peewee.OperationalError, peewee.InterfaceError):
            raise  # the database itself is in trouble: the whole turn fails
        except Exception:
            log.exception("dropped %s after an unexpected error", what)

    def _drain(self, sock: zmq.Socket) -> list[tuple[bytes, list[bytes]]]:
        msgs = []
        while len(msgs) < DRAIN_LIMIT:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msgs.append((frames[0], frames[1:]))
        return msgs

    def _send(self, sock: zmq.Socket, ident: bytes, cmd: Cmd, header: dict) -> bool:
        return self._send_raw(sock, ident, protocol.encode(cmd, header))

    def _send_raw(self, sock: zmq.Socket, ident: bytes, frames: list[bytes]) -> bool:
        try:
            sock.send_multipart([ident, *frames], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            log.debug("could not send %s to %r: %s", protocol.describe(frames), ident, exc)
            return False

    _heartbeat = protocol.encode(Cmd.HEARTBEAT, {})

    def _decode(self, sock_name: str, ident: bytes, frames: list[bytes], out: Outbox | None = None):
        """(command, header), or (None, None) for a message dropped as malformed; with `out`
        (the client socket), a request whose id can be read gets a refusal saying why."""
        try:
            return protocol.decode(frames)
        except ProtocolError as exc:
            self._malformed(sock_name, ident, str(exc), sum(map(len, frames)), protocol.describe(exc.raw))
            if out is not None and (rid := protocol.recover_rid(frames)) is not None:
                error = _err("BadInput", f"unreadable request: {exc}")
                out.replies.append((ident, {"rid": rid, "ok": False, "error": error}))
            return None, None

    def _malformed(
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

    # ---- client socket ------------------------------------------------------------

    def _on_client(self, ident: bytes, frames: list[bytes], out: Outbox, now: float) -> None:
        cmd, header = self._decode("client", ident, frames, out)
        if cmd is None:
            return
        rid = header.get("rid")
        if cmd is not Cmd.REQUEST:
            log.warning("dropped a %s command on the client socket from %r", cmd.name, ident)
            return
        op = header.get("op")
        handler = getattr(self, f"_op_{op}", None) if isinstance(op, str) else None
        try:
            if handler is None:
                raise BadInput(f"unknown request {op!r}")
            if len(frames[0]) > self.limits.max_payload:
                raise BadInput(
                    f"request is {len(frames[0])} bytes, over the limit of "
                    f"{self.limits.max_payload} (max_payload)"
                )
            with self.store.atomic():  # a savepoint: one bad request spoils no other
                reply = handler(header, now, out, ident)
        except MartinetError as exc:
            reply = {"ok": False, "error": _err(type(exc).__name__, str(exc))}
        except (peewee.IntegrityError, peewee.DataError) as exc:
            reply = {"ok": False, "error": _err("BadInput", f"the database refused it: {exc}")}
        except (peewee.OperationalError, peewee.InterfaceError):
            out.replies.append((ident, {"rid": rid}))  # answered with the turn's error (_turn)
            raise  # the database itself is in trouble: the whole turn fails
        except Exception:  # a bug of ours must cost one request, never the daemon
            log.exception("request %r from %r failed unexpectedly", op, ident)
            reply = {
                "ok": False,
                "error": _err("InternalError", "the daemon could not handle this request; see its log"),
            }
        if reply is not None:
            reply.setdefault("ok", True)
            reply["rid"] = rid
            out.replies.append((ident, reply))

    # ---- worker socket ------------------------------------------------------------

    def _on_worker(self, ident: bytes, frames: list[bytes], out: Outbox, now: float) -> None:
        cmd, h = self._decode("worker", ident, frames)
        if cmd is None:
            return
        if cmd is Cmd.HELLO:
            self._on_hello(ident, h, now)
            return
        peer = self.peers.by_ident(ident)
        if peer is None:
            self._send(self.worker, ident, Cmd.HELLO_AGAIN, {"epoch": self.epoch})
            return
        self.peers.seen(peer.worker_id, now)
        if cmd is Cmd.HEARTBEAT:
            return
        if cmd is Cmd.REJECT:
            task_id, attempt = h.get("id"), h.get("attempt")
            if not (is_id(task_id) and is_id(attempt)):
                log.warning("dropped a REJECT without a valid id and attempt from %s", peer.worker_id)
                return
            reason = clean_text(h.get("reason", ""), 500)
            lane = self.store.unclaim(task_id, attempt, now) if self.peers.owner(task_id) is peer else None
            if lane is not None:
                self.peers.release(task_id, now)
                self.lanes.ended(*lane)
                self.lanes.ready(lane[0])
                if h.get("name"):
                    self.peers.drop_name(peer, h["name"])
                log.warning(
                    "worker %s refused task %s: %s; it goes to another worker",
                    peer.worker_id,
                    task_id,
                    reason,
                )
                self._dispatch_pending = True
            return
        if cmd is Cmd.BYE:
            self._lose_worker(peer.worker_id, now, "worker shut down", outcome="interrupted")
            return
        log.warning("dropped a %s command on the worker socket from %s", cmd.name, peer.worker_id)

    def _on_hello(self, ident: bytes, h: dict, now: float) -> None:
        worker_id, names, capacity = h.get("worker_id"), h.get("names"), h.get("capacity")
        if (
            not is_worker_id(worker_id)
            or not isinstance(names, list)
            or len(names) > 10_000
            or not all(
                isinstance(n, str) and n.isprintable() and len(n) <= self.limits.max_name_length
                for n in names
            )
            or not is_id(capacity)
            or not 0 < capacity <= 10_000
        ):
            self._malformed("worker", ident, f"a hello without a valid worker_id, names and capacity: "
                            f"{str(h)[:200]}", len(protocol.dumps(h)), what="refused a malformed hello")  # fmt: skip
            return
        old = self.peers.get(worker_id)
        if old is None and len(self.peers) >= MAX_PEERS:
            log.warning("refused a hello from %s: already %d workers connected", worker_id[:80], MAX_PEERS)
            return
        if old is not None and old.ident != ident:
            log.info("worker %s reconnected", worker_id)
        queues = h.get("queues")
        queues = {q for q in queues if isinstance(q, str)} if isinstance(queues, list) else None
        threads = h.get("threads") if is_id(h.get("threads")) and h["threads"] >= 1 else None
        # A hello repeated on the same connection (sent before our welcome came back): the
        # tasks leased to it are on their way there, in order, and still take its slots.
        in_transit = set(old.inflight) if old is not None and old.ident == ident else set()
        peer = self.peers.hello(worker_id, ident, set(names), capacity, now, queues, threads)
        peer.reports_starts = h.get("starts") is True
        clocks = old.clocks if old is not None else {}  # a reconnect keeps when its tasks started
        if old is not None and in_transit:
            for task_id in [*old.clocks, *old.prefetched]:  # in the order sent
                self.peers.assign(peer, task_id, clocks.get(task_id, now))
        for queue in queues or ():
            self.lanes.queue(queue)
        self._declare_limits(h.get("limits"), set(names), now)
        running = _attempts(h.get("running"), MAX_HELD)
        foreign = [r for r in running if r.get("database") not in (None, self.database_id)]
        if foreign:
            # Outcomes journaled for the daemon of another database: ids and attempt numbers
            # may match tasks here, but they are not these tasks. The worker keeps them.
            running = [r for r in running if r.get("database") in (None, self.database_id)]
            log.info(
                "worker %s holds %d outcome(s) for another database (%s), not this one (%s): not taken as its own",
                worker_id, len(foreign), clean_text(str(foreign[0]["database"]), 64), self.database_id,
            )  # fmt: skip
        # What it kept aside for other databases, of which this one may be (marked, always).
        ours = [r for r in _attempts(h.get("kept"), MAX_HELD) if r.get("database") == self.database_id]
        running = (running + ours)[:MAX_HELD]
        # It gets back at most what its capacity holds: a hello that says it runs more is
        # not believed beyond that (the rest end as lost below). Attempts whose outcome is
        # committed (acks lost in an outage) are not readopted, so they take no room.
        room = max(0, (capacity or 0) - len(in_transit - {r["id"] for r in running}))
        revived: list[tuple[str, str]] = []
        adopted = self.store.readopt(
            worker_id, running, now, self.settings.lease, limit=room, revived=revived
        )
        for queue, name in revived:  # let go of when lost, held again: they count toward limits again
            self.lanes.held(queue, name)
        over = len(adopted) == room and len(running) > room
        if over:
            log.warning(
                "worker %s said it holds %d tasks, more than its capacity of %d: only %d readopted",
                worker_id, len(running), capacity, len(adopted),
            )  # fmt: skip
        for task_id in adopted:  # as far as the daemon can tell, the first ones have a thread
            self.peers.assign(peer, task_id, clocks.get(task_id, now))
        for item in running:  # what it holds and may not keep takes its slots until it answers
            if item["id"] not in peer.inflight:
                self.peers.stick(peer, item["id"], now)
        if (old is None or old.ident != ident) and self.store.runs_any(worker_id):
            # A new connection (a restart, a reconnect, or this daemon restarted): tasks sent
            # on the old one and not reported were never received, or died with the process.
            # Unended, the worker's heartbeats would renew their leases for ever.
            kept = set(adopted)
            orphans = self._ended_all(
                self.store.release_worker(
                    worker_id,
                    now,
                    "its worker came back without it"
                    + (f" or beyond its capacity of {capacity}" if over else ""),
                    keep={(r["id"], r["attempt"]) for r in running if r["id"] in kept},
                ),
                now,
            )
            if orphans:
                log.warning("worker %s came back without tasks %s: back to the queue", worker_id, orphans)
                self._wakeup_dirty = True
        self._send(
            self.worker,
            ident,
            Cmd.WELCOME,
            {
                "epoch": self.epoch,
                "database": self.database_id,  # the worker's journal ties its outcomes to it
                "heartbeat_interval": self.settings.heartbeat_interval,
                "liveness": self.settings.liveness,
                "lease": self.settings.lease,
                "version": protocol.VERSION,
                # What an outcome may weigh: the worker fails a larger result rather than
                # send a message these sockets would drop.
                "max_payload": self.settings.max_payload,
                "max_message": protocol.max_message(self.settings.max_payload),
            },
        )
        self._dispatch_pending = True
        log.info(
            "worker %s ready: %d thread(s) and %d prefetch slot(s) for %s",
            worker_id, peer.thread_count, peer.capacity - peer.thread_count, ", ".join(sorted(names)) or "nothing",
        )  # fmt: skip

    def _queues_ready(self) -> None:
        """Tasks became ready somewhere (due times came, retries, lost tasks): find where."""
        for queue in self.store.ready_queues():
            self.lanes.ready(queue)

    def _ended_all(self, infos: list[dict], now: float) -> list[int]:
        """Attempts that ended without a word from their worker: free their lanes."""
        for info in infos:
            self.lanes.ended(info["queue"], info["name"])
            self.peers.release(info["id"], now)
            settled = info["dependents"]
            if info["status"] in TERMINAL:  # dead: its waiters, and those of what waited on it, get an answer
                self._ended_elsewhere.extend([info["id"], *settled["cancelled"]])
            self.lanes.ready(info["queue"])
            self.hub.pending.append(attempt_event(info))  # recorded with the turn (or the next)
            self._cancelled_events(self.hub.pending, settled["cancelled"])
        return [info["id"] for info in infos]

    def _cancelled_events(self, events: list, task_ids: list[int]) -> None:
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

    def _declare_limits(self, limits: Any, names: set[str], now: float) -> None:
        """Fleet-wide limits a worker declares for its task names (@martinet.task(concurrency=, rate=))."""
        if not isinstance(limits, dict):
            return
        for name, limit in limits.items():
            if name not in names or not isinstance(limit, dict):
                continue
            concurrency = limit.get("concurrency")
            concurrency = concurrency if is_id(concurrency) and concurrency >= 1 else None
            rate = limit.get("rate")
            rate = (rate[0], float(rate[1])) if is_rate(rate) else None
            lane = self.lanes.names.get(name)
            if lane is None or (lane.concurrency, lane.rate) != (concurrency, rate):
                self.lanes.limit_name(name, concurrency, rate)
                self.store.save_task_limit(name, concurrency, rate, now)
                log.info("task %s limited to concurrency %s, rate %s", name, concurrency, rate)

    def _lose_worker(self, worker_id: str, now: float, reason: str, outcome: str = "lost") -> None:
        peer = self.peers.remove(worker_id)
        lost = self._ended_all(self.store.release_worker(worker_id, now, reason, outcome), now)
        if lost:
            log.warning("worker %s gone (%s): tasks %s back to the queue", worker_id, reason, lost)
        elif peer is not None:
            log.info("worker %s gone (%s)", worker_id, reason)
        self._wakeup_dirty = True
        self._dispatch_pending = True

    # ---- status socket ----------------------------------------------------------

    def _on_status_batch(self, msgs, out: Outbox, now: float) -> None:
        progress: dict[tuple[int, int, str], dict] = {}  # coalesced: latest wins
        ended: list[tuple[bytes, Outcome]] = []  # (status ident, outcome)
        starts: list[tuple[int, int, str]] = []  # (id, attempt, worker): written first
        for ident, frames in msgs:
            cmd, h = self._decode("status", ident, frames)
            if cmd is None:
                continue
            worker_id = h.get("worker_id")
            if cmd in (Cmd.STARTED, Cmd.ENDED) and isinstance(h.get("started"), list):
                if is_worker_id(worker_id):  # handlers took these; an ENDED may carry them too
                    starts.extend(
                        (item[0], item[1], worker_id)
                        for item in h["started"][:MAX_HELD]
                        if isinstance(item, list) and len(item) == 2 and is_id(item[0]) and is_id(item[1])
                    )
            if cmd is Cmd.STARTED:
                if not is_worker_id(worker_id) or not isinstance(h.get("started"), list):
                    log.warning("dropped a STARTED without a valid worker_id from %r", ident)
                else:
                    self.peers.seen(worker_id, now)
                continue
            if cmd is Cmd.ENDED:
                items = h.get("ended")
                items = items if isinstance(items, list) else None
            elif cmd in (Cmd.DONE, Cmd.FAILED, Cmd.PROGRESS):
                items = [{**h, "ok": cmd is Cmd.DONE}]
            else:
                log.warning("dropped a %s command on the status socket", cmd.name)
                continue
            if not is_worker_id(worker_id) or items is None:
                log.warning("dropped a %s without a valid worker_id from %r", cmd.name, ident)
                continue
            self.peers.seen(worker_id, now)
            big = cmd is not Cmd.PROGRESS and len(frames[0]) > self.limits.max_payload  # a result may be over
            foreign = 0
            for item in items:
                if not (isinstance(item, dict) and is_id(item.get("id")) and is_id(item.get("attempt"))):
                    log.warning("dropped a %s without a valid id and attempt from %s", cmd.name, worker_id)
                elif item.get("database") not in (None, self.database_id):
                    foreign += 1  # not acknowledged: the worker keeps it for the daemon it is for
                elif cmd is Cmd.PROGRESS:
                    progress[(item["id"], item["attempt"], worker_id)] = item
                else:
                    try:
                        if big:
                            item = self._within_payload(item, worker_id)
                        ended.append((ident, _outcome(item, worker_id)))
                    except Exception:  # a bug of ours must cost one outcome, never the turn
                        log.exception("dropped an outcome of task %s from %s", item["id"], worker_id)
            if foreign:
                # A daemon of another database was at this address (its worker has not said
                # hello to us yet: it will, and learn which database this is, from our welcome).
                log.warning(
                    "ignored %d outcome(s) from %s meant for another database, not this one (%s)",
                    foreign, worker_id, self.database_id,
                )  # fmt: skip
        if starts:  # before the progress and outcomes that came after them
            assert self.store is not None  # open() made it
            with self._isolated("a start report"):
                self.store.start(starts, now)
        # Progress first: a handler's last report often comes in the turn of its outcome,
        # and once the attempt has ended it would be fenced out (a worker sends both on
        # one socket, in order, so no progress of an attempt comes after its outcome).
        for (task_id, attempt, worker_id), h in progress.items():
            value = finite(h.get("progress"))
            message = clean_text(h.get("message"), 1000)
            with self._isolated(f"progress of task {task_id}"):
                updated = self.store.progress(task_id, attempt, worker_id, value, message, now)
            if updated:
                out.events.append(
                    {
                        "event": "progress",
                        "id": task_id,
                        "name": h.get("name"),
                        "attempt": attempt,
                        "progress": value,
                        "message": message,
                    }
                )
        if ended:
            self._on_outcomes(ended, out, now)

    def _within_payload(self, item: dict, worker_id: str) -> dict:
        """A result over max_payload (from a worker that does not check it: older, or not
        ours) is stored as the failure a worker would have reported, like args refused."""
        if not item.get("ok"):
            return item
        size = len(protocol.dumps(item.get("result")))
        if size <= self.limits.max_payload:
            return item
        message = (
            f"the handler's result is {size} bytes as JSON, over the limit of "
            f"{self.limits.max_payload} (max_payload)"
        )
        log.warning("task %s attempt %s from %s: %s", item["id"], item["attempt"], worker_id, message)
        error = {"type": "ValueError", "message": message}
        return {"id": item["id"], "attempt": item["attempt"], "ok": False, "error": error}

    def _on_outcomes(self, ended: list[tuple[bytes, Outcome]], out: Outbox, now: float) -> None:
        """Outcomes of one turn, written together; should that fail, one by one, so that a
        bad one costs only itself (it is not acknowledged: its worker sends it again)."""
        outcomes = [outcome for _ident, outcome in ended]
        try:
            with self.store.atomic():
                infos = self.store.end_attempts(outcomes, now)
        except (peewee.OperationalError, peewee.InterfaceError):
            raise  # the database itself is in trouble: the whole turn fails
        except Exception:
            log.exception("%d outcomes failed together; taking them one by one", len(outcomes))
            infos = []
            for outcome in outcomes:
                infos.append(_UNWRITTEN)
                with self._isolated(f"the outcome of task {outcome.task_id}"):
                    infos[-1] = self.store.end_attempts([outcome], now)[0]
        for (ident, outcome), info in zip(ended, infos, strict=True):
            if info is _UNWRITTEN:
                continue
            # Acknowledged even when fenced out: a late or repeated answer changes nothing.
            out.acks.setdefault(ident, []).append([outcome.task_id, outcome.attempt])
            if info is None:
                self.peers.unstick(outcome.worker, outcome.task_id)  # if stuck in it, it is free again
                log.info(
                    "ignored a late outcome for task %s attempt %s from %s",
                    outcome.task_id, outcome.attempt, outcome.worker,
                )  # fmt: skip
            else:
                self._ended(info, outcome, out, now)

    def _ended(self, info: dict, outcome: Outcome, out: Outbox, now: float) -> None:
        """An attempt ended as its worker said: free its slot, log it, tell who listens."""
        task_id, attempt, worker_id = outcome.task_id, outcome.attempt, outcome.worker
        if info.pop("late", False):  # its slot was freed when the daemon thought it lost
            log.warning(
                "task %s %s attempt %s succeeded on %s after all (it had been declared lost): result kept",
                task_id, info["name"], attempt, worker_id,
            )  # fmt: skip
        else:
            self.peers.release(task_id, now)
            self.lanes.ended(info["queue"], info["name"])
        self._dispatch_pending = True
        limited = self.lanes.queue(info["queue"]).concurrency is not None or info["name"] in self.lanes.names
        if limited or info["status"] == QUEUED:  # a limit has room again, or the task is back (released)
            self.lanes.ready(info["queue"])
        status = info["status"]
        error = info["error"] or {}
        if status == "succeeded":
            log.info("task %s %s attempt %s succeeded on %s", task_id, info["name"], attempt, worker_id)
        elif status == "failed":
            self._wakeup_dirty = True
            log.warning(
                "task %s %s attempt %s failed on %s: %s: %s; retry at %s",
                task_id, info["name"], attempt, worker_id, error.get("type"), error.get("message"), info["run_at"],
            )  # fmt: skip
        elif status == "cancelled":
            log.info("task %s %s attempt %s cancelled on %s", task_id, info["name"], attempt, worker_id)
        elif info["outcome"] == "released" and status != STALLED:
            self._dispatch_pending = self._wakeup_dirty = True
            log.info("task %s %s given back by %s: %s", task_id, info["name"], worker_id, info["reason"])
        else:
            log.error(
                "task %s %s attempt %s %s on %s: %s: %s",
                task_id, info["name"], attempt, status, worker_id, error.get("type"), error.get("message"),
            )  # fmt: skip
        settled = info.pop("dependents")
        if settled["released"]:  # they may wait in other queues
            self._dispatch_pending = self._wakeup_dirty = True
            self._queues_ready()
            log.info("tasks %s no longer wait: task %s succeeded", settled["released"], task_id)
        if settled["cancelled"]:
            log.warning(
                "tasks %s cancelled: task %s they waited on ended %s", settled["cancelled"], task_id, status
            )
        out.events.append(attempt_event(info))
        self._cancelled_events(out.events, settled["cancelled"])
        if status in TERMINAL:
            out.ended.extend([task_id, *settled["cancelled"]])

    # ---- timers -----------------------------------------------------------------

    def _timers(self, out: Outbox, now: float) -> None:
        if self._wakeup_dirty:
            self._next_wakeup = self.store.next_wakeup(TIMER_LEAD)
            self._wakeup_dirty = False
        if self._next_wakeup is not None and now >= self._next_wakeup:
            created = self.store.expand_schedules(now, self.settings.max_attempts)
            if created:
                log.info("schedules created tasks %s", created)
                self._queues_ready()
                self._dispatch_pending = True
            for queue in self.store.promote_due(now, TIMER_LEAD):
                self.lanes.ready(queue)
                self._dispatch_pending = True
            self._next_wakeup = self.store.next_wakeup(TIMER_LEAD)
        if self._rate_wakeup is not None and now >= self._rate_wakeup:
            self._rate_wakeup = None
            self._dispatch_pending = True
        if now >= self._next_tick:
            self._tick(now)
            self._next_tick = now + self.settings.heartbeat_interval
        # Each worker hears from the daemon once an interval, a few at a time rather than
        # all in one turn: what one turn costs must not grow with the idle workers.
        interval = self.settings.heartbeat_interval
        for peer in self.peers.due_heartbeats(now, interval, early=interval / 4):
            self._send_raw(self.worker, peer.ident, self._heartbeat)
        if now >= self._waiters_due:
            self._waiters_due = math.inf
            for task_id, waits in list(self._waiters.items()):
                keep = []
                for ident, rid, deadline in waits:
                    if now >= deadline:
                        out.replies.append(
                            (ident, {"rid": rid, "ok": True, "done": False, **self._why_waits(task_id)})
                        )
                    else:
                        keep.append((ident, rid, deadline))
                        self._waiters_due = min(self._waiters_due, deadline)
                if keep:
                    self._waiters[task_id] = keep
                else:
                    del self._waiters[task_id]

    def _why_waits(self, task_id):
        """A task's state and why it has not ended (as `show` says it), for a wait that timed out."""
        item = maybe_task_info(self.store.get_task(task_id))
        if item is None:
            return {}
        return {"status": item["status"], "waiting": self._waiting_reason(item)}

    def _tick(self, now: float) -> None:
        """Once per heartbeat interval: dead workers, leases, retention."""
        s = self.settings
        for peer in self.peers.silent(now, s.heartbeat_interval * s.liveness):
            self._lose_worker(peer.worker_id, now, f"silent for {now - peer.last_seen:.1f}s")
        self.store.renew_leases(self.peers.busy(), now, s.lease)
        lost = self._ended_all(self.store.reap_expired(now), now)
        if lost:
            log.warning("leases expired for tasks %s: back to the queue", lost)
            self._wakeup_dirty = True
        self._time_limits(now)
        self.hub.expire(now)
        self.hub.suppressed(now)
        self.retention.step(self.store, now)  # old finished tasks, a bounded batch per tick

    def _time_limits(self, now: float) -> None:
        """Attempts past their time limit plus time_limit_grace without an answer end as
        timed out (failed: retried with backoff elsewhere, or dead), however many heartbeats
        their worker sends; it gets a CANCEL, in case it is alive but stuck, and the slot
        stays taken until it answers for that task (Peers.stick): a stuck worker is sent
        no more work, so the retry goes elsewhere.

        The limit counts from the attempt's start: a healthy worker starts its time limit
        when a thread takes the task, and must never be blamed for the wait in its prefetch.
        A running task's start is real (its worker said so: started_at). A leased one has not
        started as far as a worker that reports starts said (Peer.reports_starts); for one
        that does not, the daemon guesses when a thread took it (Peer.clock). Only tasks of this daemon's workers are judged (another daemon sharing the
        database judges its own; leases end the rest). A task with no timeout is bounded by
        its worker only: by its liveness, and by the capacity it declared (see _on_hello).
        A bounded batch per tick (OVERDUE_BATCH), going on from where the last one stopped."""
        store, grace = self.store, self.settings.time_limit_grace
        assert store is not None  # open() made it
        rows = store.overdue(now, grace, OVERDUE_BATCH, self._overdue_after)
        self._overdue_after = (rows[-1]["started_at"], rows[-1]["id"]) if len(rows) == OVERDUE_BATCH else None
        ended = []
        for row in rows:
            peer = self.peers.owner(row["id"])
            if peer is None or peer.worker_id != row["worker"]:
                continue  # not ours
            if row["status"] == LEASED:
                clock = None if peer.reports_starts else peer.clock(row["id"])
                if clock is None or max(clock, row["started_at"]) + row["timeout"] + grace >= now:
                    continue  # waiting in its worker's prefetch, or started later than claimed
            message = (
                f"no answer within the task's time limit of {row['timeout']:g}s "
                f"and a grace of {grace:g}s: the daemon ended the attempt"
            )
            info = store.time_out(row["id"], row["attempt"], now, message)
            if info is None:
                continue
            ended.append(info)
            self.peers.stick(peer, row["id"], now)  # its thread may be stuck in it: no more work there
            self._cancels.append((peer.ident, row["id"]))  # sent once the turn is committed
            log.warning(
                "task %s %s attempt %s on %s: %s; %s",
                row["id"], info["name"], row["attempt"], row["worker"], message,
                f"retry at {info['run_at']}" if info["status"] == "failed" else info["status"],
            )  # fmt: skip
        if ended:
            self._ended_all(ended, now)
            self._wakeup_dirty = self._dispatch_pending = True

    # ---- after commit --------------------------------------------------------------

    def _flush(self, out: Outbox, now: float) -> None:
        cancels, self._cancels = self._cancels, []
        for ident, task_id in cancels:
            self._send(self.worker, ident, Cmd.CANCEL, {"id": task_id})
        for ident, reply in out.replies:
            self._send(self.client, ident, Cmd.REPLY, reply)
        for ident, acks in out.acks.items():
            self._send(self.status, ident, Cmd.ACK, {"acks": acks})
        self.hub.push(self.client, out.events, now)
        self.hub.catch_up(self.store, self.client, now)
        ended, self._ended_elsewhere = [*out.ended, *self._ended_elsewhere], []
        for task_id in ended:
            waits = self._waiters.pop(task_id, None)
            if not waits:
                continue
            item = maybe_task_info(self.store.get_task(task_id))
            if item is None or item["status"] not in TERMINAL:  # its turn was rolled back: keep waiting
                self._waiters[task_id] = waits
                continue
            for ident, rid, _ in waits:
                self._send(
                    self.client, ident, Cmd.REPLY, {"rid": rid, "ok": True, "done": True, "item": item}
                )

    def _claim(self, out: Outbox, now: float) -> None:
        """Lease queued tasks to workers with credit (sent once the turn is committed).

        Idle threads first, on every worker; then the prefetch, in rounds of at most
        as many tasks as a worker has threads: a short queue spreads over the fleet
        instead of waiting in the prefetch of whichever worker was asked first, and a
        long one fills every worker's prefetch evenly.

        Workers come by kind (the names they run, the queues they serve): a kind for
        which no queue may hold work is skipped whole, so idle workers cost nothing.
        Each round claims a task or ends the loop, and a turn makes CLAIMS_PER_TURN
        queries at most: the loop ends whatever the state."""
        if not self._dispatch_pending:
            return
        claimed: dict[str, tuple[Any, list[dict]]] = {}
        budget = [CLAIMS_PER_TURN]
        idle_first, more = True, False
        while budget[0] > 0:
            tried = filled_any = False
            for kind in self.peers.kinds():
                for peer in self.peers.take_turns(kind):
                    if not self.lanes.open_queues(self._names_with_room(peer, now), peer.queues, now):
                        break  # nothing this kind may take: its other workers neither
                    room = peer.idle_threads if idle_first else min(peer.credit, peer.threads or peer.credit)
                    if room <= 0:
                        continue
                    tried = True
                    rows, filled = self._claim_for(peer, now, room, budget)
                    filled_any = filled_any or filled
                    if rows:
                        claimed.setdefault(peer.worker_id, (peer, []))[1].extend(rows)
                    if budget[0] <= 0:
                        break
            if idle_first and not tried:  # no idle thread anywhere: on to the prefetch
                idle_first = False
                continue
            more = filled_any  # a queue may hold more, for when credit frees up
            if not filled_any:  # (a filled claim took a task: the rounds are finite)
                break
            idle_first = False
        if budget[0] <= 0 and claimed:
            more = True
            log.debug("a turn made %d claims: the next turn goes on", CLAIMS_PER_TURN)
        out.tasks.extend(claimed.values())
        self._dispatch_pending = more
        self._rate_wakeup = self.lanes.next_deadline(now)

    def _names_with_room(self, peer: Any, now: float) -> frozenset[str]:
        """The task names `peer` runs whose fleet-wide limits have room now."""
        if not self.lanes.names:
            return frozenset(peer.names)
        return frozenset(n for n in peer.names if self.lanes.name_room(n, now) > 0)

    def _send_tasks(self, batches: list[tuple[Any, list[dict]]], now: float) -> None:
        if not batches:
            return
        sent_at = self.clock()
        self.lanes.restamp(now, sent_at)
        for peer, rows in batches:
            # The claimed rows are the message: id, attempt, name, queue, args, timeout, and
            # start_in (seconds from now) for a task leased ahead of its run_at.
            for row in rows:
                run_at = row.pop("run_at", None)
                if run_at is not None and run_at > sent_at:
                    row["start_in"] = run_at - sent_at
            if not self._send(self.worker, peer.ident, Cmd.TASK, {"tasks": rows}):
                self._undelivered(peer, rows, now)
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug("tasks %s sent to %s", [row["id"] for row in rows], peer.worker_id)

    def _undelivered(self, peer: Any, rows: list[dict], now: float) -> None:
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
        self._dispatch_pending = True
        log.warning(
            "worker %s could not be reached: tasks %s back to the queue, unspent",
            peer.worker_id, [row["id"] for row in rows],
        )  # fmt: skip

    def _claim_for(self, peer: Any, now: float, room: int, budget: list[int]) -> tuple[list[dict], bool]:
        """Claim up to `room` tasks for one worker, queue by queue as the lanes share its
        credit out. Returns the rows and whether a queue may hold more ready work.

        A task under a rate goes only to a thread that is idle: one held in the
        worker's prefetch would start late, and a late start followed by a prompt
        one would exceed the rate where the handlers run.

        Each pass over the plan claims a task, leaves out a task name (its limit has no
        more room, for this worker) or learns that a queue holds no more of these names,
        else the loop ends: passes are at most room + names + queues, it is finite."""
        rows: list[dict] = []
        filled = False
        held_back: set[str] = set()  # names this worker may take no more of in this turn
        emptied = 0  # queues found to hold no more of its names
        if not peer.idle_threads:  # (see above)
            held_back.update(name for name in peer.names if self.lanes.is_rated(name=name))
        while (want := min(peer.credit, room - len(rows))) > 0 and budget[0] > 0:
            names = self._names_with_room(peer, now) - held_back
            plan = self.lanes.plan(names, peer.queues, want, now) if names else []
            if not plan:
                break
            before = (len(rows), len(held_back), emptied)
            for queue, count in plan:
                if self.lanes.is_rated(queue):
                    count = min(count, peer.idle_threads)
                    if count <= 0:
                        continue
                if budget[0] <= 0:
                    break
                budget[0] -= 1
                taken: dict[str, int] = {}
                refused: set[str] = set()

                def accept(row: dict, taken: dict = taken, refused: set = refused) -> bool:
                    name = row["name"]
                    if self.lanes.name_room(name, now) <= taken.get(name, 0) or (
                        self.lanes.is_rated(name=name) and peer.idle_threads <= sum(taken.values())
                    ):
                        refused.add(name)
                        return False
                    taken[name] = taken.get(name, 0) + 1
                    return True

                claimed = self.store.claim(
                    peer.worker_id, sorted(names), count, now, self.settings.lease,
                    queue=queue, order=self.lanes.queue(queue).order,
                    accept=accept if self.lanes.names else None,
                )  # fmt: skip
                for row in claimed:
                    self.peers.assign(peer, row["id"], max(now, row.get("run_at", now)))
                    self.lanes.started(queue, row["name"], row.get("run_at", now))  # (a later one: see claim)
                rows.extend(claimed)
                held_back |= refused
                if len(claimed) == count:
                    filled = True
                elif not refused:  # it saw every ready task of these names there
                    self.lanes.found_empty(names, queue)  # the next plans leave it out
                    emptied += 1
            if (len(rows), len(held_back), emptied) == before:
                break
        return rows, filled


SPIN = 0.001  # seconds before a deadline when the loop stops sleeping and polls without waiting


def _poll_ms(wait: float) -> int:
    """How long to poll for messages, in whole milliseconds, `wait` seconds before a
    deadline. A poll timeout rounds to the millisecond, and a timer that fires a
    millisecond late is a millisecond late for every task it starts: so the loop
    sleeps until about SPIN before the deadline and polls without waiting after that.
    It never sleeps more than a second, so it notices a changed clock."""
    if wait <= SPIN:
        return 0
    return min(math.ceil((wait - SPIN) * 1000), 1000)


def _attempts(value: Any, limit: int) -> list[dict]:
    """A hello's list of {id, attempt}, checked and bounded."""
    items = value[:limit] if isinstance(value, list) else []
    return [r for r in items if isinstance(r, dict) and is_id(r.get("id")) and is_id(r.get("attempt"))]


def _err(kind: str, message: str) -> dict:
    return {"type": kind, "message": message}


_UNWRITTEN = object()  # an outcome whose writing failed: not acknowledged


def _outcome(h: dict, worker_id: str) -> Outcome:
    """A worker's DONE or FAILED header, checked and bounded, as the store takes it."""
    task_id, attempt = h["id"], h["attempt"]
    if h.get("ok"):
        return Outcome(task_id, attempt, worker_id, "succeeded", result=h.get("result"))
    error = h.get("error") if isinstance(h.get("error"), dict) else {}
    retry_in = finite(h.get("retry_in"))
    retry_in = None if retry_in is None else min(max(0.0, retry_in), 366 * 86400.0)
    if h.get("release"):
        reason = clean_text(error.get("message") or "", 1000) or "released"
        return Outcome(task_id, attempt, worker_id, "released", error={"type": "Release", "message": reason},
                       retry_in=retry_in)  # fmt: skip
    error = {
        "type": clean_text(error.get("type") or "Error", 255),
        "message": clean_text(error.get("message") or "", MAX_ERROR_MESSAGE),
        "traceback": clean_tail(error.get("traceback"), MAX_TRACEBACK) or None,
    }
    return Outcome(
        task_id, attempt, worker_id, "failed", error=error, retry_in=retry_in, final=bool(h.get("final"))
    )
