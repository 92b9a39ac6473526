"""The status socket's decisions: starts, progress and outcomes of a turn, written together."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection
from typing import Any

import peewee

from martinet.errors import ProtocolError
from martinet.logs import about, size, told
from martinet.messages import Outcome, OutcomeKind, Progress, Started
from martinet.messages.fields import session_of
from martinet.messages.outcome import pace_of, started_items
from martinet.models import QUEUED, STALLED, TERMINAL
from martinet.protocol import Cmd
from martinet.server.events import attempt_event
from martinet.server.outbox import Outbox
from martinet.server.state import Messages, State

log = logging.getLogger("martinet.daemon")

FAILED = OutcomeKind.FAILED
_UNWRITTEN = object()  # an outcome whose writing failed: not acknowledged


def on_status_batch(core: State, msgs: Messages, out: Outbox, now: float) -> None:
    progress: dict[tuple[int, int, str], Progress] = {}  # coalesced: latest wins
    ended: list[tuple[bytes, Outcome]] = []  # (status ident, outcome)
    starts: list[tuple[int, int, str]] = []  # (id, attempt, worker): written first
    for ident, frames in msgs:
        cmd, h = core.decode("status", ident, frames)
        if cmd is None or not _from_its_worker(core, ident, cmd, h, now):
            continue
        if cmd is Cmd.STARTED:
            try:
                took = Started.from_header(h)  # handlers took these
            except ProtocolError:
                log.warning("dropped a STARTED without a valid worker_id from %r", ident)
                continue
            starts.extend((task_id, attempt, took.worker_id) for task_id, attempt in took.started)
        elif cmd is Cmd.PROGRESS:
            _progress(core, ident, h, progress, now)
        elif cmd is Cmd.ENDED or cmd is Cmd.DONE or cmd is Cmd.FAILED:
            _outcomes(core, ident, cmd, h, len(frames[0]), ended, starts, now)
        else:
            log.warning("dropped a %s command on the status socket", cmd.name)
    # A start that came with its attempt's outcome is written by the outcome's UPDATE;
    # the others before the progress and outcomes that came after them.
    reported = {(o.task_id, o.attempt, o.worker) for _ident, o in ended}
    folded = {
        (task_id, attempt) for task_id, attempt, worker in starts if (task_id, attempt, worker) in reported
    }
    if folded:
        starts = [s for s in starts if (s[0], s[1]) not in folded]
    if starts:
        with core.isolated("a start report"):
            core.store.start(starts, now)
    # Progress first: a handler's last report often comes in the turn of its outcome,
    # and once the attempt has ended it would be fenced out (a worker sends both on
    # one socket, in order, so no progress of an attempt comes after its outcome).
    for (task_id, attempt, worker_id), p in progress.items():
        with core.isolated(f"progress of task {task_id}"):
            updated = core.store.progress(task_id, attempt, worker_id, p.progress, p.message, now)
        if updated:
            out.events.append(
                {
                    "event": "progress",
                    "id": task_id,
                    "name": p.name,
                    "attempt": attempt,
                    "progress": p.progress,
                    "message": p.message,
                }
            )
    if ended:
        on_outcomes(core, ended, out, now, folded)


def _from_its_worker(core: State, ident: bytes, cmd: Cmd, h: dict[str, Any], now: float) -> bool:
    """Whether a status message comes from the worker it names: it carries the session
    that worker's welcome gave it (a worker id is public, a session is not), and with
    keys its connection has that worker's key. Else it is refused, and nothing of it is
    read: a forged outcome, or one sent before its worker's last hello (an outcome is
    sent again until acknowledged, with the session of the worker's new welcome)."""
    session = session_of(h)
    worker_id = h.get("worker_id")
    peer = core.peers.get(worker_id) if isinstance(worker_id, str) else None
    if (
        session is None
        or peer is None
        or not hmac.compare_digest(peer.session, session)
        or peer.key != core.key_of("status", ident)
    ):
        reason = "session"
        if session is None:
            reason, why = "no_session", "without the session its worker's welcome gave it"
        elif peer is None or not hmac.compare_digest(peer.session, session):
            why = (
                f"with a session no connected worker holds as {str(worker_id)[:80]!r} "
                "(sent before its worker's last hello, or forged)"
            )
        else:
            why = f"for worker {peer.worker_id} from a connection with another key than its own"
        core.refused("status", ident, reason, f"refused a {cmd.name} {why}: not written")
        return False
    core.peers.seen(peer.worker_id, now)
    return True


