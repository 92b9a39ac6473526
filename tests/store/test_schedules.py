"""Recurring schedules in the Store on every backend (SQLite, PostgreSQL, MySQL).

No processes, no sockets, no sleeps: time is passed in as `now`. Which runs a
schedule owes is `recurring.plan`'s business (tests/unit/test_recurring.py); these
tests check the Store creates exactly those, once, and keeps the schedule row
in step.
"""

from __future__ import annotations

import pytest

from martinet import recurring
from martinet.models import Schedule, Task
from martinet.recurring import MAX_CATCH_UP, Policy
from martinet.store import Store, iso
from martinet.when import Cron, Interval, from_timestamp, recurrence_from_db
from tests.store.support import every_minute

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC, a Friday (09:00 in Berlin)
BERLIN = "Europe/Berlin"
DAY = 86400.0


def add(store: Store, every: str = "60", first_due: float = NOW, kind: str = "interval", **fields) -> int:
    spec = {"name": "tick", "kind": kind, "spec": every, **fields}
    sched_id, created = store.add_schedule(spec, first_due, NOW - 100)
    assert created
    return sched_id


def dues(sched_id: int) -> list[float]:
    """The due times of every run the schedule has created, oldest first."""
    return [t.due_at for t in Task.select().where(Task.schedule_id == sched_id).order_by(Task.due_at)]


def row(sched_id: int) -> Schedule:
    return Schedule.get_by_id(sched_id)


def expected_plan(sched_id: int, now: float) -> recurring.Plan:
    """What plan() says the schedule owes at `now`, from its row as it is."""
    s = row(sched_id)
    rec = recurrence_from_db(s.kind, s.spec, s.timezone)
    return recurring.plan(rec, s.next_due, now, Policy(s.misfire, s.misfire_grace, s.until, s.remaining))


# ---- add_schedule ---------------------------------------------------------------


def test_add_schedule_stores_until_count_and_misfire(store):
    sched = add(store, until=NOW + 3600, count=5, misfire="all", misfire_grace=90.5)
    s = row(sched)
    assert (s.until, s.remaining, s.misfire, s.misfire_grace) == (NOW + 3600, 5, "all", 90.5)
    info = store.get_schedule(sched)
    assert info["until"] == iso(NOW + 3600) == "2027-01-15T09:00:00.000+00:00"
    assert (info["remaining"], info["misfire"], info["misfire_grace"]) == (5, "all", 90.5)
    assert (info["status"], info["next_due"], info["last_due"]) == ("active", iso(NOW), None)


def test_add_schedule_defaults(store):
    info = store.get_schedule(add(store))
    assert (info["until"], info["remaining"], info["misfire"], info["misfire_grace"]) == (
        None,
        None,
        "once",
        None,
    )
    assert [s["id"] for s in store.list_schedules()] == [info["id"]]
    assert store.list_schedules()[0]["misfire"] == "once"


# ---- expand_schedules after an outage ----------------------------------------------

# Every 60 s from NOW; the daemon comes back at NOW + 330: NOW .. NOW + 300 were
# missed (six due times), the latest 30 s ago.
BACK = NOW + 330
ALL_SIX = [NOW + k * 60 for k in range(6)]


