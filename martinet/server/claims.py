"""Claim rounds: lease queued tasks to workers with credit, within every limit."""

from __future__ import annotations

import logging
from typing import Any

from martinet.logs import about
from martinet.server.outbox import Outbox
from martinet.server.outcomes import tell_ended
from martinet.server.state import State

log = logging.getLogger("martinet.daemon")

# Claim queries in one turn at most, whatever the state of limits and queues: a turn that
# reaches it answers its sockets and goes on claiming in the next one.
CLAIMS_PER_TURN = 200
# A prefetch round's size at most, in threads: a worker's credit bounds what it gets anyway.
MAX_ROUND = 1024


def claim(core: State, out: Outbox, now: float) -> None:
    """Lease queued tasks to workers with credit (sent once the turn is committed).

    Idle threads first, on every worker; then the prefetch, in rounds: the first
    gives each worker at most as many tasks as it has threads, and each next one
    twice as many as the one before, while the queues still fill them. A short
    queue spreads over the fleet instead of waiting in the prefetch of whichever
    worker was asked first (the round in which it runs dry is the only uneven
    one, and no worker gets more in it than the others got before it, so none
    holds more than about twice another's share); a long one fills every
    worker's prefetch evenly, in a few claims a worker instead of one a thread's
    worth (a worker of one thread and a deep prefetch would cost a claim a task).
    While the queues keep filling every claim, the next turns start their rounds
    where this one stopped (State.claim_round): in a long drain, a worker's credit
    freed by its outcomes is filled in one claim (the cost: the turn in which such
    a queue runs dry may give one worker up to its whole free credit and the next
    none); the first claim that leaves its queue empty (a claim reads one task
    past what it takes: Claimed.more) starts them from one thread's
    worth again, so the next short queue spreads as above.

    Workers come by kind (the names they run, the queues they serve): a kind for
    which no queue may hold work is skipped whole, so idle workers cost nothing.
    Each round claims a task or ends the loop, and a turn makes CLAIMS_PER_TURN
    queries at most: the loop ends whatever the state.

    A worker alone with credit (in a drain, the one whose outcomes the turn read) has
    its idle threads and its first prefetch round filled by one claim: no other worker
    could take a task meanwhile (on PostgreSQL a round trip less a turn)."""
    if not core.dispatch_pending:
        return
    claimed: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    budget = [CLAIMS_PER_TURN]
    idle_first, more = True, False
    alone = core.peers.alone_with_credit()
    scale = core.claim_round  # a prefetch round's size, in threads
    while budget[0] > 0:
        tried = filled_any = dry = False
        for kind in core.peers.kinds():
            for peer in core.peers.take_turns(kind):
                if not core.lanes.open_queues(names_with_room(core, peer, now), peer.queues, now):
                    break  # nothing this kind may take: its other workers neither
                prefetch = min(peer.credit, (peer.threads or peer.credit) * scale)
                if not idle_first:
                    room = prefetch
                elif alone and peer.idle_threads:  # (and the prefetch round after it: at once)
                    room = min(peer.credit, peer.idle_threads + prefetch)
                else:
                    room = peer.idle_threads
                if room <= 0:
                    continue
                tried = True
                rows, filled = claim_for(core, out, peer, now, room, budget)
                filled_any = filled_any or filled
                dry = dry or not filled
                if rows:
                    claimed.setdefault(peer.worker_id, (peer, []))[1].extend(rows)
                if budget[0] <= 0:
                    break
        if idle_first and not tried:  # no idle thread anywhere: on to the prefetch
            idle_first = False
            continue
        more = filled_any  # a queue may hold more, for when credit frees up
        if dry:  # a queue ran short: the next rounds (and turns) spread from the start
            scale = 1
        elif (alone or not idle_first) and tried:  # (a round that found every queue known empty: as it was)
            scale = min(scale * 2, MAX_ROUND)
        if not filled_any:  # (a filled claim took a task: the rounds are finite)
            break
        idle_first = False
    core.claim_round = scale
    if budget[0] <= 0 and claimed:
        more = True
        log.debug("a turn made %d claims: the next turn goes on", CLAIMS_PER_TURN)
    out.tasks.extend(claimed.values())
    core.dispatch_pending = more
    core.rate_wakeup = core.lanes.next_deadline(now)


def _unrunnable(core: State, info: dict[str, Any], out: Outbox) -> None:
    """A task the claim leased and ended dead, for it cannot run (store.Claimed.ended):
    said in the log, to who listens, and to who waits for it."""
    log.error(
        "task %s %s is dead without running: %s", info["id"], info["name"], info["error"]["message"],
        extra=about(info["id"], info["name"], info["attempt"], None),
    )  # fmt: skip
    tell_ended(core, info, info.pop("dependents")["cancelled"], out)