def _progress(
    core: State, ident: bytes, h: dict[str, Any], progress: dict[tuple[int, int, str], Progress], now: float
) -> None:
    """A PROGRESS, read (messages.Progress) and kept if it is the attempt's latest."""
    worker_id = h["worker_id"]  # (checked by _from_its_worker)
    try:
        p = Progress.from_header(h)
    except ProtocolError:
        log.warning("dropped a PROGRESS without a valid id and attempt from %s", worker_id)
        return
    if h.get("database") not in (None, core.database_id):
        _foreign(core, worker_id, 1)
        return
    progress[(p.task_id, p.attempt, worker_id)] = p


def _outcomes(
    core: State, ident: bytes, cmd: Cmd, h: dict[str, Any], size: int,
    ended: list[tuple[bytes, Outcome]], starts: list[tuple[int, int, str]], now: float,
) -> None:  # fmt: skip
    """An ENDED's outcomes (a DONE's or a FAILED's: one), each read as messages.Outcome,
    and the starts an ENDED carries."""
    worker_id = h["worker_id"]  # (checked by _from_its_worker)
    if cmd is Cmd.ENDED and "started" in h:  # handlers took these first
        starts.extend((task_id, attempt, worker_id) for task_id, attempt in started_items(h["started"]))
    pace = pace_of(h)
    if pace is not None and (peer := core.peers.get(worker_id)) is not None:  # its depth (Peer.depth)
        core.peers.paced(peer, pace)
    items = h.get("ended") if cmd is Cmd.ENDED else [{**h, "ok": cmd is Cmd.DONE}]
    if not isinstance(items, list):
        log.warning("dropped a %s without a list of outcomes from %s", cmd.name, worker_id)
        return
    # A result may be over max_payload (from a worker that does not check it: older, or
    # not ours): it is stored as the failure a worker would have reported, like args refused.
    max_payload = core.limits.max_payload if size > core.limits.max_payload else None
    foreign = 0
    for item in items:
        try:
            outcome = Outcome.from_item(item, worker_id, max_payload)
        except ProtocolError:
            log.warning("dropped a %s without a valid id and attempt from %s", cmd.name, worker_id)
            continue
        except Exception:  # a bug of ours must cost one outcome, never the turn
            log.exception("dropped an outcome of task %s from %s", item["id"], worker_id)
            continue
        if item.get("database") not in (None, core.database_id):
            foreign += 1  # not acknowledged: the worker keeps it for the daemon it is for
            continue
        if max_payload is not None and outcome.kind is FAILED and item.get("ok"):
            log.warning("task %s attempt %s from %s: %s", outcome.task_id, outcome.attempt, worker_id,
                        outcome.error["message"] if outcome.error else "")  # fmt: skip
        ended.append((ident, outcome))
    if foreign:
        _foreign(core, worker_id, foreign)


def _foreign(core: State, worker_id: str, count: int) -> None:
    # A daemon of another database was at this address (its worker has not said hello
    # to us yet: it will, and learn which database this is, from our welcome).
    log.warning(
        "ignored %d outcome(s) from %s meant for another database, not this one (%s)",
        count, worker_id, core.database_id,
    )  # fmt: skip


def on_outcomes(
    core: State, ended: list[tuple[bytes, Outcome]], out: Outbox, now: float, started: Collection[tuple[int, int]] = ()
) -> None:  # fmt: skip
    """Outcomes of one turn, written together; should that fail, one by one, so that a
    bad one costs only itself (it is not acknowledged: its worker sends it again).
    `started`: (id, attempt) of those whose start came with them (Outcomes.end_attempts)."""
    outcomes = [outcome for _ident, outcome in ended]
    infos: list[Any]
    try:
        with core.store.atomic():
            infos = core.store.end_attempts(outcomes, now, started)
    except (peewee.OperationalError, peewee.InterfaceError):
        raise  # the database itself is in trouble: the whole turn fails
    except Exception:
        log.exception("%d outcomes failed together; taking them one by one", len(outcomes))
        if started:  # written on their own first, as they would have been: an outcome may fail alone
            with core.isolated("a start report"):
                core.store.start([(o.task_id, o.attempt, o.worker) for o in outcomes
                                  if (o.task_id, o.attempt) in started], now)  # fmt: skip
        infos = []
        for outcome in outcomes:
            infos.append(_UNWRITTEN)
            with core.isolated(f"the outcome of task {outcome.task_id}"):
                infos[-1] = core.store.end_attempts([outcome], now)[0]
    freed: list[int] = []  # their slots, given back together once all are read
    for (ident, outcome), info in zip(ended, infos, strict=True):
        if info is _UNWRITTEN:
            continue
        # Acknowledged even when fenced out: a late or repeated answer changes nothing.
        out.acks.setdefault(ident, []).append((outcome.task_id, outcome.attempt))
        if info is None:
            core.peers.unstick(outcome.worker, outcome.task_id)  # if stuck in it, it is free again
            log.info(
                "ignored a late outcome for task %s attempt %s from %s",
                outcome.task_id, outcome.attempt, outcome.worker,
                extra=about(outcome.task_id, None, outcome.attempt, outcome.worker),
            )  # fmt: skip
        else:
            _ended(core, info, outcome, out, now, freed)
    core.peers.release_all(freed, now)