@pytest.mark.parametrize(
    ("fields", "runs", "next_due", "remaining"),
    [
        ({"misfire": "once"}, [NOW + 300], NOW + 360, None),
        ({"misfire": "all"}, ALL_SIX, NOW + 360, None),
        ({"misfire": "skip"}, [NOW + 300], NOW + 360, None),  # 30 s late, within SKIP_GRACE
        ({"misfire": "once", "misfire_grace": 29}, [], NOW + 360, None),
        ({"misfire": "all", "misfire_grace": 90}, [NOW + 240, NOW + 300], NOW + 360, None),
        ({"misfire": "skip", "misfire_grace": 30}, [NOW + 300], NOW + 360, None),
        ({"misfire": "skip", "misfire_grace": 29.999}, [], NOW + 360, None),
        # until ends the schedule: nothing after it runs, nothing is due next.
        ({"misfire": "all", "until": NOW + 150}, [NOW, NOW + 60, NOW + 120], None, None),
        ({"misfire": "once", "until": NOW + 150}, [NOW + 120], None, None),
        ({"misfire": "skip", "until": NOW + 150}, [], None, None),  # NOW + 120 is 210 s late
        ({"misfire": "all", "until": NOW + 300}, ALL_SIX, None, None),
        # count: the runs left, most recent first; ended at zero.
        ({"misfire": "all", "count": 2}, [NOW + 240, NOW + 300], None, 0),
        ({"misfire": "all", "count": 10}, ALL_SIX, NOW + 360, 4),
        ({"misfire": "once", "count": 2}, [NOW + 300], NOW + 360, 1),
        ({"misfire": "once", "count": 1}, [NOW + 300], None, 0),
        ({"misfire": "skip", "misfire_grace": 0, "count": 1}, [], NOW + 360, 1),
    ],
)
def test_expand_after_an_outage_creates_what_plan_says(store, fields, runs, next_due, remaining):
    sched = add(store, **fields)
    owed = expected_plan(sched, BACK)
    assert (owed.runs, owed.next_due, owed.remaining) == (runs, next_due, remaining)

    created = store.expand_schedules(BACK, 3)

    assert dues(sched) == runs
    assert sorted(Task.get_by_id(t).due_at for t in created) == runs
    for task_id in created:
        task = Task.get_by_id(task_id)
        assert (task.status, task.run_at, task.schedule_id) == ("queued", BACK, sched)
    s = row(sched)
    assert s.next_due == next_due
    assert s.remaining == remaining
    assert s.last_due == (runs[-1] if runs else None)
    assert s.status == ("finished" if next_due is None else "active")
    info = store.get_schedule(sched)
    assert info["status"] == s.status and info["next_due"] == iso(next_due)


def test_expand_after_a_long_outage_creates_at_most_max_catch_up_runs(store, monkeypatch):
    # plan() keeps the most recent MAX_CATCH_UP (test_recurring.py checks the real
    # value); a smaller cap keeps this quick on the server backends.
    assert MAX_CATCH_UP == 1000
    monkeypatch.setattr(recurring, "MAX_CATCH_UP", 40)
    sched = add(store, misfire="all")
    back = NOW + 5000 * 60 + 1  # 5001 due times missed
    created = store.expand_schedules(back, 3)
    assert len(created) == 40
    assert dues(sched) == [NOW + k * 60 for k in range(5001 - 40, 5001)]
    assert (row(sched).last_due, row(sched).next_due) == (NOW + 5000 * 60, NOW + 5001 * 60)


def test_expand_a_weekday_cron_over_a_weekend(store):
    sched = add(store, "0 9 * * MON-FRI", kind="cron", timezone=BERLIN, misfire="all")
    monday_10_30 = NOW + 3 * DAY + 1.5 * 3600
    created = store.expand_schedules(monday_10_30, 3)
    assert dues(sched) == [NOW, NOW + 3 * DAY]  # Friday and Monday 09:00 in Berlin
    assert len(created) == 2
    assert row(sched).next_due == NOW + 4 * DAY  # Tuesday


def test_a_schedule_runs_to_its_count_then_finishes(store):
    sched = add(store, count=3)
    for k in range(5):
        store.expand_schedules(NOW + k * 60 + 1, 3)
    assert dues(sched) == [NOW, NOW + 60, NOW + 120]
    s = row(sched)
    assert (s.status, s.next_due, s.remaining, s.last_due) == ("finished", None, 0, NOW + 120)
    assert store.expand_schedules(NOW + DAY, 3) == []


def test_a_schedule_runs_to_its_until_then_finishes(store):
    sched = add(store, until=NOW + 120)
    for k in range(5):
        store.expand_schedules(NOW + k * 60 + 1, 3)
    assert dues(sched) == [NOW, NOW + 60, NOW + 120]  # until is inclusive
    assert (row(sched).status, row(sched).next_due) == ("finished", None)


# ---- one run per due time ---------------------------------------------------------------


@pytest.mark.parametrize("misfire", ["once", "all"])
def test_expanding_twice_at_the_same_now_creates_nothing_more(store, misfire):
    sched = add(store, misfire=misfire)
    first = store.expand_schedules(BACK, 3)
    assert first
    assert store.expand_schedules(BACK, 3) == []
    assert store.expand_schedules(BACK + 29, 3) == []
    assert len(dues(sched)) == len(first)


class _StaleRead:
    """Stands in for `Schedule.select()`: the rows a second daemon read earlier."""

    def __init__(self, rows: list[Schedule]) -> None:
        self.rows = rows

    def where(self, *conditions):
        return self.rows


