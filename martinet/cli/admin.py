"""The commands about the system rather than one task: schedules, queues, limits, ping, daemons."""

from __future__ import annotations

from martinet import rules, when
from martinet.cli.inputs import read_args
from martinet.cli.output import counts_text, emit
from martinet.cli.tasks import cmd_show
from martinet.errors import MartinetError


def cmd_schedules(m, args) -> int:
    action = args.action or "list"
    if action == "show":
        return cmd_show(m, args)
    if action == "update":
        new_args = read_args(args.args) if args.args is not None else None
        m.update(args.id, new_args, every=args.every, timezone=args.timezone)
        emit(args, {"id": args.id, "status": "updated"}, f"{args.id}: updated")
        return 0
    if action in ("pause", "resume", "remove"):
        {"pause": m.pause, "resume": m.resume, "remove": m.revoke}[action](args.id)
        done = {"pause": "paused", "resume": "resumed", "remove": "removed"}[action]
        emit(args, {"id": args.id, "status": done}, f"{args.id}: {done}")
        return 0
    items = m.schedules()
    if args.json:
        emit(args, items, "")
        return 0
    if not items:
        print("no schedules")
        return 0
    print(f"{'ID':>6}  {'STATUS':<8} {'NAME':<20} {'EVERY':<20} {'ZONE':<16} {'NEXT DUE':<30}")
    for s in items:
        print(
            f"{s['id']:>6}  {s['status']:<8} {s['name'][:20]:<20} {s['every'][:20]:<20} "
            f"{s['timezone'][:16]:<16} {s['next_due'] or '-':<30}"
        )
    return 0


def cmd_queues(m, args) -> int:
    action = args.action or "list"
    if action in ("pause", "resume"):
        (m.pause_queue if action == "pause" else m.resume_queue)(args.name)
        done = {"pause": "paused", "resume": "resumed"}[action]
        emit(args, {"name": args.name, "status": done}, f"{args.name}: {done}")
        return 0
    if action == "set":
        changes = {
            "concurrency": args.concurrency,
            "rate": args.rate,
            "weight": args.weight,
            "order": args.order,
        }
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            raise MartinetError("nothing to set; give --concurrency, --rate, --weight or --order")
        if args.concurrency is not None:
            changes["concurrency"] = _concurrency_flag(args.concurrency)
        if args.weight is not None:
            rules.check_count(args.weight, "--weight", most=rules.MAX_QUEUE_LIMIT, whole=False)
        _check_rate_flag(args.rate)
        m.set_queue(args.name, **changes)
        emit(args, {"name": args.name, "status": "updated", **changes}, f"{args.name}: updated")
        return 0
    items = m.queues()
    if args.json:
        emit(args, items, "")
        return 0
    if not items:
        print("no queues")
        return 0
    print(
        f"{'NAME':<16} {'PAUSED':<6} {'WEIGHT':>6} {'ORDER':<6} {'CONCURRENCY':>11} {'RATE':<12} "
        f"{'RUNNING':>7} {'WAITING':>7} {'OLDEST':>9}  COUNTS"
    )
    for q in items:
        counts = q.get("counts") or {}
        oldest = q.get("oldest_waiting_seconds")
        concurrency = q.get("concurrency")
        print(
            f"{q['name'][:16]:<16} {'yes' if q.get('paused') else 'no':<6} {q.get('weight', 1):>6} "
            f"{q.get('order') or 'fifo':<6} {'-' if concurrency is None else concurrency:>11} "
            f"{(q.get('rate') or '-')[:12]:<12} {counts.get('running', 0):>7} {counts.get('queued', 0):>7} "
            f"{'-' if oldest is None else f'{oldest:.1f}s':>9}  {counts_text(counts)}"
        )
    return 0


def _concurrency_flag(text: str) -> int | str:
    """--concurrency N, or none: checked before the round trip."""
    if rules.means_none(text):
        return text
    text = text.strip()
    value = int(text) if text.isdecimal() else text
    return rules.check_count(value, "--concurrency", most=rules.MAX_QUEUE_LIMIT, clears=True, whole=False)


