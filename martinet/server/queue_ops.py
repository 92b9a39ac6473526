"""Client requests about queues, task names' limits and old tasks: queues, pause_queue,
resume_queue, set_queue, limits, set_limit, prune (in the table of ops.py)."""

from __future__ import annotations

import logging
import math
from typing import Any

from martinet import rules, when
from martinet.errors import BadInput
from martinet.models import STATES, TERMINAL
from martinet.present import iso
from martinet.server.lanes import RATE_LOOKBACK, Queue, queue_columns, rate_text
from martinet.server.state import Request, State
from martinet.store import PRUNE_BATCH
from martinet.validate import check_name, is_id

log = logging.getLogger("martinet.daemon")


def queues(r: Request) -> dict[str, Any] | None:
    core, now = r.core, r.now
    stats = core.store.queue_stats()
    names = sorted(set(core.lanes.queues) | set(stats))
    items = []
    for name in names:
        q = core.lanes.queues.get(name) or Queue()  # a read: no lane is made for it
        st = stats.get(name, {"counts": {}, "oldest": None})
        items.append(
            {
                "name": name,
                "paused": q.paused,
                "weight": q.weight,
                "order": q.order,
                "concurrency": q.concurrency,
                "rate": rate_text(q.rate),
                "running": q.running,
                "counts": st["counts"],
                "oldest_waiting_seconds": None
                if st["oldest"] is None
                else round(max(0.0, now - st["oldest"]), 3),
                "served_by": sum(1 for p in core.peers if p.queues is None or name in p.queues),
            }
        )
    return {"items": items}


