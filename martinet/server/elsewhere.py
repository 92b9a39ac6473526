"""What other writers committed to the database, heard through store.listen: tasks an
application enqueued in its own transaction (martinet.enqueue_in), and tasks that other
daemons ended. Queues may hold ready work, a timer may come sooner, tasks made waiting
on others are looked at again (one they wait on may have ended before the dependency
was committed). Between daemons: a daemon whose client waits for a task asks the others
to tell it when that task ends ("wait"), and they do ("ended"); a daemon whose clients
watch events says so each tick ("watch"), and for a while the others say when they
recorded events ("events"), which it then reads from the table (events.py); a daemon
that made tasks ready which no worker of its own takes now names their queues
("queues"), so that the others' idle workers take them. Nothing else goes between
them, so a drain of tasks the daemons' own workers take, watched by no one, costs no note."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from martinet.server.outbox import Outbox
from martinet.server.state import State
from martinet.states import TERMINAL

log = logging.getLogger("martinet.daemon")

MAX_REMOTE_WAITS = 10_000  # tasks other daemons' clients wait for, remembered at most
WATCHED_FOR = 3  # ticks (heartbeat intervals) a "watch" note holds: a daemon repeats it each tick


def on_notes(core: State, notes: Sequence[dict[str, Any]] | None, out: Outbox, now: float) -> None:
    """`notes` as listen.Changes.take gives them; None when some may have been missed
    (the listening connection was lost): then everything a note could say is looked at."""
    if notes is None:
        core.queues_ready()
        core.hub.stale = True
        waiting: list[int] | None = None
    else:
        waiting = []
        for note in notes:
            if note.get("from") == core.epoch:
                continue  # this daemon's own, heard back
            out.ended.extend(_ids(note.get("ended")))  # answers this daemon's waiters
            if note.get("watch") is True:  # its clients watch events: say when we record some
                core.remote_watch_until = now + WATCHED_FOR * core.settings.heartbeat_interval
            if note.get("events") is True:
                core.hub.stale = True
            wanted = _ids(note.get("wait"))
            if wanted:  # another daemon's client waits for these: tell it when they end here
                if len(core.remote_waits) > MAX_REMOTE_WAITS:  # (a wait's deadline answers it anyway)
                    core.remote_waits.clear()
                core.remote_waits.update(wanted)
                out.ended.extend(
                    i for i in wanted if (row := core.store.get_task(i)) and row.status in TERMINAL
                )
            queues = note.get("queues")
            for queue in [note.get("queue"), *(queues if isinstance(queues, list) else ())]:
                if isinstance(queue, str) and queue:
                    core.lanes.ready(queue)
                    core.dispatch_pending = True
            if isinstance(note.get("run_at"), (int, float)):
                core.wakeup_dirty = True
            waiting += _ids(note.get("waiting"))
        if not waiting:
            return
    core.dispatch_pending = core.wakeup_dirty = True
    settled = core.store.settle_waiting(waiting, now)
    if settled["released"]:
        core.queues_ready()
        log.info("tasks %s no longer wait: the tasks they wait on had succeeded", settled["released"])
    if settled["cancelled"]:
        log.warning("tasks %s cancelled: a task they waited on had ended first", settled["cancelled"])
        core.cancelled_events(out.events, settled["cancelled"])
        out.ended.extend(settled["cancelled"])


def _ids(value: Any) -> list[int]:
    """The task ids of a note's list (anything else in it is ignored)."""
    if not isinstance(value, list):
        return []
    return [i for i in value if isinstance(i, int) and not isinstance(i, bool)]


def tell(core: State, out: Outbox, recorded: bool, now: float) -> None:
    """What the other daemons should hear of this turn (one note, with its commit): the
    tasks their clients wait for that ended; that it recorded events, while someone
    watches there; the queues in which it made tasks ready that no worker of its own
    takes now (accepted for a name no worker here runs, or while every worker here is
    busy; due, retried, lost), so that idle workers of another daemon take them at once."""
    note: dict[str, Any] = {}
    if core.remote_waits:
        told = core.remote_waits.intersection([*out.ended, *core.ended_elsewhere])
        if told:
            note["ended"] = sorted(told)
            core.remote_waits -= told
    if recorded and now < core.remote_watch_until:
        note["events"] = True
    if core.made_ready and core.other_daemons and core.store.is_postgres:
        note["queues"] = sorted(core.made_ready)
    core.made_ready = set()
    if note:
        core.store.announce({"from": core.epoch, **note})


def watch(core: State) -> None:
    """Ask the other daemons to say when they record events: this one's clients watch."""
    core.store.announce({"from": core.epoch, "watch": True})