@pytest.mark.parametrize("fields", [{"misfire": "once"}, {"misfire": "all", "count": 10}])
def test_a_second_daemon_that_read_the_schedule_first_creates_nothing(db, monkeypatch, fields):
    one, two = Store(db), Store(db)
    sched = add(one, **fields)
    # The second daemon reads the due schedule (next_due = NOW)...
    stale = list(Schedule.select().where(Schedule.status == "active", Schedule.next_due <= BACK))
    assert [s.next_due for s in stale] == [NOW]
    # ...then the first one expands it...
    created = one.expand_schedules(BACK, 3)
    assert created and row(sched).next_due == NOW + 360
    advanced = row(sched).__data__
    # ...and the second one goes on from what it read, a little later: it must
    # neither create runs nor advance the schedule again (the conditional update).
    monkeypatch.setattr(Schedule, "select", classmethod(lambda cls, *fields: _StaleRead(stale)))
    assert two.expand_schedules(BACK + 1, 3) == []
    monkeypatch.undo()
    assert sorted(t.id for t in Task.select()) == sorted(created)
    assert row(sched).__data__ == advanced  # next_due, remaining, updated_at untouched
    assert row(sched).next_due == NOW + 360
    assert two.expand_schedules(NOW + 360, 3) != []
    assert one.expand_schedules(NOW + 360, 3) == []
    assert len(dues(sched)) == len(set(dues(sched))) == len(created) + 1


def test_the_unique_key_backs_up_a_schedule_rewound_to_a_due_time_already_run(db):
    one, two = Store(db), Store(db)
    sched = add(one, misfire="all")
    created = one.expand_schedules(BACK, 3)
    assert len(created) == 6
    # The row says NOW is due again (as if the first daemon's advance were lost):
    # the conditional update succeeds, but every run already exists.
    Schedule.update(next_due=NOW, last_due=None).where(Schedule.id == sched).execute()
    assert two.expand_schedules(BACK, 3) == []
    assert dues(sched) == ALL_SIX
    assert sorted(t.id for t in Task.select()) == sorted(created)
    assert row(sched).next_due == NOW + 360


# ---- pause and resume -------------------------------------------------------------------


def test_pause_stops_runs_and_resume_continues_on_the_original_grid(store):
    sched = add(store)
    assert len(store.expand_schedules(NOW, 3)) == 1
    assert store.pause_schedule(sched, NOW + 10) == "paused"
    assert store.expand_schedules(NOW + 200, 3) == []
    assert store.get_schedule(sched)["status"] == "paused"
    assert store.resume_schedule(sched, NOW + 250) == "active"
    s = row(sched)
    assert (s.status, s.next_due) == ("active", NOW + 300)  # not NOW + 310
    assert store.expand_schedules(NOW + 250, 3) == []  # no catch-up for the pause
    assert store.expand_schedules(NOW + 299, 3) == []
    assert len(store.expand_schedules(NOW + 300, 3)) == 1
    assert dues(sched) == [NOW, NOW + 300]
    assert row(sched).next_due == NOW + 360


def test_resume_before_the_next_due_time_keeps_it(store):
    sched = add(store)
    store.expand_schedules(NOW, 3)
    store.pause_schedule(sched, NOW + 10)
    assert store.resume_schedule(sched, NOW + 30) == "active"
    assert row(sched).next_due == NOW + 60


def test_resume_on_a_due_time_waits_for_the_next_one(store):
    sched = add(store)
    store.pause_schedule(sched, NOW - 1)
    assert store.resume_schedule(sched, NOW + 240) == "active"
    assert row(sched).next_due == NOW + 300  # strictly after now
    assert store.expand_schedules(NOW + 240, 3) == []


def test_resume_a_cron_schedule(store):
    sched = add(store, "0 9 * * MON-FRI", kind="cron", timezone=BERLIN)
    store.pause_schedule(sched, NOW - 1)
    assert store.resume_schedule(sched, NOW + 3600) == "active"  # Friday 10:00 in Berlin
    assert row(sched).next_due == NOW + 3 * DAY  # Monday 09:00
    assert store.expand_schedules(NOW + 3600, 3) == []


def test_pause_and_resume_statuses(store):
    active = add(store)
    assert store.resume_schedule(active, NOW) == "active"  # already active: unchanged
    assert store.pause_schedule(active, NOW) == "paused"
    assert store.pause_schedule(active, NOW) == "paused"  # already paused: unchanged
    assert store.pause_schedule(999, NOW) is None
    assert store.resume_schedule(999, NOW) is None

    removed = add(store)
    store.remove_schedule(removed, NOW)
    assert store.pause_schedule(removed, NOW) == "removed"
    assert store.resume_schedule(removed, NOW) == "removed"

    finished = add(store, count=1)
    store.expand_schedules(NOW, 3)
    assert row(finished).status == "finished"
    assert store.pause_schedule(finished, NOW) == "finished"
    assert store.resume_schedule(finished, NOW) == "finished"
    assert (row(finished).status, row(finished).next_due) == ("finished", None)


