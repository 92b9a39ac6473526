"""Retention: the daemon deletes finished tasks once they are old enough.

Succeeded and cancelled tasks go `keep_finished` after they finished (7 days by
default), dead ones `keep_dead` after (30 days): an operator has longer to look
at those. Events (events.py) go `keep_events` after they were recorded (1 day):
long enough for a client to catch up after a restart or a night offline. The daemon calls `Retention.step` once per tick, inside the turn's
transaction; each step prunes batches of PRUNE_BATCH tasks (Store.prune) for at
most PRUNE_BUDGET seconds, so a backlog of a million old tasks never holds
dispatch up for long, and goes on at the next tick where it stopped. Once a pass
over the old tasks is done, the next starts PRUNE_INTERVAL later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from martinet.models import CANCELLED, DEAD, SUCCEEDED
from martinet.store import PRUNE_BATCH, Store

log = logging.getLogger("martinet.daemon")

# Seconds of pruning per tick at most: 5 % of a 1 s heartbeat interval. A backlog
# then goes at several thousand tasks a second (a batch of 500 takes 4-13 ms),
# and a task due meanwhile waits at most this long.
PRUNE_BUDGET = 0.05
# Seconds between two passes over the old tasks. Tasks become old steadily, so a
# minute late costs nothing; a pass also reads the old tasks that must stay
# (dead ones not old enough yet, ones others wait on), which should not be every tick.
PRUNE_INTERVAL = 60.0


class Retention:
    """When and what the daemon prunes; holds where the current pass stands."""

    def __init__(
        self,
        keep_finished: float | None,
        keep_dead: float | None,
        budget: float = PRUNE_BUDGET,
        interval: float = PRUNE_INTERVAL,
        timer: Callable[[], float] = time.perf_counter,
        keep_events: float | None = None,
    ) -> None:
        self.keep = {SUCCEEDED: keep_finished, CANCELLED: keep_finished, DEAD: keep_dead}
        self.keep_events = keep_events
        self.next_events_pass = 0.0
        self.budget = budget
        self.interval = interval
        self.timer = timer
        self.after: tuple[float, int] | None = None  # where the current pass stands
        self.next_pass = 0.0

    def cutoffs(self, now: float) -> dict[str, float]:
        """Each finished state's cutoff: tasks that finished before it go."""
        return {state: now - keep for state, keep in self.keep.items() if keep is not None}

    def step(self, store: Store, now: float) -> tuple[int, int]:
        """Prune for at most `budget` seconds; returns (tasks, attempts) removed."""
        self.step_events(store, now)
        cutoffs = self.cutoffs(now)
        if not cutoffs or now < self.next_pass:
            return 0, 0
        started = self.timer()
        tasks = attempts = 0
        while True:
            pruned = store.prune(cutoffs, PRUNE_BATCH, self.after)
            tasks += pruned.tasks
            attempts += pruned.attempts
            if not pruned.more:  # this pass is done: the next starts from the oldest again
                self.after = None
                self.next_pass = now + self.interval
                break
            self.after = pruned.last
            if self.timer() - started >= self.budget:
                break
        if tasks:
            log.info(
                "retention: deleted %d finished tasks and %d attempt rows in %.0f ms%s",
                tasks,
                attempts,
                (self.timer() - started) * 1000,
                "" if self.after is None else "; more at the next tick",
            )
        return tasks, attempts

    def step_events(self, store: Store, now: float) -> int:
        """Delete events older than keep_events, PRUNE_BATCH at a time, for at most half
        the budget; returns how many went. Like tasks, a pass every `interval`."""
        if self.keep_events is None or now < self.next_events_pass:
            return 0
        started = self.timer()
        deleted = 0
        while True:
            n, more = store.prune_events(now - self.keep_events, PRUNE_BATCH)
            deleted += n
            if not more:
                self.next_events_pass = now + self.interval
                break
            if self.timer() - started >= self.budget / 2:
                break
        if deleted:
            log.info("retention: deleted %d events in %.0f ms", deleted, (self.timer() - started) * 1000)
        return deleted
