"""The worker socket's decisions: hello (and re-adoption), reject, bye, and a lost worker;
and the `workers` request, which lists them."""

from __future__ import annotations

import hmac
import itertools
import logging
from typing import Any

from martinet import protocol
from martinet.errors import ProtocolError
from martinet.messages import Hello, HelloAgain, Reject, Welcome
from martinet.messages.fields import new_session
from martinet.messages.worker_socket import MAX_HELD
from martinet.protocol import Cmd
from martinet.server.lanes import rate_text
from martinet.server.outbox import Outbox
from martinet.server.peers import Peer
from martinet.server.state import Request, State
from martinet.states import AttemptOutcome
from martinet.validate import clean_text, is_id, is_rate

log = logging.getLogger("martinet.daemon")

MAX_PEERS = 10_000  # connected workers at most: a flood of hellos cannot grow memory without bound
MAX_COMPARED = 1_000  # declared limits compared per hello


def on_worker(core: State, ident: bytes, frames: list[bytes], out: Outbox, now: float) -> None:
    cmd, h = core.decode("worker", ident, frames)
    if cmd is None:
        return
    if cmd is Cmd.HELLO:
        hello = hello_of(core, ident, h)
        if hello is not None:
            on_hello(core, ident, hello, out, now)
        return
    peer = core.peers.by_ident(ident)
    if peer is None:
        out.always.append((ident, HelloAgain(core.epoch).encode()))
        return
    core.peers.seen(peer.worker_id, now)
    if cmd is Cmd.HEARTBEAT:  # what it says it runs is not read (see State.heartbeat_of_known)
        return
    if cmd is Cmd.REJECT:
        try:
            reject = Reject.from_header(h)
        except ProtocolError:
            log.warning("dropped a REJECT without a valid id and attempt from %s", peer.worker_id)
            return
        on_reject(core, peer, reject, now)
        return
    if cmd is Cmd.BYE:
        lose_worker(core, peer.worker_id, now, "worker shut down", outcome="interrupted")
        return
    log.warning("dropped a %s command on the worker socket from %s", cmd.name, peer.worker_id)


def hello_of(core: State, ident: bytes, h: dict[str, Any]) -> Hello | None:
    """A HELLO, read (None, and the reason recorded, for a malformed one)."""
    try:
        return Hello.from_header(h, core.limits.max_name_length)
    except ProtocolError as exc:
        core.malformed("worker", ident, str(exc), len(protocol.dumps(h)), what="refused a malformed hello")
        return None


def on_reject(core: State, peer: Peer, reject: Reject, now: float) -> None:
    """The worker cannot run a task it was sent: it goes elsewhere, or to it later. A
    worker that lacks its handler (or is stopping) is sent no more tasks of that name; a
    refusal that passes (no free slot) takes nothing away: a worker that lost a name for
    want of a slot would leave the tasks of that name queued for good."""
    task_id, attempt = reject.task_id, reject.attempt
    lane = core.store.unclaim(task_id, attempt, now) if core.peers.owner(task_id) is peer else None
    if lane is not None:
        core.peers.release(task_id, now)
        core.lanes.ended(*lane)
        core.lanes.ready(lane[0])
        if reject.name and not reject.passing:
            core.peers.drop_name(peer, reject.name)
        log.warning(
            "worker %s refused task %s: %s; it goes to another worker", peer.worker_id, task_id, reject.reason
        )
        core.dispatch_pending = True


