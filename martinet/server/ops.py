"""Client requests: one plain function per request, in a table (OPS: op name -> function);
those about queues and old tasks are in queue_ops.py.

They run inside a turn of the server, in its transaction, and see its store, workers'
table and lanes through the core (core.py). Each takes a Request and returns the
reply's fields, or None when the reply comes later (wait); a request that cannot be
carried out raises one of our errors (errors.py), which the core sends as the reply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from martinet import protocol, query, rules, when
from martinet.errors import BadInput, BadSchedule, TaskNotFound
from martinet.messages import Cancel
from martinet.models import TERMINAL
from martinet.present import (
    attempt_infos,
    iso,
    maybe_schedule_info,
    maybe_task_info,
    schedule_info,
    task_page,
)
from martinet.rules import DEFAULT_QUEUE
from martinet.server import claims, elsewhere, presence, queue_ops, workers
from martinet.server.state import Request, State, no_worker, waiting_reason
from martinet.states import Revoked
from martinet.validate import check_args, check_every, check_task, clean_text, parse_ref

log = logging.getLogger("martinet.daemon")

MAX_BATCH = 10_000  # tasks in one execute_many request; the payload limit bounds it too
SHOWN_EVENTS = 50  # a task's latest events in `show`
MAX_WAITERS = 100_000  # pending wait() requests at most: a flood cannot grow memory without bound


def ping(r: Request) -> dict[str, Any] | None:
    core = r.core
    # database: the failure that lasts (its cause, since when, turns lost), or None
    return {
        "epoch": core.epoch,
        "database_id": core.database_id,
        "version": protocol.VERSION,
        "workers": len(core.peers),
        "database": core.db_health.report(),
    }


def execute(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    spec = check_task(h, core.limits, core.settings.max_attempts)
    name, queue = spec["name"], spec.get("queue") or DEFAULT_QUEUE
    later = bool(spec.get("run_at") and spec["run_at"] > now)
    # An idle worker with nothing else to take gets it as it is inserted (claims.lease_at_once)
    peer = (
        None
        if later or spec.get("key") or spec.get("after")
        else claims.lease_at_once(core, name, queue, now)
    )
    lease = None if peer is None else (peer.worker_id, core.settings.lease)
    task_id, created = core.store.submit(spec, now, lease=lease)
    if not created:
        peer = None  # a known request id: nothing was inserted, nothing leased
    if later:
        core.wakeup_dirty = True
    if peer is None:
        core.lanes.ready(queue)
        core.dispatch_pending = True
    if created and log.isEnabledFor(logging.DEBUG):  # a task's life is in its events; iso() costs µs
        log.debug("task %s %s accepted (run at %s)", task_id, name, iso(spec.get("run_at") or now))
    reply: dict[str, Any] = {"id": task_id, "created": created}
    warning = no_worker(core, name, queue)
    if warning:
        reply["warning"] = warning
    if created and not later and peer is None and (warning or not core.peers.any_credit()):
        core.made_ready.add(queue)  # no worker here takes it now: maybe another daemon's
    if created and core.metrics is not None:
        core.metrics.submitted_task(queue, name)
    if peer is not None:  # last: nothing after it may fail and leave the worker told of a task undone
        core.peers.assign(peer, task_id, now)
        core.lanes.started(queue, name, now)
        if core.metrics is not None:
            core.metrics.dispatched((0.0,))
        # As a claim returns it (Store.claim's columns, in their order: messages.Tasks.of_rows)
        row = {"id": task_id, "name": name, "queue": queue, "args": spec["args"], "attempt": 1,
               "timeout": spec.get("timeout")}  # fmt: skip
        r.out.tasks.append((peer, [row]))
    return reply


def execute_many(r: Request) -> dict[str, Any] | None:
    """Many tasks in one request and one commit; all are accepted, or none."""
    core, h, now = r.core, r.header, r.now
    tasks = h.get("tasks")
    if not isinstance(tasks, list) or not 0 < len(tasks) <= MAX_BATCH:
        raise BadInput(f"tasks must be a list of 1 to {MAX_BATCH} task objects")
    specs = []
    for i, item in enumerate(tasks):
        if not isinstance(item, dict):
            raise BadInput(f"task {i} of the batch is not an object")
        try:
            specs.append(check_task(item, core.limits, core.settings.max_attempts))
        except BadInput as exc:
            raise BadInput(f"task {i} of the batch: {exc}; nothing was created") from None
    results = core.store.submit_many(specs, now)
    for queue in {spec.get("queue") or DEFAULT_QUEUE for spec in specs}:
        core.lanes.ready(queue)
    if any(spec.get("run_at") and spec["run_at"] > now for spec in specs):
        core.wakeup_dirty = True
    core.dispatch_pending = True
    created = [new for _id, new in results]
    if core.metrics is not None:
        for spec, new in zip(specs, created, strict=True):
            if new:
                core.metrics.submitted_task(spec.get("queue") or DEFAULT_QUEUE, spec["name"])
    log.info("%d tasks accepted in one batch (%d new)", len(results), sum(created))
    reply: dict[str, Any] = {"ids": [task_id for task_id, _new in results], "created": created}
    kinds = {(spec["name"], spec.get("queue") or DEFAULT_QUEUE) for spec in specs}
    warnings = [
        {"name": name, "queue": queue, "warning": warning}
        for name, queue in sorted(kinds)
        if (warning := no_worker(core, name, queue))
    ]
    busy = not core.peers.any_credit()  # no worker here takes them now: maybe another daemon's
    core.made_ready.update(w["queue"] for w in warnings)
    if busy:
        core.made_ready.update(queue for _name, queue in kinds)
    if warnings:  # by name and queue: the client gives each task its own
        reply["warnings"] = warnings
    return reply


def every(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    spec, recurrence = check_every(h, core.limits, core.settings.timezone)
    first = spec.get("first_due")
    if first is None:
        first = recurrence.next_after(when.from_timestamp(now)).timestamp()
    if spec.get("until") is not None and spec["until"] < first:
        raise BadSchedule(
            f"until ({iso(spec['until'])}) is before the first run ({iso(first)}); nothing would ever run"
        )
    sched_id, created = core.store.add_schedule(spec, first, now)
    core.wakeup_dirty = True
    if created:
        log.info("schedule s%s %s every %s, first due %s", sched_id, spec["name"], spec["spec"], iso(first))
    reply = {"id": f"s{sched_id}", "created": created, "next_due": iso(first)}
    warning = no_worker(core, spec["name"], spec.get("queue") or DEFAULT_QUEUE)
    if warning:
        reply["warning"] = warning
    return reply


def get(r: Request) -> dict[str, Any] | None:
    core, h = r.core, r.header
    return {"item": lookup(core, h.get("id"))}


def show(r: Request) -> dict[str, Any] | None:
    core, h = r.core, r.header
    item = lookup(core, h.get("id"), upcoming=5)
    if item["kind"] == "task":
        item["attempts"] = attempt_infos(core.store.attempts(item["id"]))
        item["waiting"] = waiting_reason(core, item)
        item.update(core.store.links(item["id"]))  # parents, children
        item["events"] = [  # its latest, as a subscriber gets them
            {**json.loads(body), "event_id": event_id, "at": iso(at)}
            for event_id, at, body in core.store.events_of(item["id"], SHOWN_EVENTS)
        ]
    else:
        recent, _ = task_page(core.store.search_tasks(query.Search(schedule_id=int(item["id"][1:])), 10))
        item["recent_runs"] = [
            {
                "id": r["id"],
                "status": r["status"],
                "due_at": r["due_at"],
                "finished_at": r["finished_at"],
                # a run that succeeded in the end keeps its earlier attempt's error: not its outcome
                "error_type": None if r["status"] == "succeeded" else (r["error"] or {}).get("type"),
            }
            for r in recent
        ]
    return {"item": item}


def list_tasks(r: Request) -> dict[str, Any] | None:
    """A page of tasks matching the filters and the cursor of the next; or, with
    `count`, how many match by status. See query.py."""
    core, h = r.core, r.header
    wanted, limit = query.check_search(h)
    if h.get("count"):
        counts = core.store.count_tasks(wanted)
        return {"counts": counts, "total": sum(counts.values())}
    items, last = task_page(core.store.search_tasks(wanted, limit))
    cursor = None if last is None else query.encode_cursor(wanted.sort, *last)
    return {"items": items, "next": cursor}


def schedules(r: Request) -> dict[str, Any] | None:
    core = r.core
    return {"items": [schedule_info(row) for row in core.store.list_schedules()]}


def revoke(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    kind, num = resolve(core, h.get("id"))
    if kind == "schedule":
        if not core.store.remove_schedule(num, now):
            lookup(core, h.get("id"))  # raises if missing
            return {"status": "removed"}
        core.wakeup_dirty = True
        log.info("schedule s%s removed", num)
        return {"status": "removed"}
    status, also = core.store.revoke_task(num, now)
    if status == Revoked.CANCELLING:
        peer = core.peers.owner(num)
        if peer is not None:
            r.out.send(peer.ident, Cancel(num))
    elif status == Revoked.CANCELLED:
        r.out.ended.extend([num, *also])
        core.cancelled_events(r.out.events, [num, *also])
    log.info("task %s revoked: %s%s", num, status, f" (and tasks {also} that waited on it)" if also else "")
    return {"status": status, "also_cancelled": also}


def retry(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    num = task_ref(core, h.get("id"))
    attempts = rules.check_attempts(h.get("attempts"), "attempts")
    status = core.store.retry_task(num, now, attempts)
    core.dispatch_pending = True
    core.queues_ready()
    log.info("task %s retried by an operator", num)
    return {"status": status}


def stall(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    num = task_ref(core, h.get("id"))
    reason = h.get("reason") or "stalled by an operator"
    status = core.store.stall_task(num, now, clean_text(reason, 1000))
    log.info("task %s stalled by an operator", num)
    return {"status": status}


def task_ref(core: State, ref: Any) -> int:
    kind, num = resolve(core, ref)
    if kind != "task":
        raise BadInput(f"{ref!r} is a schedule id; tasks have ids like 42")
    return num


def update(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    kind, num = resolve(core, h.get("id"))
    args = None if h.get("args") is None else check_args(h.get("args"), core.limits)
    if kind == "schedule":
        current = lookup(core, h.get("id"))
        recurrence, tz = None, h.get("timezone")
        if h.get("every") is not None:
            recurrence = when.parse_every(h["every"], tz or current["timezone"], core.limits.min_interval)
        if args is None and recurrence is None:
            raise BadInput("nothing to update: give args and/or every")
        status = core.store.update_schedule(num, now, args, recurrence, tz)
        core.wakeup_dirty = True
        return {"status": status}
    if args is None:
        raise BadInput("args must be a JSON object")
    status = core.store.update_task_args(num, args, now)
    return {"status": status}


def pause(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    num = schedule_ref(core, h.get("id"))
    status = core.store.pause_schedule(num, now)
    log.info("schedule s%s paused", num)
    return {"status": status}


def resume(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    num = schedule_ref(core, h.get("id"))
    status = core.store.resume_schedule(num, now)
    core.wakeup_dirty = True
    log.info("schedule s%s resumed", num)
    return {"status": status}


def schedule_ref(core: State, ref: Any) -> int:
    kind, num = resolve(core, ref)
    if kind != "schedule":
        raise BadInput(f"{ref!r} is a task id; schedules have ids like s7")
    return num


def wait(r: Request) -> dict[str, Any] | None:
    core, h, now = r.core, r.header, r.now
    kind, num = resolve(core, h.get("id"))
    if kind != "task":
        raise BadInput("only tasks can be waited for")
    item = maybe_task_info(core.store.get_task(num))
    if item is None:
        raise TaskNotFound(f"no task with id {num}")
    if item["status"] in TERMINAL:
        return {"item": item, "done": True}
    timeout = h.get("wait_for", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise BadInput("wait_for must be a number of seconds")
    if sum(len(w) for w in core.waiters.values()) >= MAX_WAITERS:
        raise BadInput(f"too many clients are waiting already ({MAX_WAITERS}); poll with get() instead")
    core.wait(num, r.ident, r.rid, now + min(timeout, 3600))
    if core.other_daemons:  # the task may end through one of them: ask to be told (elsewhere.py)
        core.store.announce({"from": core.epoch, "wait": [num]})
    return None  # answered when the task ends, or at the deadline


def finished(r: Request) -> dict[str, Any] | None:
    """Tasks that reached their end through this daemon, by minute, over the last hour."""
    return {"per_minute": r.core.finished.last_hour(r.now)}


def subscribe(r: Request) -> dict[str, Any] | None:
    """Events pushed to this client from now, or from after `since` (events.py)."""
    core, h, now = r.core, r.header, r.now
    if core.hub.foreign and r.ident not in core.hub.subscribers:
        elsewhere.watch(core)  # at once, not at the next tick: the others' events from now on
    return core.hub.subscribe(core.store, r.ident, h.get("since"), now)


def resolve(core: State, ref: Any) -> tuple[str, int]:
    """An id (42, "s7") or a key ("avatar-7", or "key:42" for a key that looks like an id)."""
    try:
        return parse_ref(ref)
    except BadInput:
        if not isinstance(ref, str) or not 0 < len(ref) <= 260 or not ref.isprintable():
            raise
    found = core.store.find_key(ref[4:] if ref.startswith("key:") else ref)
    if found is None:
        raise TaskNotFound(f"no task or schedule with the id or key {ref[:80]!r}")
    return found


def lookup(core: State, ref: Any, upcoming: int = 0) -> dict[str, Any]:
    kind, num = resolve(core, ref)
    if kind == "task":
        item = maybe_task_info(core.store.get_task(num))
    else:
        item = maybe_schedule_info(core.store.get_schedule(num, upcoming))
    if item is None:
        raise TaskNotFound(f"no {kind} with id {ref}")
    return item


OPS: dict[str, Callable[[Request], dict[str, Any] | None]] = {
    "ping": ping,
    "execute": execute,
    "schedule": execute,
    "execute_many": execute_many,
    "every": every,
    "get": get,
    "show": show,
    "list": list_tasks,
    "schedules": schedules,
    "revoke": revoke,
    "retry": retry,
    "stall": stall,
    "update": update,
    "pause": pause,
    "resume": resume,
    "wait": wait,
    "queues": queue_ops.queues,
    "pause_queue": queue_ops.pause_queue,
    "resume_queue": queue_ops.resume_queue,
    "set_queue": queue_ops.set_queue,
    "limits": queue_ops.limits,
    "set_limit": queue_ops.set_limit,
    "prune": queue_ops.prune,
    "subscribe": subscribe,
    "daemons": presence.daemons,
    "workers": workers.listing,
    "finished": finished,
}