def pause_queue(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    return apply_queue(core, h, now, {"paused": True})


def resume_queue(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    return apply_queue(core, h, now, {"paused": False})


def set_queue(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    changes = limit_changes(h)
    if h.get("weight") is not None:
        changes["weight"] = rules.check_count(h["weight"], "weight", most=rules.MAX_QUEUE_LIMIT)
    if h.get("order") is not None:
        if h["order"] not in rules.QUEUE_ORDERS:
            raise BadInput(f"order must be 'fifo' or 'random', not {str(h['order'])[:40]!r}")
        changes["order"] = h["order"]
    if not changes:
        raise BadInput("nothing to set: give concurrency, rate, weight or order")
    return apply_queue(core, h, now, changes)


def limit_changes(h: dict[str, Any]) -> dict[str, Any]:
    """The concurrency and rate a request gives (a queue's or a task name's): each checked,
    "none" as None (no limit), what is not given left out."""
    changes: dict[str, Any] = {}
    if h.get("concurrency") is not None:
        c = h["concurrency"]
        changes["concurrency"] = (
            None
            if rules.means_none(c)
            else rules.check_count(c, "concurrency", most=rules.MAX_QUEUE_LIMIT, clears=True)
        )
    if h.get("rate") is not None:
        rate = h["rate"]
        changes["rate"] = None if rules.means_none(rate) else when.parse_rate(str(rate))
    return changes


def apply_queue(core: State, h: dict[str, Any], now: float, changes: dict[str, Any]) -> dict[str, Any]:
    name = rules.check_queue_name(h.get("name"))
    core.store.save_queue(name, now, **queue_columns(changes))
    core.lanes.configure(name, **changes)
    core.lanes.ready(name)
    core.dispatch_pending = True
    log.info("queue %s: %s", name, changes)
    return {"name": name, "status": "paused" if core.lanes.queue(name).paused else "active"}


def limits(r: Request) -> dict[str, Any] | None:
    """The task names with fleet-wide limits: concurrency, rate, and how many of each run."""
    items = [
        {
            "name": name,
            "concurrency": lane.concurrency,
            "rate": rate_text(lane.rate),
            "running": lane.running,
        }
        for name, lane in sorted(r.core.lanes.names.items())
    ]
    return {"items": items}


def set_limit(r: Request) -> dict[str, Any] | None:
    """A task name's fleet-wide concurrency and rate (what is not given stays; "none"
    clears). Limits come from here and from the daemon's config ([task_limits.NAME]), never
    from a worker's hello: a worker cannot change what the whole fleet does."""
    core, h, now = r.core, r.header, r.now
    name = check_name(h.get("name"), core.limits)
    lane = core.lanes.names.get(name)
    concurrency, rate = (None, None) if lane is None else (lane.concurrency, lane.rate)
    changes = limit_changes(h)
    if not changes:
        raise BadInput("nothing to set: give concurrency or rate ('none' clears one)")
    concurrency, rate = changes.get("concurrency", concurrency), changes.get("rate", rate)
    apply_limit(core, name, concurrency, rate, now)
    return {"name": name, "concurrency": concurrency, "rate": rate_text(rate)}


def apply_limit(
    core: State, name: str, concurrency: int | None, rate: tuple[int, float] | None, now: float
) -> None:
    core.store.save_task_limit(name, concurrency, rate, now)
    new = name not in core.lanes.names
    core.lanes.limit_name(name, concurrency, rate)
    lane = core.lanes.names.get(name)
    if new and lane is not None:  # what of that name runs and started lately counts at once
        state = core.store.lanes_state(now, RATE_LOOKBACK)
        lane.running = sum(count for _queue, held, count in state["running"] if held == name)
        lane.starts.extend(sorted(started for _queue, held, started in state["recent"] if held == name))
    core.lanes.ready()  # a looser limit lets waiting tasks go
    core.dispatch_pending = True
    log.info("task %s limited to concurrency %s, rate %s", name, concurrency, rate)


def prune(r: Request) -> dict[str, Any] | None:
    """Delete (or with dry_run, count) finished tasks older than `older_than`, one
    bounded batch per request: a million old tasks never hold the loop up. The
    reply says `more` with where it stopped (`after`) and the cutoff it used
    (`before`); the client sends both back until `more` is false."""
    core, h, now = r.core, r.header, r.now
    statuses = _finished_states(h.get("status"))
    before = h.get("before")
    if before is None:
        older_than: Any = h.get("older_than")  # as the client sent it: parse_age checks it
        before = now - when.parse_age(older_than)
    elif isinstance(before, bool) or not isinstance(before, int | float) or not math.isfinite(before):
        raise BadInput(f"before must be a time in epoch seconds, got {str(before)[:40]!r}")
    after = h.get("after")
    if after is not None:
        if not (
            isinstance(after, list)
            and len(after) == 2
            and isinstance(after[0], int | float)
            and not isinstance(after[0], bool)
            and is_id(after[1])
        ):
            raise BadInput(f"after must be the [finished_at, id] of a prune reply, got {str(after)[:60]!r}")
        after = (float(after[0]), after[1])
    dry_run = bool(h.get("dry_run"))
    pruned = core.store.prune(dict.fromkeys(statuses, before), PRUNE_BATCH, after, dry_run=dry_run)
    if pruned.tasks and not dry_run:
        log.info(
            "prune: deleted %d %s tasks and %d attempt rows finished before %s",
            pruned.tasks, "/".join(statuses), pruned.attempts, iso(before),
        )  # fmt: skip
    return {
        "tasks": pruned.tasks,
        "attempts": pruned.attempts,
        "more": pruned.more,
        "after": None if pruned.last is None else list(pruned.last),
        "before": before,
        "dry_run": dry_run,
    }


def _finished_states(value: Any) -> list[str]:
    """The states a prune applies to: a list of finished ones (default: all three)."""
    if value is None or value == []:
        return list(TERMINAL)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"status must be a state or a list of states, got {str(value)[:60]!r}")
    for state in value:
        if state not in STATES:
            raise BadInput(f"unknown status {state[:40]!r}; prune takes {', '.join(TERMINAL)}")
        if state not in TERMINAL:
            raise BadInput(
                f"status {state!r} is not finished; prune removes only {', '.join(TERMINAL)} tasks"
            )
    return list(dict.fromkeys(value))
