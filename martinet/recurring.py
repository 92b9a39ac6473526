"""Which runs a recurring schedule owes at a given moment (pure).

A schedule remembers its next due time. When the daemon reaches it (on time,
or late because it was down), `plan` lists the due times that were reached,
applies the misfire policy and the schedule's end (`until`, `count`), and
gives the next due time after `now`, always stepped from the previous due
time, never from `now`, so a schedule does not drift.

Misfire policies, for due times the daemon reaches late:
  once  (default) the missed due times collapse into one run, now, if the
        latest of them is within `grace` seconds (default: no bound);
  all   every missed due time runs (at most MAX_CATCH_UP of them), each if
        within `grace` (default: no bound);
  skip  missed runs are dropped and the schedule waits for its next due time;
        only a due time reached within `grace` (default SKIP_GRACE) runs, so a
        busy or briefly restarted daemon still runs the one at hand.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from martinet.errors import BadSchedule
from martinet.when import Interval, Recurrence, from_timestamp

log = logging.getLogger(__name__)

POLICIES = ("once", "all", "skip")
MAX_CATCH_UP = 1000  # runs `all` creates at once at most: a long outage must not flood the queue
SKIP_GRACE = 60.0  # seconds late a due time may be reached and still run under `skip`
SCAN_LIMIT = 1000  # cron steps walked through an outage before jumping to the recent past


@dataclass(frozen=True)
class Policy:
    misfire: str = "once"
    grace: float | None = None
    until: float | None = None
    remaining: int | None = None  # runs left to create; None: no count

    def __post_init__(self) -> None:
        if self.misfire not in POLICIES:
            raise BadSchedule(f"misfire policy must be one of {', '.join(POLICIES)}, not {self.misfire!r}")
        if self.grace is not None and self.grace < 0:
            raise BadSchedule(f"misfire grace must be zero or more seconds, not {self.grace!r}")
        if self.remaining is not None and self.remaining < 0:
            raise BadSchedule(f"count must be one or more, not {self.remaining!r}")

    @property
    def effective_grace(self) -> float:
        if self.grace is not None:
            return self.grace
        return SKIP_GRACE if self.misfire == "skip" else math.inf


@dataclass(frozen=True)
class Plan:
    runs: list[float]  # due times to create now, oldest first
    next_due: float | None  # None: the schedule has ended
    remaining: int | None
    missed: int  # due times reached but not run (misfire policy or grace)


def _step(rec: Recurrence, due: float) -> float:
    if isinstance(rec, Interval):
        return due + rec.seconds  # plain arithmetic: the n-th due is exactly first + n * interval
    return rec.next_after(from_timestamp(due)).timestamp()


def _reached(
    rec: Recurrence, next_due: float, now: float, until: float | None
) -> tuple[list[float], float, int]:
    """Due times from next_due up to now (the last MAX_CATCH_UP), the first after now, and how many were dropped."""
    # The last moment a due time may be reached: jumps over a long outage aim
    # at it, not at now, or an `until` in the outage would be jumped over.
    end = now if until is None else min(now, until)
    if isinstance(rec, Interval) and end - next_due > MAX_CATCH_UP * rec.seconds:
        # Jump over a long outage arithmetically, keeping the recent due times.
        skip = math.floor((end - next_due) / rec.seconds) - MAX_CATCH_UP + 1
        dropped, due = skip, next_due + skip * rec.seconds
    else:
        dropped, due = 0, next_due
    reached: list[float] = []
    steps, window_start = 0, due
    while due <= end:
        reached.append(due)
        if len(reached) > MAX_CATCH_UP:
            reached.pop(0)
            dropped += 1
        due = _step(rec, due)
        steps += 1
        if steps % SCAN_LIMIT == 0 and due <= end:
            # A long outage: SCAN_LIMIT steps covered `due - window_start` seconds, so
            # the last SCAN_LIMIT due times before `end` start about that long ago.
            resume = rec.next_after(from_timestamp(end - (due - window_start))).timestamp()
            if resume > due:
                dropped += len(reached)
                reached, due = [], resume
            window_start = due
    return reached, due, dropped


def plan(rec: Recurrence, next_due: float, now: float, policy: Policy) -> Plan:
    """The runs a schedule whose next due time is `next_due` owes at `now`."""
    reached, following, dropped = _reached(rec, next_due, now, policy.until)
    grace = policy.effective_grace
    eligible = [d for d in reached if now - d <= grace]
    if policy.misfire == "all":
        runs = eligible
    else:  # once and skip: at most one run, for the latest due time reached
        runs = eligible[-1:] if reached and eligible and eligible[-1] == reached[-1] else []
    remaining = policy.remaining
    if remaining is not None:
        runs = runs[-remaining:] if remaining else []
        remaining -= len(runs)
    ended = (policy.until is not None and following > policy.until) or remaining == 0
    return Plan(runs, None if ended else following, remaining, dropped + len(reached) - len(runs))
