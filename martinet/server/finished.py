"""Tasks that reached their end through this daemon, minute by minute over the last hour
(the dashboard's chart; the `finished` request). Counted from each committed turn's
events, in memory: since the daemon started, an hour at most, this daemon's only (with
several, each counts what it ended). Reading the table instead would count every task
finished in the hour, millions on a busy day, in the loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from martinet.present import iso
from martinet.states import TERMINAL

ENDS = tuple(state.value for state in TERMINAL)  # the counts' keys, in this order
MINUTES = 60


class FinishedPerMinute:
    def __init__(self) -> None:
        self.minutes: dict[int, dict[str, int]] = {}  # minute (epoch // 60) -> {end: count}
        self._staged: dict[str, int] = {}

    def stage(self, events: Iterable[dict[str, Any]]) -> None:
        """A turn's events, counted once the turn is committed (commit)."""
        for event in events:
            status = event.get("status")
            if status in TERMINAL and isinstance(event.get("id"), int) and event.get("event") in TERMINAL:
                self._staged[status] = self._staged.get(status, 0) + 1

    def commit(self, now: float) -> None:
        if not self._staged:
            return
        minute = int(now // 60)
        counts = self.minutes.setdefault(minute, {})
        for status, count in self._staged.items():
            counts[status] = counts.get(status, 0) + count
        self._staged = {}
        for old in [m for m in self.minutes if m <= minute - MINUTES]:
            del self.minutes[old]

    def drop(self) -> None:
        """The turn was rolled back: what it staged never happened."""
        self._staged = {}

    def last_hour(self, now: float) -> list[dict[str, Any]]:
        """Each of the last MINUTES minutes, oldest first: its start and its counts by end."""
        current = int(now // 60)
        return [
            {"minute": iso(m * 60.0), **{end: self.minutes.get(m, {}).get(end, 0) for end in ENDS}}
            for m in range(current - MINUTES + 1, current + 1)
        ]