def lease_at_once(core: State, name: str, queue: str, now: float) -> Any | None:
    """A worker to lease a new task to as it is inserted, with no claim, or None.

    The task (due now, neither key nor parents) goes to a worker with an idle thread
    that runs `name` and serves `queue`, when the turn's claim would give it this task
    and nothing else: no claim is due this turn; `queue` may start a task now (not
    paused, room under its concurrency) and `name` too, neither under a rate; and every
    queue the worker serves is known to hold no ready task of its names (a claim found
    them empty since anything became ready there: Lanes.found_empty), so that this
    task is the first in line. Not beside other writers either: while other daemons
    serve the database, or in a turn that holds notes of tasks others committed
    (elsewhere.py), the claim reads the table and decides. (A task another writer
    committed a moment ago and this daemon has not heard of yet may start after this
    one, as it would had it been committed a moment later.) Otherwise the task is
    queued and the claim decides, as ever. It saves the claim's statements: on
    PostgreSQL, the insert goes with the commit, a round trip less from a call to the
    start of its task."""
    if core.dispatch_pending or core.hearing or core.other_daemons:
        return None
    lane, limited = core.lanes.queues.get(queue), core.lanes.names.get(name)
    if lane is None or lane.paused or lane.rate is not None or lane.room(now) <= 0:
        return None  # (a queue not seen yet has no claim that found it empty either)
    if limited is not None and (limited.rate is not None or limited.room(now) <= 0):
        return None
    for kind in core.peers.kinds():
        for peer in core.peers.take_turns(kind):
            if name not in peer.names or (peer.queues is not None and queue not in peer.queues):
                break  # (the kind's: its workers run the same names and serve the same queues)
            if peer.idle_threads == 0:
                continue
            if core.lanes.open_queues(names_with_room(core, peer, now), peer.queues, now):
                break  # work of its kind may be ready: the claim shares it out
            return peer
    return None


def names_with_room(core: State, peer: Any, now: float) -> frozenset[str]:
    """The task names `peer` runs whose fleet-wide limits have room now."""
    if not core.lanes.names:
        return frozenset(peer.names)
    return frozenset(n for n in peer.names if core.lanes.name_room(n, now) > 0)


def claim_for(
    core: State, out: Outbox, peer: Any, now: float, room: int, budget: list[int]
) -> tuple[list[dict[str, Any]], bool]:
    """Claim up to `room` tasks for one worker, queue by queue as the lanes share its
    credit out. Returns the rows and whether a queue may hold more ready work.

    A task under a rate goes only to a thread that is idle: one held in the
    worker's prefetch would start late, and a late start followed by a prompt
    one would exceed the rate where the handlers run.

    Each pass over the plan claims a task, leaves out a task name (its limit has no
    more room, for this worker) or learns that a queue holds no more of these names,
    else the loop ends: passes are at most room + names + queues, it is finite."""
    rows: list[dict[str, Any]] = []
    filled = False
    held_back: set[str] = set()  # names this worker may take no more of in this turn
    emptied = 0  # queues found to hold no more of its names
    if not peer.idle_threads:  # (see above)
        held_back.update(name for name in peer.names if core.lanes.is_rated(name=name))
    while (want := min(peer.credit, room - len(rows))) > 0 and budget[0] > 0:
        names = names_with_room(core, peer, now) - held_back
        plan = core.lanes.plan(names, peer.queues, want, now) if names else []
        if not plan:
            break
        before = (len(rows), len(held_back), emptied)
        for queue, count in plan:
            if core.lanes.is_rated(queue):
                count = min(count, peer.idle_threads)
                if count <= 0:
                    continue
            if budget[0] <= 0:
                break
            budget[0] -= 1
            taken: dict[str, int] = {}
            refused: set[str] = set()

            def accept(
                row: dict[str, Any], taken: dict[str, int] = taken, refused: set[str] = refused
            ) -> bool:
                name = row["name"]
                if core.lanes.name_room(name, now) <= taken.get(name, 0) or (
                    core.lanes.is_rated(name=name) and peer.idle_threads <= sum(taken.values())
                ):
                    refused.add(name)
                    return False
                taken[name] = taken.get(name, 0) + 1
                return True

            claimed = core.store.claim(
                peer.worker_id, sorted(names), count, now, core.settings.lease,
                queue=queue, order=core.lanes.queue(queue).order,
                accept=accept if core.lanes.names else None,
            )  # fmt: skip
            for info in claimed.ended:
                _unrunnable(core, info, out)
            for row in claimed:
                due = row.pop("due")  # (not for the worker: only the metrics read it)
                if core.metrics is not None:
                    core.metrics.dispatched((now - due,))
                core.lanes.started(queue, row["name"], row.get("run_at", now))  # (a later one: see claim)
            core.peers.assign_all(peer, [(row["id"], max(now, row.get("run_at", now))) for row in claimed])
            rows.extend(claimed)
            held_back |= refused
            if claimed.more:  # (it read one past what it took)
                filled = True
            elif not refused:  # it saw every ready task of these names there
                core.lanes.found_empty(names, queue)  # the next plans leave it out
                emptied += 1
        if (len(rows), len(held_back), emptied) == before:
            break
    return rows, filled
