"""The daemon's answers to client requests: one `_op_<name>` method per request.

A mixin of `Daemon`: these run inside its loop, in the turn's transaction,
and see its store, worker table and lanes. Each returns the reply's fields,
or None when the reply comes later (wait).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from martinet import protocol, query, rules, when
from martinet.errors import BadInput, BadSchedule, TaskNotFound
from martinet.lanes import DEFAULT_QUEUE, Queue, queue_columns
from martinet.models import FAILED, QUEUED, SCHEDULED, STALLED, STATES, TERMINAL, WAITING
from martinet.present import attempt_infos, maybe_schedule_info, maybe_task_info, schedule_info, task_page
from martinet.protocol import Cmd
from martinet.states import Revoked
from martinet.store import PRUNE_BATCH, iso
from martinet.validate import check_args, check_every, check_task, clean_text, is_id, parse_ref

log = logging.getLogger("martinet.daemon")

MAX_BATCH = 10_000  # tasks in one execute_many request; the payload limit bounds it too
MAX_WAITERS = 100_000  # pending wait() requests at most: a flood cannot grow memory without bound


class ClientOps:
    def _op_ping(self, h, now, out, ident):
        # database: the failure that lasts (its cause, since when, turns lost), or None
        return {
            "epoch": self.epoch,
            "database_id": self.database_id,
            "version": protocol.VERSION,
            "workers": len(self.peers),
            "database": self.db_health.report(),
        }

    def _op_execute(self, h, now, out, ident):
        spec = check_task(h, self.limits, self.settings.max_attempts)
        task_id, created = self.store.submit(spec, now)
        if spec.get("run_at") and spec["run_at"] > now:
            self._wakeup_dirty = True
        self.lanes.ready(spec.get("queue") or DEFAULT_QUEUE)
        self._dispatch_pending = True
        if created and log.isEnabledFor(logging.INFO):  # iso() costs a few µs on every call otherwise
            log.info("task %s %s accepted (run at %s)", task_id, spec["name"], iso(spec.get("run_at") or now))
        reply = {"id": task_id, "created": created}
        warning = self._no_worker(spec["name"], spec.get("queue") or DEFAULT_QUEUE)
        if warning:
            reply["warning"] = warning
        return reply

    _op_schedule = _op_execute

    def _op_execute_many(self, h, now, out, ident):
        """Many tasks in one request and one commit; all are accepted, or none."""
        tasks = h.get("tasks")
        if not isinstance(tasks, list) or not 0 < len(tasks) <= MAX_BATCH:
            raise BadInput(f"tasks must be a list of 1 to {MAX_BATCH} task objects")
        specs = []
        for i, item in enumerate(tasks):
            if not isinstance(item, dict):
                raise BadInput(f"task {i} of the batch is not an object")
            try:
                specs.append(check_task(item, self.limits, self.settings.max_attempts))
            except BadInput as exc:
                raise BadInput(f"task {i} of the batch: {exc}; nothing was created") from None
        results = self.store.submit_many(specs, now)
        for queue in {spec.get("queue") or DEFAULT_QUEUE for spec in specs}:
            self.lanes.ready(queue)
        if any(spec.get("run_at") and spec["run_at"] > now for spec in specs):
            self._wakeup_dirty = True
        self._dispatch_pending = True
        created = [new for _id, new in results]
        log.info("%d tasks accepted in one batch (%d new)", len(results), sum(created))
        reply: dict[str, Any] = {"ids": [task_id for task_id, _new in results], "created": created}
        kinds = {(spec["name"], spec.get("queue") or DEFAULT_QUEUE) for spec in specs}
        warnings = [
            {"name": name, "queue": queue, "warning": warning}
            for name, queue in sorted(kinds)
            if (warning := self._no_worker(name, queue))
        ]
        if warnings:  # by name and queue: the client gives each task its own
            reply["warnings"] = warnings
        return reply

    def _op_every(self, h, now, out, ident):
        spec, recurrence = check_every(h, self.limits, self.settings.timezone)
        first = spec.get("first_due")
        if first is None:
            first = recurrence.next_after(when.from_timestamp(now)).timestamp()
        if spec.get("until") is not None and spec["until"] < first:
            raise BadSchedule(
                f"until ({iso(spec['until'])}) is before the first run ({iso(first)}); nothing would ever run"
            )
        sched_id, created = self.store.add_schedule(spec, first, now)
        self._wakeup_dirty = True
        if created:
            log.info(
                "schedule s%s %s every %s, first due %s", sched_id, spec["name"], spec["spec"], iso(first)
            )
        reply = {"id": f"s{sched_id}", "created": created, "next_due": iso(first)}
        warning = self._no_worker(spec["name"], spec.get("queue") or DEFAULT_QUEUE)
        if warning:
            reply["warning"] = warning
        return reply

    def _op_get(self, h, now, out, ident):
        return {"item": self._lookup(h.get("id"))}

    def _op_show(self, h, now, out, ident):
        item = self._lookup(h.get("id"), upcoming=5)
        if item["kind"] == "task":
            item["attempts"] = attempt_infos(self.store.attempts(item["id"]))
            item["waiting"] = self._waiting_reason(item)
        else:
            recent, _ = task_page(self.store.search_tasks(query.Search(schedule_id=int(item["id"][1:])), 10))
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

    def _op_list(self, h, now, out, ident):
        """A page of tasks matching the filters and the cursor of the next; or, with
        `count`, how many match by status. See query.py."""
        wanted, limit = query.check_search(h)
        if h.get("count"):
            counts = self.store.count_tasks(wanted)
            return {"counts": counts, "total": sum(counts.values())}
        items, last = task_page(self.store.search_tasks(wanted, limit))
        cursor = None if last is None else query.encode_cursor(wanted.sort, *last)
        return {"items": items, "next": cursor}

    def _op_schedules(self, h, now, out, ident):
        return {"items": [schedule_info(row) for row in self.store.list_schedules()]}

    def _op_revoke(self, h, now, out, ident):
        kind, num = self._ref(h.get("id"))
        if kind == "schedule":
            if not self.store.remove_schedule(num, now):
                self._lookup(h.get("id"))  # raises if missing
                return {"status": "removed"}
            self._wakeup_dirty = True
            log.info("schedule s%s removed", num)
            return {"status": "removed"}
        status, also = self.store.revoke_task(num, now)
        if status == Revoked.CANCELLING:
            peer = self.peers.owner(num)
            if peer is not None:
                self._send(self.worker, peer.ident, Cmd.CANCEL, {"id": num})
        elif status == Revoked.CANCELLED:
            out.ended.extend([num, *also])
            self._cancelled_events(out.events, [num, *also])
        log.info(
            "task %s revoked: %s%s", num, status, f" (and tasks {also} that waited on it)" if also else ""
        )
        return {"status": status, "also_cancelled": also}

    def _op_retry(self, h, now, out, ident):
        num = self._task_ref(h.get("id"))
        attempts = rules.check_attempts(h.get("attempts"), "attempts")
        status = self.store.retry_task(num, now, attempts)
        self._dispatch_pending = True
        self._queues_ready()
        log.info("task %s retried by an operator", num)
        return {"status": status}

    def _op_stall(self, h, now, out, ident):
        num = self._task_ref(h.get("id"))
        reason = h.get("reason") or "stalled by an operator"
        status = self.store.stall_task(num, now, clean_text(reason, 1000))
        log.info("task %s stalled by an operator", num)
        return {"status": status}

    def _task_ref(self, ref: Any) -> int:
        kind, num = self._ref(ref)
        if kind != "task":
            raise BadInput(f"{ref!r} is a schedule id; tasks have ids like 42")
        return num

    def _op_update(self, h, now, out, ident):
        kind, num = self._ref(h.get("id"))
        args = None if h.get("args") is None else check_args(h.get("args"), self.limits)
        if kind == "schedule":
            current = self._lookup(h.get("id"))
            recurrence, tz = None, h.get("timezone")
            if h.get("every") is not None:
                recurrence = when.parse_every(h["every"], tz or current["timezone"], self.limits.min_interval)
            if args is None and recurrence is None:
                raise BadInput("nothing to update: give args and/or every")
            status = self.store.update_schedule(num, now, args, recurrence, tz)
            self._wakeup_dirty = True
            return {"status": status}
        if args is None:
            raise BadInput("args must be a JSON object")
        status = self.store.update_task_args(num, args, now)
        return {"status": status}

    def _op_pause(self, h, now, out, ident):
        num = self._schedule_ref(h.get("id"))
        status = self.store.pause_schedule(num, now)
        log.info("schedule s%s paused", num)
        return {"status": status}

    def _op_resume(self, h, now, out, ident):
        num = self._schedule_ref(h.get("id"))
        status = self.store.resume_schedule(num, now)
        self._wakeup_dirty = True
        log.info("schedule s%s resumed", num)
        return {"status": status}

    def _schedule_ref(self, ref: Any) -> int:
        kind, num = self._ref(ref)
        if kind != "schedule":
            raise BadInput(f"{ref!r} is a task id; schedules have ids like s7")
        return num

    def _op_wait(self, h, now, out, ident):
        kind, num = self._ref(h.get("id"))
        if kind != "task":
            raise BadInput("only tasks can be waited for")
        item = maybe_task_info(self.store.get_task(num))
        if item is None:
            raise TaskNotFound(f"no task with id {num}")
        if item["status"] in TERMINAL:
            return {"item": item, "done": True}
        timeout = h.get("wait_for", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise BadInput("wait_for must be a number of seconds")
        if sum(len(w) for w in self._waiters.values()) >= MAX_WAITERS:
            raise BadInput(f"too many clients are waiting already ({MAX_WAITERS}); poll with get() instead")
        deadline = now + min(timeout, 3600)
        self._waiters.setdefault(num, []).append((ident, h.get("rid"), deadline))
        self._waiters_due = min(self._waiters_due, deadline)
        return None  # answered when the task ends, or at the deadline

    def _op_queues(self, h, now, out, ident):
        stats = self.store.queue_stats()
        names = sorted(set(self.lanes.queues) | set(stats))
        items = []
        for name in names:
            q = self.lanes.queues.get(name) or Queue()  # a read: no lane is made for it
            st = stats.get(name, {"counts": {}, "oldest": None})
            items.append(
                {
                    "name": name,
                    "paused": q.paused,
                    "weight": q.weight,
                    "order": q.order,
                    "concurrency": q.concurrency,
                    "rate": None if q.rate is None else f"{q.rate[0]}/{q.rate[1]:g}s",
                    "running": q.running,
                    "counts": st["counts"],
                    "oldest_waiting_seconds": None
                    if st["oldest"] is None
                    else round(max(0.0, now - st["oldest"]), 3),
                    "served_by": sum(1 for p in self.peers if p.queues is None or name in p.queues),
                }
            )
        return {"items": items}

    def _op_pause_queue(self, h, now, out, ident):
        return self._set_queue(h, now, {"paused": True})

    def _op_resume_queue(self, h, now, out, ident):
        return self._set_queue(h, now, {"paused": False})

    def _op_set_queue(self, h, now, out, ident):
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
        if h.get("weight") is not None:
            changes["weight"] = rules.check_count(h["weight"], "weight", most=rules.MAX_QUEUE_LIMIT)
        if h.get("order") is not None:
            if h["order"] not in rules.QUEUE_ORDERS:
                raise BadInput(f"order must be 'fifo' or 'random', not {str(h['order'])[:40]!r}")
            changes["order"] = h["order"]
        if not changes:
            raise BadInput("nothing to set: give concurrency, rate, weight or order")
        return self._set_queue(h, now, changes)

    def _set_queue(self, h: dict, now: float, changes: dict) -> dict:
        name = rules.check_queue_name(h.get("name"))
        self.store.save_queue(name, now, **queue_columns(changes))
        self.lanes.configure(name, **changes)
        self.lanes.ready(name)
        self._dispatch_pending = True
        log.info("queue %s: %s", name, changes)
        return {"name": name, "status": "paused" if self.lanes.queue(name).paused else "active"}

    def _op_prune(self, h, now, out, ident):
        """Delete (or with dry_run, count) finished tasks older than `older_than`, one
        bounded batch per request: a million old tasks never hold the loop up. The
        reply says `more` with where it stopped (`after`) and the cutoff it used
        (`before`); the client sends both back until `more` is false."""
        statuses = _finished_states(h.get("status"))
        before = h.get("before")
        if before is None:
            before = now - when.parse_age(h.get("older_than"))
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
                raise BadInput(
                    f"after must be the [finished_at, id] of a prune reply, got {str(after)[:60]!r}"
                )
            after = (float(after[0]), after[1])
        dry_run = bool(h.get("dry_run"))
        pruned = self.store.prune(dict.fromkeys(statuses, before), PRUNE_BATCH, after, dry_run=dry_run)
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

    def _op_subscribe(self, h, now, out, ident):
        """Events pushed to this client from now, or from after `since` (events.py)."""
        return self.hub.subscribe(self.store, ident, h.get("since"), now)

    def _ref(self, ref: Any) -> tuple[str, int]:
        """An id (42, "s7") or a key ("avatar-7", or "key:42" for a key that looks like an id)."""
        try:
            return parse_ref(ref)
        except BadInput:
            if not isinstance(ref, str) or not 0 < len(ref) <= 260 or not ref.isprintable():
                raise
        found = self.store.find_key(ref[4:] if ref.startswith("key:") else ref)
        if found is None:
            raise TaskNotFound(f"no task or schedule with the id or key {ref[:80]!r}")
        return found

    def _lookup(self, ref: Any, upcoming: int = 0) -> dict:
        kind, num = self._ref(ref)
        if kind == "task":
            item = maybe_task_info(self.store.get_task(num))
        else:
            item = maybe_schedule_info(self.store.get_schedule(num, upcoming))
        if item is None:
            raise TaskNotFound(f"no {kind} with id {ref}")
        return item

    def _waiting_reason(self, item: dict) -> str | None:
        status, name = item["status"], item["name"]
        if status == SCHEDULED:
            return f"scheduled for {item['run_at']}"
        if status == FAILED:
            return f"attempt {item['attempt']} failed; retry at {item['run_at']}"
        if status == STALLED:
            return f"{item['reason'] or 'stalled'}; held until `martinet retry {item['id']}`"
        if status == WAITING:
            parents = self.store.unfinished_parents(item["id"])
            return f"waiting for task(s) {', '.join(map(str, parents))} to succeed"
        if status != QUEUED:
            return None
        queue = item["queue"]
        lane = self.lanes.queue(queue)
        if lane.paused:
            return f"queue {queue!r} is paused"
        none = self._no_worker(name, queue)
        if none:
            return none
        handlers = self.peers.handles(name, queue)
        now = self.clock()
        if lane.room(now) == 0:
            return f"queue {queue!r} is at its limit (concurrency {lane.concurrency}, rate {lane.rate})"
        if self.lanes.name_room(name, now) == 0:
            return f"task name {name!r} is at its fleet-wide limit"
        if not any(p.credit for p in handlers):
            return f"all {len(handlers)} worker(s) that handle {name!r} are busy"
        return "about to be dispatched"

    def _no_worker(self, name, queue):
        """Why no connected worker would take a task of `name` in `queue`, or None (one would).
        Said by `show` and as a warning when such a task is submitted (a typo, a worker not
        started, or started without that queue)."""
        if self.peers.serves(name, queue):
            return None
        if not self.peers.serves(name):
            return f"no connected worker handles {name!r}"
        return f"no connected worker that handles {name!r} serves queue {queue!r}"


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