def on_hello(core: State, ident: bytes, hello: Hello, out: Outbox, now: float) -> None:
    worker_id, capacity = hello.worker_id, hello.capacity
    names = set(hello.names)
    key = core.key_of("worker", ident)
    old = core.peers.get(worker_id)
    if old is None and len(core.peers) >= MAX_PEERS:
        log.warning("refused a hello from %s: already %d workers connected", worker_id[:80], MAX_PEERS)
        return
    if old is not None and old.ident != ident:
        if not same_worker(old, hello, key):
            core.refused(
                "worker", ident, "id_taken",
                f"refused a hello for worker {worker_id[:80]}: that worker is connected on another "
                f"connection{' with another key' if key != old.key else ''} and this hello does not "
                "prove it is the same one (a reconnecting worker gives the session of its last "
                "welcome); once that connection is silent for the liveness timeout, the id is free",
            )  # fmt: skip
            return
        log.info("worker %s reconnected", worker_id)
    out.hellos.append(ident)
    queues = None if hello.queues is None else set(hello.queues)
    # A hello repeated on the same connection (sent before our welcome came back): the
    # tasks leased to it are on their way there, in order, and still take its slots.
    in_transit = set(old.inflight) if old is not None and old.ident == ident else set()
    # The same worker keeps its session (its status messages in flight stay its own).
    session = old.session if old is not None and old.key == key else new_session()
    peer = core.peers.hello(
        worker_id, ident, names, capacity, now, queues, hello.threads, session, key, hello.prefetch_max
    )
    peer.reports_starts = hello.starts
    peer.incarnation = hello.incarnation
    clocks = old.clocks if old is not None else {}  # a reconnect keeps when its tasks started
    if old is not None and in_transit:
        for task_id in [*old.clocks, *old.prefetched]:  # in the order sent
            core.peers.assign(peer, task_id, clocks.get(task_id, now))
    for queue in queues or ():
        core.lanes.queue(queue)
    compare_limits(core, worker_id, hello.limits, names)
    running = list(hello.running)
    foreign = [r for r in running if r.database not in ("", core.database_id)]
    if foreign:
        # Outcomes journaled for the daemon of another database: ids and attempt numbers
        # may match tasks here, but they are not these tasks. The worker keeps them.
        running = [r for r in running if r.database in ("", core.database_id)]
        log.info(
            "worker %s holds %d outcome(s) for another database (%s), not this one (%s): not taken as its own",
            worker_id, len(foreign), clean_text(foreign[0].database, 64), core.database_id,
        )  # fmt: skip
    # What it kept aside for other databases, of which this one may be (marked, always).
    ours = [r for r in hello.kept if r.database == core.database_id]
    running = (running + ours)[:MAX_HELD]
    # It gets back at most what its capacity holds (its deepest prefetch, when the daemon
    # may fill that: Hello.most): a hello that says it runs more is not believed beyond
    # that (the rest end as lost below). Attempts whose outcome is committed (acks lost
    # in an outage) are not readopted, so they take no room.
    capacity = hello.most
    room = max(0, capacity - len(in_transit - {r.task_id for r in running}))
    revived: list[tuple[str, str]] = []
    adopted = core.store.readopt(worker_id, running, now, core.settings.lease, limit=room, revived=revived)
    for queue, name in revived:  # let go of when lost, held again: they count toward limits again
        core.lanes.held(queue, name)
    over = len(adopted) == room and len(running) > room
    if over:
        log.warning(
            "worker %s said it holds %d tasks, more than its capacity of %d: only %d readopted",
            worker_id, len(running), capacity, len(adopted),
        )  # fmt: skip
    for task_id in adopted:  # as far as the daemon can tell, the first ones have a thread
        core.peers.assign(peer, task_id, clocks.get(task_id, now))
    for item in running:  # what it holds and may not keep takes its slots until it answers
        if item.task_id not in peer.inflight:
            core.peers.stick(peer, item.task_id, now)
    if (old is None or old.ident != ident) and core.store.runs_any(worker_id):
        # A new connection (a restart, a reconnect, or this daemon restarted): tasks sent
        # on the old one and not reported were never received, or died with the process.
        # Unended, the worker's heartbeats would renew their leases for ever.
        reported = {(r.task_id, r.attempt) for r in running}
        adopted_ids = set(adopted)
        kept = {(r.task_id, r.attempt) for r in running if r.task_id in adopted_ids}
        released = []
        if old is not None and hello.incarnation is not None and hello.incarnation == old.incarnation:
            # The same process, which reports all it received: what it does not report was
            # sent on a connection it had left (this daemon paused, say), and never reached
            # it. Back to the queue with no attempt spent, as if its send had failed.
            released = core.store.release_worker(
                worker_id, now, "sent on a connection its worker had left: never received",
                AttemptOutcome.INTERRUPTED, keep=reported,
            )  # fmt: skip
        released += core.store.release_worker(
            worker_id,
            now,
            "its worker came back without it" + (f" or beyond its capacity of {capacity}" if over else ""),
            keep=kept,
        )
        orphans = core.ended_all(released, now)
        if orphans:
            log.warning("worker %s came back without tasks %s: back to the queue", worker_id, orphans)
            core.wakeup_dirty = True
    out.send(ident, welcome(core, session))
    core.dispatch_pending = True
    log.info(
        "worker %s ready: %d thread(s) and %d prefetch slot(s)%s for %s",
        worker_id, peer.thread_count, peer.capacity - peer.thread_count,
        "" if hello.prefetch_max is None else f" (up to {hello.prefetch_max} while its tasks are short)",
        ", ".join(sorted(names)) or "nothing",
    )  # fmt: skip


