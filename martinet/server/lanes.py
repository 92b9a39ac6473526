"""Fleet-wide limits on dispatch, decided in one place (pure).

A lane is anything with a concurrency cap and a start rate: each queue is one,
each task name with declared limits is one. Queues also have a weight (their
share of free slots while several have ready work), an order (fifo or random)
and can be paused. The daemon tells the lanes what started and what ended;
the lanes tell it how many tasks of which queue to claim next.

Running counts and recent starts mirror the database: a turn whose transaction
fails undoes what it changed here exactly (begin, rollback), as it does for the
workers' table (peers.py).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from martinet import when


def rate_window(period: float) -> float:
    """How long a start counts toward a rate: the period plus a margin (5 %, at most
    0.25 s), so that the jitter between dispatch and the handler's start never lets
    a handler see the rate exceeded."""
    return period + min(0.05 * period, 0.25)


@dataclass
class Lane:
    concurrency: int | None = None
    rate: tuple[int, float] | None = None  # (starts, per seconds)
    running: int = 0
    starts: deque[float] = field(default_factory=deque)  # start times within the rate period

    def room(self, now: float) -> float:
        """How many more may start now (inf: no limit)."""
        room = math.inf
        if self.concurrency is not None:
            room = self.concurrency - self.running
        if self.rate is not None:
            count, period = self.rate
            while self.starts and self.starts[0] <= now - rate_window(period):
                self.starts.popleft()
            room = min(room, count - len(self.starts))
        return max(0, room)

    def next_free(self, now: float) -> float | None:
        """When a rate-limited lane can start again, if the rate is what holds it."""
        if self.rate is None or self.room(now) > 0 or not self.starts:
            return None
        if self.concurrency is not None and self.running >= self.concurrency:
            return None  # an end will free it, not the clock
        return self.starts[0] + rate_window(self.rate[1])

    def started(self, now: float) -> None:
        self.running += 1
        if self.rate is not None:
            self.starts.append(now)

    def ended(self) -> None:
        self.running = max(0, self.running - 1)


@dataclass
class Queue(Lane):
    order: str = "fifo"
    weight: int = 1
    paused: bool = False
    credit: float = 0.0  # smooth weighted round robin state


class Lanes:
    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}
        self.names: dict[str, Lane] = {}
        # A claim that finds no more ready tasks in a queue for some task names marks the
        # queue empty for those names, and any fewer, until something becomes ready there:
        # generations tell "since" apart cheaply. Workers of a fleet mostly run the same
        # names, so one short claim spares the others' claims in that turn. Only a claim
        # that saw the whole queue for those names may say so (see found_empty).
        self._generation: dict[str, int] = {}
        self._epoch = 0  # bumped when tasks became ready somewhere unknown
        self._empty: dict[str, list[tuple[frozenset[str], tuple[int, int]]]] = {}
        # Lanes changed since begin(), as they were (None: it did not exist): queues, names.
        self._saved: dict[str, Lane | None] | None = None
        self._saved_names: dict[str, Lane | None] = {}

    # ---- a turn's changes, undone if its transaction fails -------------------------

    def begin(self) -> None:
        """A turn starts: what changes from now on can be undone (rollback) until commit."""
        self._saved, self._saved_names = {}, {}

    def commit(self) -> None:
        self._saved = None

    def _keep(self, queue: str | None = None, name: str | None = None) -> None:
        """Called before a queue's lane or a task name's changes: keep a copy as it was."""
        if self._saved is None:
            return
        for saved, lanes, key in ((self._saved, self.queues, queue), (self._saved_names, self.names, name)):
            if key is None or key in saved:
                continue
            lane = lanes.get(key)
            if lane is not None:  # a copy of its fields (copy.copy costs several times more)
                clone = object.__new__(type(lane))
                clone.__dict__.update(lane.__dict__, starts=deque(lane.starts))
                lane = clone
            saved[key] = lane

    def rollback(self) -> None:
        """The turn's transaction failed: its lanes are put back as they were (running
        counts, starts, settings). A queue marked empty may hold its claims again: all
        such marks go."""
        queues, self._saved = self._saved or {}, None
        pairs: list[tuple[dict[str, Lane | None], dict[str, Any]]] = [
            (queues, self.queues),
            (self._saved_names, self.names),
        ]
        for saved, lanes in pairs:
            for name, lane in saved.items():
                if lane is None:
                    lanes.pop(name, None)
                elif name in lanes:
                    lanes[name].__dict__.update(lane.__dict__)
                else:
                    lanes[name] = lane
        self._saved_names = {}
        self.ready(None)

    def queue(self, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = Queue()
        return q

    def configure(self, name: str, **settings: Any) -> Queue:
        self._keep(queue=name)
        q = self.queue(name)
        for key, value in settings.items():
            setattr(q, key, value)
        return q

    def limit_name(self, name: str, concurrency: int | None, rate: tuple[int, float] | None) -> None:
        self._keep(name=name)
        if concurrency is None and rate is None:
            self.names.pop(name, None)
            return
        lane = self.names.setdefault(name, Lane())
        lane.concurrency, lane.rate = concurrency, rate

    def ready(self, queue: str | None = None) -> None:
        """Tasks became ready in `queue` (None: somewhere)."""
        if queue is None:
            self._epoch += 1
            self._empty.clear()
        else:
            self.queue(queue)
            self._generation[queue] = self._generation.get(queue, 0) + 1

    def _stamp(self, queue: str) -> tuple[int, int]:
        return (self._epoch, self._generation.get(queue, 0))

    def found_empty(self, names: frozenset[str], queue: str) -> None:
        """A claim for tasks with these names found no more of them ready in `queue`.

        Say it only when none was left aside for a limit: a task held back by its
        name's limit is still there, and claimable once that limit has room."""
        stamp = self._stamp(queue)
        kept = [(n, s) for n, s in self._empty.get(queue, ()) if s == stamp and not n <= names]
        self._empty[queue] = [*kept, (names, stamp)]

    def _is_empty(self, names: set[str] | frozenset[str], queue: str) -> bool:
        stamp = self._stamp(queue)
        return any(s == stamp and names <= n for n, s in self._empty.get(queue, ()))

    def started(self, queue: str, name: str, now: float) -> None:
        if self._saved is not None and (queue not in self._saved or name in self.names):
            self._keep(queue, name if name in self.names else None)
        self.queue(queue).started(now)
        if name in self.names:
            self.names[name].started(now)

    def held(self, queue: str, name: str) -> None:
        """A task the daemon had let go of (its worker declared lost) runs again where it
        ran: it counts toward concurrency again, and is no new start for a rate."""
        if self._saved is not None and (queue not in self._saved or name in self.names):
            self._keep(queue, name if name in self.names else None)
        self.queue(queue).running += 1
        if name in self.names:
            self.names[name].running += 1

    def restamp(self, claimed_at: float, sent_at: float) -> None:
        """Starts counted when claimed count from when they were sent (after the commit),
        so that a slow turn cannot make the next period's starts come early."""
        for lane in [*self.queues.values(), *self.names.values()]:
            starts = lane.starts
            i = len(starts) - 1
            while i >= 0 and starts[i] == claimed_at:
                starts[i] = sent_at
                i -= 1

    def is_rated(self, queue: str | None = None, name: str | None = None) -> bool:
        """Whether a start counts toward a rate: of the queue, or of the task name."""
        if name is not None:
            lane = self.names.get(name)
        elif queue is not None:
            lane = self.queues.get(queue)
        else:
            return False
        return lane is not None and lane.rate is not None

    def ended(self, queue: str, name: str) -> None:
        if self._saved is not None and (queue not in self._saved or name in self.names):
            self._keep(queue, name if name in self.names else None)
        if queue in self.queues:
            self.queues[queue].ended()
        if name in self.names:
            self.names[name].ended()

    def name_room(self, name: str, now: float) -> float:
        lane = self.names.get(name)
        return math.inf if lane is None else lane.room(now)

    def open_queues(self, names: set[str] | frozenset[str], served: set[str] | None, now: float) -> list[str]:
        """The queues a worker running `names` (those with room now) and serving `served`
        (None: all) may find work in: not paused, with room, not known to be empty."""
        return [
            name
            for name, q in self.queues.items()
            if (served is None or name in served)
            and not q.paused
            and q.room(now) > 0
            and not self._is_empty(names, name)
        ]

    def plan(
        self, names: set[str] | frozenset[str], served: set[str] | None, credit: int, now: float
    ) -> list[tuple[str, int]]:
        """Split `credit` slots of a worker running `names` (those with room now) between
        the queues it serves that can start work, by weight (smooth weighted round robin),
        within each queue's room."""
        open_queues = {name: self.queues[name] for name in self.open_queues(names, served, now)}
        if not open_queues:
            return []
        rooms = {name: q.room(now) for name, q in open_queues.items()}
        if len(open_queues) == 1:  # the common case; round robin would give it all it can take
            ((name, room),) = rooms.items()
            count = int(min(credit, room))
            return [(name, count)] if count > 0 else []
        counts: dict[str, int] = {}
        for _ in range(credit):
            candidates = [name for name in open_queues if rooms[name] > counts.get(name, 0)]
            if not candidates:
                break
            total = sum(open_queues[n].weight for n in candidates)
            for n in candidates:
                open_queues[n].credit += open_queues[n].weight
            pick = max(candidates, key=lambda n: open_queues[n].credit)
            open_queues[pick].credit -= total
            counts[pick] = counts.get(pick, 0) + 1
        return sorted(counts.items(), key=lambda item: -item[1])

    def next_deadline(self, now: float) -> float | None:
        """The earliest time a rate limit lets a lane start again."""
        times = [t for lane in [*self.queues.values(), *self.names.values()] if (t := lane.next_free(now))]
        return min(times) if times else None


RATE_LOOKBACK = 86400.0  # starts older than a day never count toward a rate


def queue_columns(settings: dict[str, Any]) -> dict[str, Any]:
    """Lane settings (rate as (count, period)) to QueueSetting columns."""
    columns = dict(settings)
    if "rate" in columns:
        rate = columns.pop("rate")
        if isinstance(rate, str):
            rate = when.parse_rate(rate)
        columns["rate_count"], columns["rate_period"] = rate if rate else (None, None)
    return columns


def lane_settings(row: dict[str, Any]) -> dict[str, Any]:
    """A QueueSetting row as Queue attributes."""
    return {
        "order": row["order"],
        "weight": row["weight"],
        "concurrency": row["concurrency"],
        "paused": bool(row["paused"]),
        "rate": rate_of(row),
    }


def rate_of(row: dict[str, Any]) -> tuple[int, float] | None:
    """A stored rate (rate_count, rate_period) as (count, period), or None."""
    return (row["rate_count"], row["rate_period"]) if row.get("rate_count") else None


def rate_text(rate: tuple[int, float] | None) -> str | None:
    """A rate as requests and replies say it ("100/60s"), or None."""
    return None if rate is None else f"{rate[0]}/{rate[1]:g}s"