def test_a_paused_schedule_can_be_removed(store):
    sched = add(store)
    store.pause_schedule(sched, NOW - 1)
    assert store.remove_schedule(sched, NOW)
    assert store.resume_schedule(sched, NOW + 1) == "removed"
    assert store.expand_schedules(NOW + 600, 3) == []


# ---- update_schedule ----------------------------------------------------------------------


def test_update_args_only_keeps_the_next_due_time(store):
    sched = add(store, args={"v": 1})
    store.expand_schedules(NOW, 3)
    assert store.update_schedule(sched, NOW + 10, args={"v": 2}) == "updated"
    s = row(sched)
    assert (s.next_due, s.kind, s.spec) == (NOW + 60, "interval", "60")
    (run,) = store.expand_schedules(NOW + 60, 3)
    assert store.get_task(run)["args"] == {"v": 2}
    assert [store.get_task(t)["args"] for t in [Task.get(Task.due_at == NOW).id]] == [{"v": 1}]


def test_update_recurrence_starts_afresh_from_now(store):
    sched = add(store)
    store.expand_schedules(NOW, 3)
    assert store.update_schedule(sched, NOW + 10, recurrence=Interval(300)) == "updated"
    s = row(sched)
    assert (s.kind, s.spec, s.next_due) == ("interval", "300", NOW + 310)
    assert store.get_schedule(sched)["every"] == "5 minutes"
    assert store.expand_schedules(NOW + 60, 3) == []
    assert len(store.expand_schedules(NOW + 310, 3)) == 1
    assert row(sched).next_due == NOW + 610
    # To a cron expression.
    assert store.update_schedule(sched, NOW + 400, recurrence=Cron("0 * * * *")) == "updated"
    s = row(sched)
    assert (s.kind, s.spec, s.timezone, s.next_due) == ("cron", "0 * * * *", "UTC", NOW + 3600)


def test_update_a_cron_schedules_timezone(store):
    sched = add(store, "0 9 * * *", first_due=NOW + 3600, kind="cron")  # 09:00 UTC
    now = NOW - 3600  # 07:00 UTC, 08:00 in Berlin
    status = store.update_schedule(sched, now, recurrence=Cron("0 9 * * *", BERLIN), timezone=BERLIN)
    assert status == "updated"
    s = row(sched)
    assert (s.spec, s.timezone, s.next_due) == ("0 9 * * *", BERLIN, NOW)  # 09:00 in Berlin
    assert store.get_schedule(sched)["timezone"] == BERLIN
    (run,) = store.expand_schedules(NOW, 3)
    assert Task.get_by_id(run).due_at == NOW
    assert row(sched).next_due == NOW + DAY


def test_update_only_the_timezone_moves_a_cron_schedule(store):
    sched = add(store, "0 9 * * *", first_due=NOW + 3600, kind="cron")  # 09:00 UTC
    assert store.update_schedule(sched, NOW - 3600, timezone=BERLIN) == "updated"
    s = row(sched)
    assert (s.spec, s.timezone, s.next_due) == ("0 9 * * *", BERLIN, NOW)  # now 09:00 in Berlin


def test_a_cron_keeps_the_zone_it_was_computed_in(store):
    sched = add(store, "0 9 * * *", first_due=NOW + 3600, kind="cron")
    assert store.update_schedule(sched, NOW - 3600, recurrence=Cron("0 9 * * *", BERLIN)) == "updated"
    assert (row(sched).timezone, row(sched).next_due) == (BERLIN, NOW)


def test_update_a_paused_schedule_keeps_it_paused(store):
    sched = add(store)
    store.pause_schedule(sched, NOW - 1)
    assert store.update_schedule(sched, NOW, args={"a": 1}) == "updated"
    assert (row(sched).status, store.get_schedule(sched)["args"]) == ("paused", {"a": 1})