def same_worker(old: Peer, hello: Hello, key: str | None) -> bool:
    """Whether a hello on another connection than `old`'s is from the same worker: with
    keys, the same key (a worker is its key); without, the session `old` was welcomed with."""
    if key != old.key:
        return False
    return key is not None or (hello.session is not None and hmac.compare_digest(hello.session, old.session))


def welcome(core: State, session: str) -> Welcome:
    s = core.settings
    return Welcome(
        epoch=core.epoch,
        database=core.database_id,  # the worker's journal ties its outcomes to it
        heartbeat_interval=s.heartbeat_interval,
        liveness=s.liveness,
        lease=s.lease,
        # What an outcome may weigh: the worker fails a larger result rather than
        # send a message these sockets would drop.
        max_payload=s.max_payload,
        max_message=protocol.max_message(s.max_payload),
        session=session,
    )


def compare_limits(core: State, worker_id: str, limits: dict[str, Any], names: set[str]) -> None:
    """Limits a worker's code declares for its task names (@martinet.task(concurrency=,
    rate=)) are not applied: a worker cannot set fleet-wide limits (they come from the
    daemon's config and from admins). One that differs from the fleet's is named once."""
    if not isinstance(limits, dict):
        return
    for name, limit in itertools.islice(limits.items(), MAX_COMPARED):
        if name not in names or not isinstance(limit, dict):
            continue
        concurrency = limit.get("concurrency")
        concurrency = concurrency if is_id(concurrency) and concurrency >= 1 else None
        rate = limit.get("rate")
        rate = (rate[0], float(rate[1])) if is_rate(rate) else None
        lane = core.lanes.names.get(name)
        fleet = (None, None) if lane is None else (lane.concurrency, lane.rate)
        if fleet == (concurrency, rate) or not core.limits_told.first((name, concurrency, rate)):
            continue
        flags = " ".join(
            f for f in (
                f"--concurrency {concurrency}" if concurrency else "",
                f"--rate {rate_text(rate)}" if rate else "",
            ) if f
        )  # fmt: skip
        log.warning(
            "worker %s declares limits for %s in its code (%s) that the fleet does not have (%s): "
            "a worker cannot set fleet-wide limits. Set them with `martinet limits set %s %s`, "
            "or in the daemon's config file as [task_limits.%s]",
            worker_id[:80], name, describe_limit(concurrency, rate), describe_limit(*fleet), name,
            flags or "--concurrency none --rate none", name,
        )  # fmt: skip


def describe_limit(concurrency: int | None, rate: tuple[int, float] | None) -> str:
    parts = []
    if concurrency is not None:
        parts.append(f"concurrency {concurrency}")
    if rate is not None:
        parts.append(f"rate {rate_text(rate)}")
    return ", ".join(parts) or "no limit"


def lose_worker(core: State, worker_id: str, now: float, reason: str, outcome: str = "lost") -> None:
    peer = core.peers.remove(worker_id)
    lost = core.ended_all(core.store.release_worker(worker_id, now, reason, outcome), now)
    if lost:
        log.warning("worker %s gone (%s): tasks %s back to the queue", worker_id, reason, lost)
    elif peer is not None:
        log.info("worker %s gone (%s)", worker_id, reason)
    core.wakeup_dirty = True
    core.dispatch_pending = True


def listing(r: Request) -> dict[str, Any] | None:
    """The `workers` request: this daemon's workers, by id: the names they run and the
    queues they serve (None: all), their slots (capacity: tasks held at most; depth: as
    many or more, while their tasks are short; threads: run at once), the tasks they hold
    (running or waiting in their prefetch), those stuck past a time limit, and the
    seconds since each was last heard from."""
    items = [
        {
            "id": p.worker_id,
            "names": sorted(p.names),
            "queues": None if p.queues is None else sorted(p.queues),
            "capacity": p.capacity,
            "depth": p.depth,
            "threads": p.thread_count,
            "held": sorted(p.inflight),
            "stuck": sorted(p.stuck),
            "last_seen_seconds": round(max(0.0, r.now - p.last_seen), 3),
        }
        for p in r.core.peers
    ]
    return {"items": sorted(items, key=lambda item: item["id"])}
