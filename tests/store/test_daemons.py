"""The daemons table (store/daemons.py): a row a start, its heartbeat, its stop, and old
rows let go."""

from __future__ import annotations

from martinet.store.daemons import KEEP_STOPPED
from tests.store.support import NOW


def start(store, daemon_id: str, now: float = NOW) -> None:
    row = {"id": daemon_id, "host": "h", "pid": 7, "address": "tcp://h:8008", "version": "0.1.0"}
    store.daemon_started(row, now)


def test_a_daemon_starts_beats_and_stops(store):
    start(store, "a")
    start(store, "b", NOW + 1)
    store.daemon_beat("a", NOW + 5)
    store.daemon_stopped("b", NOW + 6)
    store.daemon_stopped("b", NOW + 9)  # a second stop changes nothing
    a, b = sorted(store.daemons(), key=lambda row: row["id"])
    assert (a["started_at"], a["beat_at"], a["stopped_at"]) == (NOW, NOW + 5, None)
    assert (b["started_at"], b["beat_at"], b["stopped_at"]) == (NOW + 1, NOW + 1, NOW + 6)
    assert [row["id"] for row in store.daemons()] == ["b", "a"]  # the latest started first
    assert a["address"] == "tcp://h:8008" and a["pid"] == 7


def test_rows_silent_for_long_go_when_a_daemon_starts(store):
    start(store, "old")
    store.daemon_stopped("old", NOW)
    start(store, "quiet", NOW + 1)  # killed, never stopped
    start(store, "new", NOW + KEEP_STOPPED + 2)
    assert [row["id"] for row in store.daemons()] == ["new"]