def _ended(
    core: State, info: dict[str, Any], outcome: Outcome, out: Outbox, now: float, freed: list[int]
) -> None:
    """An attempt ended as its worker said: its slot to free (`freed`), log it, tell who listens."""
    task_id, attempt, worker_id = outcome.task_id, outcome.attempt, outcome.worker
    late, status = info.pop("late", False), info["status"]
    # The fields of its log lines (logs.py); a success logs none at INFO (most of a drain)
    quiet = status == "succeeded" and not late and not log.isEnabledFor(logging.DEBUG)
    fields = {} if quiet else about(task_id, info["name"], attempt, worker_id)
    if late:  # its slot was freed when the daemon thought it lost
        log.warning(
            "task %s %s attempt %s succeeded on %s after all (it had been declared lost): result kept",
            task_id, info["name"], attempt, worker_id, extra=fields,
        )  # fmt: skip
    else:
        freed.append(task_id)
        core.lanes.ended(info["queue"], info["name"])
    core.dispatch_pending = True
    lanes = core.lanes
    limited = lanes.queue(info["queue"]).concurrency is not None or info["name"] in lanes.names
    if limited or status == QUEUED:  # a limit has room again, or the task is back (released)
        lanes.ready(info["queue"])
    error = info["error"] or {}
    if status == "succeeded":
        if not quiet:  # (not even the call, for most of a drain)
            log.debug(
                "task %s %s attempt %s succeeded on %s",
                task_id,
                info["name"],
                attempt,
                worker_id,
                extra=fields,
            )
    elif status == "failed":
        core.wakeup_dirty = True
        # (an error's text, and a reason given back, are logged at DEBUG only, below: they
        # often hold the task's data; told() says the error's type and size)
        log.warning(
            "task %s %s attempt %s failed on %s: %s; retry at %s",
            task_id, info["name"], attempt, worker_id, told(error), info["run_at"], extra=fields,
        )  # fmt: skip
    elif status == "cancelled":
        log.info(
            "task %s %s attempt %s cancelled on %s", task_id, info["name"], attempt, worker_id, extra=fields
        )
    elif info["outcome"] == "released" and status != STALLED:
        core.dispatch_pending = core.wakeup_dirty = True
        log.info(
            "task %s %s given back by %s (%d bytes of reason)",
            task_id, info["name"], worker_id, size(info["reason"] or ""), extra=fields,
        )  # fmt: skip
    else:
        log.error(
            "task %s %s attempt %s %s on %s: %s",
            task_id, info["name"], attempt, status, worker_id,
            told(error) if error else f"{size(info.get('reason') or '')} bytes of reason", extra=fields,
        )  # fmt: skip
    if error or info.get("reason"):
        log.debug("task %s attempt %s %s: error %s: %r; reason: %r", task_id, attempt, status,
                  error.get("type"), error.get("message"), info.get("reason"), extra=fields)  # fmt: skip
    settled = info.pop("dependents")
    if settled["released"]:  # they may wait in other queues
        core.dispatch_pending = core.wakeup_dirty = True
        core.queues_ready()
        log.info("tasks %s no longer wait: task %s succeeded", settled["released"], task_id)
    tell_ended(core, info, settled["cancelled"], out)


def tell_ended(core: State, info: dict[str, Any], cancelled: list[int], out: Outbox) -> None:
    """An ended attempt told: its event, the tasks waiting on it that its end cancelled
    (logged, and theirs), and, when the task is over, who waits for them."""
    status = info["status"]
    out.events.append(attempt_event(info))
    if cancelled:
        log.warning("tasks %s cancelled: task %s they waited on ended %s", cancelled, info["id"], status)
        core.cancelled_events(out.events, cancelled)
    if status in TERMINAL:
        out.ended.append(info["id"])
        out.ended.extend(cancelled)
