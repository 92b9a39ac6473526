"""Timers: due tasks and schedules, rate limits, heartbeats, the once-an-interval tick
(lost workers, leases, time limits, retention), and waits that reach their deadline."""

from __future__ import annotations

import logging
import math
from typing import Any

from martinet.logs import about
from martinet.messages import Cancel, Heartbeat, Reply
from martinet.models import LEASED, TERMINAL
from martinet.present import maybe_task_info
from martinet.server import presence
from martinet.server.outbox import Outbox
from martinet.server.state import State, waiting_reason
from martinet.server.workers import lose_worker

log = logging.getLogger("martinet.daemon")

# A delayed task (or a retry) is queued and leased this long before it is due, so that
# the turn that claims it and the trip to the worker are over by then; the worker holds
# it and starts it on time (the TASK row's start_in). Its thread waits meanwhile.
TIMER_LEAD = 0.02
# Running tasks checked against their time limit per tick (time_limits): a bounded
# batch of writes, like retention's; the next tick goes on from where this one stopped.
OVERDUE_BATCH = 500

_HEARTBEAT = Heartbeat().encode()


def run(core: State, out: Outbox, now: float) -> None:
    if core.wakeup_dirty:
        core.next_wakeup = core.store.next_wakeup(TIMER_LEAD)
        core.wakeup_dirty = False
    if core.next_wakeup is not None and now >= core.next_wakeup:
        created = core.store.expand_schedules(now, core.settings.max_attempts)
        if created:
            log.info("schedules created tasks %s", created)
            if core.metrics is not None:
                for queue, name, due in core.store.runs_made(created):
                    core.metrics.submitted_task(queue, name)
                    core.metrics.scheduled([now - due])
            core.queues_ready()
            core.dispatch_pending = True
        for queue in core.store.promote_due(now, TIMER_LEAD):
            core.lanes.ready(queue)
            core.made_ready.add(queue)
            core.dispatch_pending = True
        core.next_wakeup = core.store.next_wakeup(TIMER_LEAD)
    if core.rate_wakeup is not None and now >= core.rate_wakeup:
        core.rate_wakeup = None
        core.dispatch_pending = True
    if now >= core.next_tick:
        tick(core, out, now)
        core.next_tick = now + core.settings.heartbeat_interval
    # Each worker hears from the daemon once an interval, a few at a time rather than
    # all in one turn: what one turn costs must not grow with the idle workers.
    interval = core.settings.heartbeat_interval
    for peer in core.peers.due_heartbeats(now, interval, early=interval / 4):
        out.always.append((peer.ident, _HEARTBEAT))
    if now >= core.waiters_due:
        core.waiters_due = math.inf
        for task_id, waits in list(core.waiters.items()):
            keep = []
            for ident, rid, deadline in waits:
                if now >= deadline:
                    fields = wait_ended(core, task_id)
                    out.replies.append((ident, Reply(rid, True, fields, rid_first=True)))
                else:
                    keep.append((ident, rid, deadline))
                    core.waiters_due = min(core.waiters_due, deadline)
            if keep:
                core.waiters[task_id] = keep
            else:
                del core.waiters[task_id]


def wait_ended(core: State, task_id: int) -> dict[str, Any]:
    """The answer to a wait whose time ran out: the task's state and why it has not ended
    (as `show` says it), or the task, when it ended without this daemon hearing of it
    (through another daemon on the database that could not tell it: MySQL)."""
    item = maybe_task_info(core.store.get_task(task_id))
    if item is None:
        return {"done": False}
    if item["status"] in TERMINAL:
        return {"done": True, "item": item}
    return {"done": False, "status": item["status"], "waiting": waiting_reason(core, item)}


def tick(core: State, out: Outbox, now: float) -> None:
    """Once per heartbeat interval: dead workers, leases, retention."""
    s = core.settings
    for peer in core.peers.silent(now, s.heartbeat_interval * s.liveness):
        lose_worker(core, peer.worker_id, now, f"silent for {now - peer.last_seen:.1f}s")
    core.store.renew_leases(core.peers.busy(), now, s.lease)
    lost = core.ended_all(core.store.reap_expired(now), now)
    if lost:
        log.warning("leases expired for tasks %s: back to the queue", lost)
        core.wakeup_dirty = True
    time_limits(core, out, now)
    core.budgets.forget(now)
    if core.metrics is not None:
        core.metrics.workers.set(len(core.peers))
        core.metrics.held.set(core.peers.held())
    core.hub.expire(now)
    core.hub.suppressed(now)
    core.retention.step(core.store, now)  # old finished tasks, a bounded batch per tick
    presence.look_around(core, out, now)


def time_limits(core: State, out: Outbox, now: float) -> None:
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
    its worker only: by its liveness, and by the capacity it declared (see workers.on_hello).
    A bounded batch per tick (OVERDUE_BATCH), going on from where the last one stopped."""
    store, grace = core.store, core.settings.time_limit_grace
    rows = store.overdue(now, grace, OVERDUE_BATCH, core.overdue_after)
    core.overdue_after = (rows[-1]["started_at"], rows[-1]["id"]) if len(rows) == OVERDUE_BATCH else None
    ended = []
    for row in rows:
        peer = core.peers.owner(row["id"])
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
        core.peers.stick(peer, row["id"], now)  # its thread may be stuck in it: no more work there
        out.send(peer.ident, Cancel(row["id"]))  # sent once the turn is committed
        log.warning(
            "task %s %s attempt %s on %s: %s; %s",
            row["id"], info["name"], row["attempt"], row["worker"], message,
            f"retry at {info['run_at']}" if info["status"] == "failed" else info["status"],
            extra=about(row["id"], info["name"], row["attempt"], row["worker"]),
        )  # fmt: skip
    if ended:
        core.ended_all(ended, now)
        core.wakeup_dirty = core.dispatch_pending = True