def test_update_removed_finished_and_missing_schedules(store):
    removed = add(store)
    store.remove_schedule(removed, NOW)
    finished = add(store, count=1)
    store.expand_schedules(NOW, 3)
    assert row(finished).status == "finished"
    for sched, status in ((removed, "removed"), (finished, "finished")):
        assert store.update_schedule(sched, NOW, args={"a": 1}) == status
        assert store.update_schedule(sched, NOW, recurrence=Interval(5)) == status
        assert (row(sched).args, row(sched).spec, row(sched).next_due) == ("{}", "60", None)
    assert store.update_schedule(999, NOW, args={"a": 1}) is None


# ---- upcoming due times and wakeups -------------------------------------------------------


def test_get_schedule_upcoming_lists_the_next_due_times(store):
    sched = add(store)
    info = store.get_schedule(sched, upcoming=5)
    assert info["upcoming"] == [iso(NOW + k * 60) for k in range(5)]
    assert info["upcoming"][0] == info["next_due"]
    assert "upcoming" not in store.get_schedule(sched)
    assert store.get_schedule(sched, upcoming=1)["upcoming"] == [iso(NOW)]
    store.expand_schedules(NOW + 61, 3)
    assert store.get_schedule(sched, upcoming=5)["upcoming"] == [iso(NOW + k * 60) for k in range(2, 7)]


def test_get_schedule_upcoming_is_trimmed_by_until_and_count(store):
    until = add(store, until=NOW + 150)
    assert store.get_schedule(until, upcoming=5)["upcoming"] == [iso(NOW), iso(NOW + 60), iso(NOW + 120)]
    on_until = add(store, until=NOW + 120)
    assert len(store.get_schedule(on_until, upcoming=5)["upcoming"]) == 3
    count = add(store, count=2)
    assert store.get_schedule(count, upcoming=5)["upcoming"] == [iso(NOW), iso(NOW + 60)]
    store.expand_schedules(NOW, 3)
    assert store.get_schedule(count, upcoming=5)["upcoming"] == [iso(NOW + 60)]
    store.expand_schedules(NOW + 60, 3)
    assert row(count).status == "finished"
    assert store.get_schedule(count, upcoming=5).get("upcoming", []) == []


def test_get_schedule_upcoming_for_a_cron(store):
    sched = add(store, "0 9 * * MON-FRI", kind="cron", timezone=BERLIN)
    upcoming = store.get_schedule(sched, upcoming=5)["upcoming"]
    # Friday, then Monday to Thursday: 08:00 UTC in winter.
    assert upcoming == [iso(NOW + d * DAY) for d in (0, 3, 4, 5, 6)]
    assert from_timestamp(NOW).weekday() == 4


def test_next_wakeup_counts_only_active_schedules(store):
    assert store.next_wakeup() is None
    active = add(store, first_due=NOW + 50)
    paused = add(store, first_due=NOW + 10)
    removed = add(store, first_due=NOW + 5)
    finished = add(store, first_due=NOW - 30, count=1)
    assert store.next_wakeup() == NOW - 30
    store.expand_schedules(NOW - 30, 3)
    assert row(finished).status == "finished"
    assert store.next_wakeup() == NOW + 5
    store.pause_schedule(paused, NOW - 20)
    store.remove_schedule(removed, NOW - 20)
    assert store.next_wakeup() == NOW + 50
    store.pause_schedule(active, NOW - 20)
    assert store.next_wakeup() is None
    store.resume_schedule(paused, NOW - 20)
    assert store.next_wakeup() == NOW + 10


# ---- schedules: the basics (from the first store tests) ----------------------------------


def test_add_schedule_dedupes_by_request_id(store):
    spec = {"name": "tick", "kind": "interval", "spec": "60", "request_id": "s-1"}
    first, created = store.add_schedule(spec, NOW, NOW)
    assert created
    again, created_again = store.add_schedule({**spec, "spec": "120"}, NOW + 5, NOW)
    assert (again, created_again) == (first, False)
    assert Schedule.select().count() == 1
    assert store.get_schedule(first)["every"] == "1 minute"


def test_expand_creates_one_run_per_due_time(store):
    sched = every_minute(store, args={"k": "v"}, priority=3, queue="q", username="ann")
    assert store.expand_schedules(NOW - 0.001, 3) == []
    created = store.expand_schedules(NOW, 3)
    assert len(created) == 1
    task = store.get_task(created[0])
    assert task["status"] == "queued"
    assert (task["name"], task["args"], task["priority"], task["queue"]) == ("tick", {"k": "v"}, 3, "q")
    assert task["username"] == "ann"
    assert task["schedule"] == f"s{sched}"
    assert task["due_at"] == iso(NOW)
    assert task["max_attempts"] == 3  # the default, as the schedule names none
    info = store.get_schedule(sched)
    assert (info["last_due"], info["next_due"]) == (iso(NOW), iso(NOW + 60))
    assert store.expand_schedules(NOW, 3) == []
    assert store.expand_schedules(NOW + 59, 3) == []
    assert len(store.expand_schedules(NOW + 60, 3)) == 1
    assert Task.select().count() == 2