def _check_rate_flag(text: str | None) -> None:
    """--rate R, or none: a friendly error before the round trip."""
    if text is not None and not rules.means_none(text):
        when.parse_rate(text)


def cmd_limits(m, args) -> int:
    """Task names' fleet-wide limits: list them, or set one's (an admin's request)."""
    if args.action == "set":
        if args.concurrency is None and args.rate is None:
            raise MartinetError("nothing to set; give --concurrency or --rate ('none' clears one)")
        concurrency = None if args.concurrency is None else _concurrency_flag(args.concurrency)
        _check_rate_flag(args.rate)
        m.set_task_limit(args.name, concurrency, args.rate)
        changes = {k: v for k, v in (("concurrency", concurrency), ("rate", args.rate)) if v is not None}
        emit(args, {"name": args.name, "status": "updated", **changes}, f"{args.name}: updated")
        return 0
    items = m.task_limits()
    if args.json:
        emit(args, items, "")
        return 0
    if not items:
        print("no task name has limits (queues have their own: martinet queues)")
        return 0
    print(f"{'NAME':<24} {'CONCURRENCY':>11} {'RATE':<12} {'RUNNING':>7}")
    for item in items:
        concurrency = item.get("concurrency")
        print(
            f"{item['name'][:24]:<24} {'-' if concurrency is None else concurrency:>11} "
            f"{(item.get('rate') or '-')[:12]:<12} {item.get('running', 0):>7}"
        )
    return 0


def cmd_ping(m, args) -> int:
    """The daemon's epoch, protocol and workers, its database's identity, and the database's
    last failure while it lasts."""
    reply = m.ping()
    trouble = reply.get("database")
    data = {k: reply.get(k) for k in ("epoch", "version", "workers", "database", "database_id")}
    human = (
        f"daemon: answering (epoch {reply.get('epoch')}, protocol {reply.get('version')}, "
        f"database id {reply.get('database_id')}), {reply.get('workers')} worker(s) connected\n"
    )
    if trouble:
        human += (
            f"database: {trouble.get('error')} since {trouble.get('since')} "
            f"({trouble.get('failures')} turn(s) failed; nothing of them was committed)"
        )
    else:
        human += "database: ok"
    emit(args, data, human)
    return 1 if trouble else 0


WORKERS_HEADER = f"{'WORKER':<32} {'SLOTS':>9} {'HOLDS':>5} {'HEARD':>7}  RUNS (QUEUES)"


def worker_line(w: dict) -> str:
    """A worker of `workers` as one line under WORKERS_HEADER (`workers`, `top`)."""
    slots = f"{w['threads']}/{w.get('depth', w['capacity'])}"  # (depth: older daemons have none)
    queues = "all queues" if w["queues"] is None else ", ".join(w["queues"])
    stuck = f", {len(w['stuck'])} stuck" if w["stuck"] else ""
    return (
        f"{w['id'][:32]:<32} {slots:>9} {len(w['held']):>5} {w['last_seen_seconds']:>6.1f}s  "
        f"{', '.join(w['names'])} ({queues}){stuck}"
    )


def cmd_workers(m, args) -> int:
    """The daemon's workers: what each runs and holds, and when it was last heard from."""
    items = m.workers()
    if args.json:
        emit(args, items, "")
        return 0
    print(WORKERS_HEADER)
    for w in items:
        print(worker_line(w))
    if not items:
        print("no worker connected")
    return 0


def cmd_daemons(m, args) -> int:
    """Every daemon on the database, this one marked: serving, silent or stopped."""
    items = m.daemons()
    if args.json:
        emit(args, items, "")
        return 0
    print(
        f"  {'ID':<10} {'STATE':<8} {'ADDRESS':<28} {'HOST':<20} {'PID':>7}  {'STARTED':<24}  LAST HEARTBEAT"
    )
    for d in items:
        print(
            f"{'*' if d['this'] else ' '} {d['id'][:10]:<10} {d['state']:<8} {d['address'][:28]:<28} "
            f"{d['host'][:20]:<20} {d['pid']:>7}  {d['started_at']:<24}  {d['stopped_at'] or d['beat_at']}"
        )
    return 0
