"""The task commands: execute, schedule, every, list, show, wait, revoke, retry, stall,
update, prune. Each takes the Martinet handle and the parsed arguments and returns the exit code."""

from __future__ import annotations

import json
import sys

from martinet.cli.inputs import list_filters, many_lines, read_args, task_spec
from martinet.cli.output import STATE_ORDER, emit, warn_submitted
from martinet.cli.waiting import wait_and_print, wait_many


def cmd_execute(m, args) -> int:
    wait = args.wait or args.wait_for is not None
    if args.many:
        ids = m.execute_many(
            [(task_spec(args), a) for a in many_lines(args.many)], request_id=args.request_id
        )
        summary = f"{len(ids)} tasks accepted" + (f" ({ids[0]}..{ids[-1]})" if ids else "")
        warnings = list(dict.fromkeys(t.warning for t in ids if t.warning))  # one per name and queue
        if wait:
            print(summary, file=sys.stderr)
        else:
            emit(args, {"ids": ids, **({"warnings": warnings} if warnings else {})}, summary)
        for warning in warnings:
            warn_submitted(warning)
        return wait_many(m, args, ids) if wait else 0
    tid = m.execute(task_spec(args), read_args(args.args), request_id=args.request_id)
    warn_submitted(tid.warning)
    if not wait:
        emit(args, {"id": tid, **({"warning": tid.warning} if tid.warning else {})}, f"task {tid} accepted")
        return 0
    return wait_and_print(m, args, tid)


def cmd_schedule(m, args) -> int:
    tid = m.schedule(args.when, task_spec(args), read_args(args.args), request_id=args.request_id)
    item = m.get(tid)
    data = {"id": tid, "run_at": item["run_at"], **({"warning": tid.warning} if tid.warning else {})}
    emit(args, data, f"task {tid} scheduled for {item['run_at']}")
    warn_submitted(tid.warning)
    return 0


def cmd_every(m, args) -> int:
    task = task_spec(args)
    for key in ("run_at", "until", "count", "misfire", "misfire_grace"):
        if getattr(args, key) is not None:
            task[key] = getattr(args, key)
    sid = m.every(args.spec, task, read_args(args.args), request_id=args.request_id)
    item = m.get(sid)
    emit(
        args,
        {"id": sid, "next_due": item["next_due"], **({"warning": sid.warning} if sid.warning else {})},
        f"schedule {sid} created; first run at {item['next_due']}",
    )
    warn_submitted(sid.warning)
    return 0


def cmd_list(m, args) -> int:
    filters = list_filters(args)
    if args.count:
        counts = m.count(**filters)
        total = sum(counts.values())
        if args.json:
            emit(args, {"counts": counts, "total": total}, "")
            return 0
        for state in sorted(counts, key=STATE_ORDER.index):
            print(f"{state:<10} {counts[state]:>10}")
        print(f"{'total':<10} {total:>10}")
        return 0
    page = m.search(limit=args.limit, after=args.after, sort=args.sort, **filters)
    if args.json:
        emit(args, {"items": page.items, "next": page.next}, "")
        return 0
    if not page.items:
        print("no tasks")
        return 0
    column = {"created": "created_at", "due": "run_at", "finished": "finished_at"}[args.sort]
    print(f"{'ID':>8}  {'STATUS':<10} {'NAME':<20} {'USER':<12} {'ATTEMPT':<8} {column.upper():<29}")
    for t in page.items:
        attempts = f"{t['attempt']}/{t['max_attempts']}"
        print(
            f"{t['id']:>8}  {t['status']:<10} {t['name'][:20]:<20} {(t['username'] or '-')[:12]:<12} "
            f"{attempts:<8} {t[column]:<29}"
        )
    if page.next:
        print(f"more: martinet list ... --after {page.next}")
    return 0


def cmd_show(m, args) -> int:
    item = m.show(args.id)
    if args.json:
        emit(args, item, "")
        return 0
    skip = {
        "attempts",
        "recent_runs",
        "upcoming",
        "error",
        "kind",
        "progress_message",
        "events",
        "parents",
        "children",
    }
    for key, value in item.items():
        if key == "progress" and (value is not None or item.get("progress_message")):
            percent = "-" if value is None else f"{value:.0%}"
            print(
                f"{key:>17}: {percent}"
                + (f" {item['progress_message']}" if item.get("progress_message") else "")
            )
        elif key not in skip and value is not None:
            print(f"{key:>17}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    error = item.get("error")
    if error:
        label = "earlier error" if item.get("status") == "succeeded" else "error"  # a retry then succeeded
        print(f"{label:>17}: {error['type']}: {error['message']}")
        if error.get("traceback"):
            print("\n".join("    " + line for line in error["traceback"].rstrip().splitlines()))
    if item.get("kind") == "task":
        attempts = item.get("attempts", [])
        print(f"attempts ({len(attempts)}):" if attempts else "attempts: none finished yet")
        for a in attempts:
            took = "" if a["duration"] is None else f" ({a['duration']:.3f}s)"
            outcome = a["outcome"] + (
                f": {a['error']['type']}: {a['error']['message']}" if a["error"] else ""
            )
            print(
                f"  attempt {a['attempt']} on {a['worker'] or '-'}: {a['started_at'] or '?'} -> {a['ended_at']}"
                f"{took} {outcome}"
            )
        for key, label in (("parents", "waits on"), ("children", "waited on by")):
            if item.get(key):
                print(f"{label}: " + ", ".join(f"{t['id']} ({t['name']}, {t['status']})" for t in item[key]))
        if item.get("events"):
            print(
                f"events: the latest {len(item['events'])} in --json; live with `martinet watch {item['id']}`"
            )
        return 0
    print("upcoming:" if item.get("upcoming") else "upcoming: none")
    for due in item.get("upcoming", []):
        print(f"  next due {due}")
    runs = item.get("recent_runs", [])
    print(f"recent runs ({len(runs)}, newest first):" if runs else "recent runs: none")
    for r in runs:
        error = f" ({r['error_type']})" if r.get("error_type") else ""
        finished = f", finished {r['finished_at']}" if r.get("finished_at") else ""
        print(f"  run {r['id']} due {r['due_at']}: {r['status']}{error}{finished}")
    return 0


def cmd_wait(m, args) -> int:
    return wait_and_print(m, args, args.id)


def cmd_revoke(m, args) -> int:
    status = m.revoke(args.id)
    emit(args, {"id": args.id, "status": status}, f"{args.id}: {status}")
    return 0


def cmd_retry(m, args) -> int:
    m.retry(args.id, args.attempts)
    emit(args, {"id": args.id, "status": "queued"}, f"{args.id}: queued")
    return 0


def cmd_stall(m, args) -> int:
    m.stall(args.id, args.reason)
    emit(args, {"id": args.id, "status": "stalled"}, f"{args.id}: stalled")
    return 0


def cmd_update(m, args) -> int:
    m.update(args.id, read_args(args.args))
    emit(args, {"id": args.id, "status": "updated"}, f"{args.id}: updated")
    return 0


def cmd_prune(m, args) -> int:
    statuses = [s.strip() for text in args.status or [] for s in text.split(",") if s.strip()]
    done = m.prune(args.older_than, statuses or None, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    emit(
        args,
        done,
        f"{verb} {done['tasks']:,} tasks and {done['attempts']:,} attempt rows "
        f"(finished before {done['before']})",
    )
    return 0
