"""What other writers committed to the database, heard through store.listen: tasks an
application enqueued in its own transaction (martinet.enqueue_in), and tasks that other
daemons ended. Queues may hold ready work, a timer may come sooner, tasks made waiting
on others are looked at again (one they wait on may have ended before the dependency
was committed), and this daemon's clients waiting for a task another daemon ended get
their answer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from martinet.server.outbox import Outbox
from martinet.server.state import State

log = logging.getLogger("martinet.daemon")


def on_notes(core: State, notes: Sequence[dict[str, Any]] | None, out: Outbox, now: float) -> None:
    """`notes` as listen.Changes.take gives them; None when some may have been missed
    (the listening connection was lost): then everything a note could say is looked at."""
    if notes is None:
        core.queues_ready()
        waiting: list[int] | None = None
    else:
        waiting = []
        for note in notes:
            if note.get("from") == core.epoch:
                continue  # this daemon's own, heard back
            out.ended.extend(
                i for i in note.get("ended") or () if isinstance(i, int) and not isinstance(i, bool)
            )
            queue = note.get("queue")
            if isinstance(queue, str):
                core.lanes.ready(queue)
            if isinstance(note.get("run_at"), (int, float)):
                core.wakeup_dirty = True
            waiting += [
                i for i in note.get("waiting") or () if isinstance(i, int) and not isinstance(i, bool)
            ]
        if not waiting:
            core.dispatch_pending = True
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