def test_expand_uses_the_schedules_own_max_attempts(store):
    every_minute(store, max_attempts=7)
    (task_id,) = store.expand_schedules(NOW, 3)
    assert Task.get_by_id(task_id).max_attempts == 7


def test_expand_does_not_drift_when_it_runs_late(store):
    sched = every_minute(store)
    store.expand_schedules(NOW + 7.5, 3)  # fired 7.5 s late
    assert Schedule.get_by_id(sched).next_due == NOW + 60  # not NOW + 67.5
    (late,) = store.expand_schedules(NOW + 60 + 12.25, 3)
    assert Task.get_by_id(late).due_at == NOW + 60
    assert Task.get_by_id(late).run_at == NOW + 72.25
    assert Schedule.get_by_id(sched).next_due == NOW + 120


def test_expand_collapses_missed_runs_into_one(store):
    sched = every_minute(store)
    # Down for a while: due times NOW, +60, ..., +300 have all passed.
    created = store.expand_schedules(NOW + 330, 3)
    assert len(created) == 1
    assert Task.get_by_id(created[0]).due_at == NOW + 300  # the latest missed due time
    s = Schedule.get_by_id(sched)
    assert (s.last_due, s.next_due) == (NOW + 300, NOW + 360)
    assert Task.select().count() == 1


def test_expand_cron_schedule(store):
    # 08:00 UTC on 15 January 2027; the cron fires at minute 0 and 30.
    sched, _ = store.add_schedule(
        {"name": "cron", "kind": "cron", "spec": "0,30 * * * *", "timezone": "UTC"}, NOW, NOW - 1
    )
    (first,) = store.expand_schedules(NOW + 1, 3)
    assert Task.get_by_id(first).due_at == NOW
    assert Schedule.get_by_id(sched).next_due == NOW + 1800
    assert store.get_schedule(sched)["every"] == "0,30 * * * *"
    assert store.get_schedule(sched)["recurrence"] == "cron"


def test_two_daemons_expanding_the_same_due_time_create_one_run(db):
    one, two = Store(db), Store(db)
    sched = every_minute(one)
    # Both daemons read the schedule (next_due = NOW); the first one expands it...
    created = one.expand_schedules(NOW, 3)
    assert len(created) == 1
    # ...and the second one, working from what it read before, expands it too.
    Schedule.update(next_due=NOW, last_due=None).where(Schedule.id == sched).execute()
    assert two.expand_schedules(NOW + 0.5, 3) == []
    assert Task.select().count() == 1
    assert [t.id for t in Task.select()] == created
    assert Schedule.get_by_id(sched).next_due == NOW + 60
    # Sequentially, the second daemon sees the advanced schedule and does nothing.
    assert two.expand_schedules(NOW + 1, 3) == []
    assert len(two.expand_schedules(NOW + 60, 3)) == 1
    assert len(one.expand_schedules(NOW + 60, 3)) == 0
    assert Task.select().count() == 2


def test_remove_schedule_stops_its_runs(store):
    sched = every_minute(store)
    keep = every_minute(store, name="keep")
    assert store.remove_schedule(sched, NOW - 1)
    assert not store.remove_schedule(sched, NOW - 1)
    assert not store.remove_schedule(999, NOW - 1)
    info = store.get_schedule(sched)
    assert (info["status"], info["next_due"]) == ("removed", None)
    created = store.expand_schedules(NOW + 600, 3)
    assert [Task.get_by_id(t).schedule_id for t in created] == [keep]
    assert [s["id"] for s in store.list_schedules()] == [f"s{keep}"]
    assert [s["id"] for s in store.list_schedules(include_removed=True)] == [f"s{sched}", f"s{keep}"]
    assert store.update_schedule(sched, NOW, args={"a": 1}) == "removed"
    assert store.update_schedule(keep, NOW, args={"a": 1}) == "updated"
    assert store.update_schedule(999, NOW, args={"a": 1}) is None
    assert store.get_schedule(keep)["args"] == {"a": 1}
