"""The server's state: connected workers (peers.py), lanes (lanes.py), waiting
clients, timers and the event hub, with what a turn's decisions share (reading a
message, freeing the lanes of ended tasks, answering waiters, why a task waits).
No sockets (loop.py owns those) and no decisions of its own: the turn (core.py)
and the decisions beside it (workers.py, outcomes.py, claims.py, timers.py, ops.py)
take a State and change it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import peewee

from martinet import protocol
from martinet.config import Settings, keep_seconds
from martinet.dbhealth import DbHealth
from martinet.errors import ProtocolError
from martinet.logs import Once
from martinet.messages import Reply, Tasks
from martinet.models import FAILED, QUEUED, SCHEDULED, STALLED, TERMINAL, WAITING
from martinet.present import maybe_task_info
from martinet.protocol import Cmd
from martinet.retention import Retention
from martinet.server.budget import Budgets
from martinet.server.events import EventHub, attempt_event
from martinet.server.finished import FinishedPerMinute
from martinet.server.lanes import RATE_LOOKBACK, Lanes, lane_settings, queue_columns, rate_of
from martinet.server.outbox import Outbox
from martinet.server.peers import Peer, Peers
from martinet.store import Store
from martinet.validate import Limits
from martinet.when import parse_rate

if TYPE_CHECKING:  # prometheus_client is imported only with --metrics
    from martinet.keys import Keyring
    from martinet.server.metrics import DaemonMetrics

log = logging.getLogger("martinet.daemon")

Messages = list[tuple[bytes, list[bytes]]]  # (ident, frames) as read from a socket
DB_ERRORS = (peewee.OperationalError, peewee.InterfaceError, peewee.DatabaseError)


def error(kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "message": message}


class State:
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
        self.other_daemons: set[str] = set()  # the other daemons serving the database, at the last tick
        self.notes_lost = False  # a rolled back turn held other writers' notes (elsewhere.py)
        self.hearing = False  # this turn holds other writers' notes: claims.lease_at_once stands back
        self.remote_waits: set[int] = set()  # tasks other daemons' clients wait for (elsewhere.py)
        self.remote_watch_until = 0.0  # until when other daemons' clients watch events (elsewhere.py)
        # Queues in which this turn made tasks ready that other daemons' workers may take
        # sooner than this daemon's (elsewhere.tell): said to them with the commit.
        self.made_ready: set[str] = set()
        self.metrics: DaemonMetrics | None = None  # with --metrics (metrics.py)
        self.finished = FinishedPerMinute()  # the last hour's ends, by minute (finished.py)
        self.leases_to_end: dict[str, float] = {}  # daemons gone: when their leases end (presence.py)
        self.next_tick = 0.0
        self.rate_wakeup: float | None = None  # when a rate limit lets a waiting task start
        # Where the claims' prefetch rounds start, in tasks a thread (claims.py): it grows
        # while the queues fill every claim, and is 1 again once one ran short.
        self.claim_round = 1
        self.overdue_after: tuple[float, int] | None = None  # where the next overdue scan starts
        self.waiters: dict[int, list[tuple[bytes, str, float]]] = {}
        self.waiters_due = math.inf  # the earliest wait deadline (or earlier): scan only then
        self.ended_elsewhere: list[int] = []  # ended by a lost worker: their waiters are owed an answer
        self._turn_waits: list[tuple[int, tuple[bytes, str, float]]] = []  # waits added this turn
        # With keys (CURVE): the key each connection that sent this turn's messages
        # authenticated with, by socket then ident (set by the loop; empty without keys).
        self.keys: dict[str, dict[bytes, str]] = {}
        self.keyring: Keyring | None = None  # the keys allowed, by role (None: no keys)
        self._refusals_told = Once()  # (socket, connection, reason): logged once each (refused)
        self.limits_told = Once(1_000)  # declared limits named (workers.py)
        self.budgets = Budgets(settings.peer_rate)  # messages a second a connection may send
        self.clock_moved = 0.0  # seconds a test moved the clock forward (martinet.testing): no pause

    def load_lanes(self, now: float) -> None:
        """Queue settings (the config file's win at start), task-name limits, and what
        runs and started recently, so limits hold across a restart."""
        for name, settings in getattr(self.settings, "queues", {}).items():
            self.store.save_queue(name, now, **queue_columns(settings))
        for name, limit in getattr(self.settings, "task_limits", {}).items():
            rate = limit.get("rate")
            self.store.save_task_limit(
                name, limit.get("concurrency"), None if rate is None else parse_rate(rate), now
            )
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
            moved, self.clock_moved = self.clock_moved, 0.0  # (a test's clock, moved on purpose)
            log.log(
                logging.WARNING if gap > interval + moved else logging.DEBUG,
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
                refusal = error("BadInput", f"unreadable request: {exc}")
                out.replies.append((ident, Reply(rid, False, error=refusal, rid_first=True)))
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
            log.warning("%s on the %s socket from %s: %s (%d bytes)", what, sock_name, where, why, size)
            if shown:  # its first bytes may be a task's args: at DEBUG only
                log.debug("%s from %s began: %s", what, where, shown)

    def key_of(self, sock_name: str, ident: bytes) -> str | None:
        """The CURVE key (z85) a connection authenticated with; None without keys."""
        keys = self.keys.get(sock_name)
        return None if keys is None else keys.get(ident)

    def refused(self, sock_name: str, ident: bytes, reason: str, message: str) -> None:
        """A message refused for who sent it (not for what it says): logged once per
        connection and reason, and counted in the metrics by reason."""
        if self.metrics is not None:
            self.metrics.refused(sock_name, reason)
        if not self._refusals_told.first((sock_name, ident, reason)):
            log.debug("%s", message)
            return
        log.warning("%s (on the %s socket, from %s)", message, sock_name, ident[:16].hex())

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
            self.made_ready.add(queue)

    def ended_all(self, infos: list[dict[str, Any]], now: float) -> list[int]:
        """Attempts that ended without a word from their worker: free their lanes."""
        for info in infos:
            self.lanes.ended(info["queue"], info["name"])
            self.peers.release(info["id"], now)
            settled = info["dependents"]
            if info["status"] in TERMINAL:  # dead: its waiters, and those of what waited on it, get an answer
                self.ended_elsewhere.extend([info["id"], *settled["cancelled"]])
            self.lanes.ready(info["queue"])
            self.made_ready.add(info["queue"])
            self.hub.pending.append(attempt_event(info))  # recorded with the turn (or the next)
            self.cancelled_events(self.hub.pending, settled["cancelled"])
        return [info["id"] for info in infos]

    def cancelled_events(self, events: list[Any], task_ids: list[int]) -> None:
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
                out.answers.append((ident, Reply(rid, True, {"done": True, "item": item}, rid_first=True)))

    def task_messages(
        self, batches: list[tuple[Peer, list[dict[str, Any]]]], sent_at: float, now: float
    ) -> list[tuple[Peer, list[dict[str, Any]], list[bytes]]]:
        """The claimed rows become TASK messages as they leave (messages.Tasks.of_rows): a
        start counts from when it was sent, and a task leased ahead of its run_at says when
        to start (start_in)."""
        self.lanes.restamp(now, sent_at)
        return [(peer, rows, Tasks.of_rows(rows, sent_at)) for peer, rows in batches]

    def undelivered(self, peer: Peer, rows: list[dict[str, Any]], now: float) -> None:
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


@dataclass
class Request:
    """A client request as an op sees it."""

    core: State
    header: dict[str, Any]  # the request's fields (messages.Request: its op and rid apart)
    now: float
    out: Outbox  # what the turn sends once committed (a revoke's CANCEL, ended tasks, events)
    ident: bytes  # the client's connection (wait and subscribe answer it later)
    rid: Any = None  # the request's id, as the client sent it (a wait answers it later)


def waiting_reason(core: State, item: dict[str, Any]) -> str | None:
    status, name = item["status"], item["name"]
    if status == SCHEDULED:
        return f"scheduled for {item['run_at']}"
    if status == FAILED:
        return f"attempt {item['attempt']} failed; retry at {item['run_at']}"
    if status == STALLED:
        return f"{item['reason'] or 'stalled'}; held until `martinet retry {item['id']}`"
    if status == WAITING:
        parents = core.store.unfinished_parents(item["id"])
        return f"waiting for task(s) {', '.join(map(str, parents))} to succeed"
    if status != QUEUED:
        return None
    queue = item["queue"]
    lane = core.lanes.queue(queue)
    if lane.paused:
        return f"queue {queue!r} is paused"
    none = no_worker(core, name, queue)
    if none:
        return none
    handlers = core.peers.handles(name, queue)
    now = core.clock()
    if lane.room(now) == 0:
        return f"queue {queue!r} is at its limit (concurrency {lane.concurrency}, rate {lane.rate})"
    if core.lanes.name_room(name, now) == 0:
        return f"task name {name!r} is at its fleet-wide limit"
    if not any(p.credit for p in handlers):
        return f"all {len(handlers)} worker(s) that handle {name!r} are busy"
    return "about to be dispatched"


def no_worker(core: State, name: str, queue: str) -> str | None:
    """Why no connected worker would take a task of `name` in `queue`, or None (one would).
    Said by `show` and as a warning when such a task is submitted (a typo, a worker not
    started, or started without that queue)."""
    if core.peers.serves(name, queue):
        return None
    if not core.peers.serves(name):
        return f"no connected worker handles {name!r}"
    return f"no connected worker that handles {name!r} serves queue {queue!r}"
