"""Schedules as the daemon runs them: runs at exact due times, paused, resumed, updated, shown,
removed, ended by a count. In process, with the clock the test sets (tests/core.py); a
request carries what `Martinet.every` and `update` send (seconds, a cron text, a zone).
Delayed tasks and bad times through the API, at the end. Schedules across a daemon's kill -9:
tests/e2e/test_time.py; two daemons, tests/unit/test_two_daemons.py."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

import martinet
from tests.core import Core


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def run_until(core: Core, done, step: float = 0.05, turns: int = 400):
    """Turns of timers and claims, every claimed task succeeding at once, the clock `step`
    on each time, until `done()` says something."""
    for _ in range(turns):
        for rows in core.claim().values():
            for row in rows:
                core.succeed(row["id"], row["attempt"])
        found = done()
        if found:
            return found
        core.now += step
    raise AssertionError("never happened")


def runs(core: Core, name: str, sid: str | None = None) -> list[dict]:
    items = core.request("list", name=name, limit=10_000)["items"]
    return [t for t in items if sid is None or t["schedule"] == sid]


def test_every_runs_repeatedly_without_drift(sqlite_url, make_core):
    core = make_core(sqlite_url)
    core.hello("w1", ["echo"])
    reply = core.request(
        "every", name="echo", args={"n": 1}, every=1.0, timezone="UTC", first_due=core.now + 0.2
    )
    sid = reply["id"]
    assert sid.startswith("s")

    def three_runs():
        done = [t for t in runs(core, "echo") if t["status"] == "succeeded"]
        return done if len(done) >= 3 else None

    dues = sorted(datetime.fromisoformat(t["due_at"]) for t in run_until(core, three_runs, step=0.07))
    gaps = {round((b - a).total_seconds(), 3) for a, b in zip(dues, dues[1:], strict=False)}
    assert gaps == {1.0}, gaps  # due times are exact multiples, whenever each fired
    shown = core.request("show", id=sid)["item"]
    assert shown["recent_runs"] and shown["status"] == "active"
    assert core.request("schedules")["items"][0]["id"] == sid
    core.request("update", id=sid, args={"n": 2})
    run_until(
        core, lambda: any(t["args"] == {"n": 2} and t["status"] == "succeeded" for t in runs(core, "echo"))
    )
    assert core.request("revoke", id=sid)["status"] == "removed"
    assert core.request("get", id=sid)["item"]["status"] == "removed"


def test_schedules_can_be_paused_resumed_updated_shown_and_removed(sqlite_url, make_core):
    core = make_core(sqlite_url)
    core.hello("w1", ["clock"])
    sid = core.request(
        "every", name="clock", args={"v": 1}, every=3600.0, timezone="Europe/Berlin", first_due=core.now + 600
    )["id"]
    shown = core.request("show", id=sid)["item"]
    upcoming = [ts(t) for t in shown["upcoming"]]
    assert len(upcoming) == 5 and {b - a for a, b in zip(upcoming, upcoming[1:], strict=False)} == {3600.0}
    core.request("pause", id=sid)
    assert core.request("get", id=sid)["item"]["status"] == "paused"
    core.request("pause", id=sid)  # pausing twice is harmless
    core.request("resume", id=sid)
    assert core.request("get", id=sid)["item"]["status"] == "active"
    core.request("update", id=sid, args={"v": 2}, every="0 9 * * MON-FRI")
    info = core.request("show", id=sid)["item"]
    assert (info["args"], info["every"], info["recurrence"]) == ({"v": 2}, "0 9 * * MON-FRI", "cron")
    nine = datetime.fromisoformat(info["upcoming"][0]).astimezone(ZoneInfo("Europe/Berlin"))
    assert (nine.hour, nine.minute) == (9, 0) and nine.weekday() < 5
    assert core.request("revoke", id=sid)["status"] == "removed"
    assert core.request("schedules")["items"] == []


def test_count_and_until_end_a_schedule(sqlite_url, make_core):
    core = make_core(sqlite_url, min_interval=0.1)  # below the default minimum, 1 s
    core.hello("w1", ["clock"])
    counted = core.request("every", name="clock", args={}, every=0.3, timezone="UTC", count=2)["id"]
    run_until(core, lambda: core.request("get", id=counted)["item"]["status"] == "finished")
    assert len(runs(core, "clock", counted)) == 2
    assert core.request("get", id=counted)["item"]["next_due"] is None


# ---- through the API: an embedded daemon and worker threads (tests/live.py) ---------------


def test_delayed_task_starts_at_its_due_time_not_before(make_live, sqlite_url):
    live = make_live(sqlite_url)
    live.worker()
    m = live.m
    tid = m.schedule("in 1 second", "clock", {})
    due = ts(m.get(tid)["run_at"])
    started = m.wait(tid, timeout=10)
    assert started >= due
    past = m.schedule("2020-01-01 00:00", "clock", {})  # a time in the past runs now
    assert m.get(past)["status"] in ("queued", "leased", "running", "succeeded")
    assert m.wait(past, timeout=10) > due


def test_bad_time_input_writes_nothing(make_live, sqlite_url):
    live = make_live(sqlite_url)
    m = live.m
    with pytest.raises(martinet.BadTime, match="unknown time zone 'Mars/Olympus'"):
        m.every("30 minutes", "clock", {}, timezone="Mars/Olympus")
    with pytest.raises(martinet.BadSchedule, match="61 \\* \\* \\* \\*"):
        m.every("61 * * * *", "clock", {})
    for spec in ("0 minutes", "-5 minutes"):
        with pytest.raises(martinet.BadSchedule, match=spec):
            m.every(spec, "clock", {})
    with pytest.raises(martinet.BadSchedule, match="is before the first run"):
        m.every("1 hour", "clock", {}, run_at="in 2 hours", until="in 1 hour")
    with pytest.raises(martinet.BadSchedule, match="misfire policy"):
        m.every("1 hour", "clock", {}, misfire="sometimes")
    with pytest.raises(martinet.BadTime, match="could not read 'when pigs fly' as a time"):
        m.every("1 hour", "clock", {}, run_at="when pigs fly")
    assert m.schedules() == [] and m.list() == []
