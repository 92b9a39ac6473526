"""Unit tests for martinet.recurring.plan: fixed clocks only, no real time.

`plan(rec, next_due, now, policy)` is what the daemon asks each time it
reaches a schedule: which due times to run now, and the next due time.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from martinet.errors import BadSchedule
from martinet.recurring import MAX_CATCH_UP, SCAN_LIMIT, SKIP_GRACE, Plan, Policy, plan
from martinet.when import Cron, Interval, Recurrence

START = 1_800_000_000.0  # 2027-01-15 08:00 UTC: a whole minute (and ten seconds)
WEEK = 7 * 86400.0
NY = "America/New_York"
BERLIN = "Europe/Berlin"
LORD_HOWE = "Australia/Lord_Howe"


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def local(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))


def grid_after(start: float, step: float, now: float) -> float:
    """The first point of start + n * step strictly after now."""
    return start + (math.floor((now - start) / step) + 1) * step


def on_grid(start: float, step: float, first: float, last: float) -> list[float]:
    """Grid points from first to last inclusive (both on the grid)."""
    n = round((last - first) / step)
    return [first + k * step for k in range(n + 1)]


# ---- on time and drift ---------------------------------------------------------


def test_on_time_firing_runs_the_due_time_and_steps_from_it():
    p = plan(Interval(10), START, START + 0.25, Policy())
    assert p == Plan(runs=[START], next_due=START + 10, remaining=None, missed=0)
    # Exactly at the due time counts as reached.
    assert plan(Interval(10), START, START, Policy()) == Plan([START], START + 10, None, 0)


@pytest.mark.parametrize("misfire", ["once", "all", "skip"])
def test_on_time_firing_is_the_same_under_every_policy(misfire):
    p = plan(Interval(60), START, START + 3, Policy(misfire))
    assert (p.runs, p.next_due, p.missed) == ([START], START + 60, 0)


def test_no_drift_over_1000_firings_at_random_lateness():
    rng = random.Random(20270115)
    rec, next_due, created = Interval(10), START, []
    for _ in range(1000):
        now = next_due + rng.uniform(0, 9)  # the daemon reaches it 0..9 s late
        p = plan(rec, next_due, now, Policy())
        assert len(p.runs) == 1 and p.missed == 0
        created += p.runs
        next_due = p.next_due
    assert created == [START + n * 10 for n in range(1000)]  # exact: none missing, none doubled
    assert next_due == START + 10_000


def test_no_drift_or_doubles_when_expansions_lag_over_several_due_times():
    """A daemon that sometimes reaches a schedule 0..35 s late, catching up with `all`."""
    rng = random.Random(7)
    rec, next_due, created, now = Interval(10), START, [], START
    while len(created) < 1000:
        now = max(now, next_due) + rng.uniform(0, 35)
        p = plan(rec, next_due, now, Policy("all"))
        assert p.runs and p.runs[0] == next_due and p.missed == 0
        created += p.runs
        next_due = p.next_due
        assert next_due == grid_after(START, 10, now)
    assert created == [START + n * 10 for n in range(len(created))]


# ---- misfire policies after an outage -------------------------------------------

# Down for 35 s with a 10 s interval: START, +10, +20, +30 were missed; +30 is 5 s late.
SHORT = START + 35


@pytest.mark.parametrize(
    ("policy", "runs"),
    [
        (Policy("once"), [START + 30]),
        (Policy("all"), [START, START + 10, START + 20, START + 30]),
        # skip: the latest due time is 5 s late, within SKIP_GRACE: it runs.
        (Policy("skip"), [START + 30]),
        (Policy("once", grace=4), []),
        (Policy("once", grace=5), [START + 30]),  # the grace bound is inclusive
        (Policy("all", grace=15), [START + 20, START + 30]),
        (Policy("all", grace=4.999), []),
        (Policy("skip", grace=4.999), []),
        (Policy("skip", grace=5), [START + 30]),
        (Policy("skip", grace=0), []),
    ],
)
def test_short_outage(policy, runs):
    p = plan(Interval(10), START, SHORT, policy)
    assert p.runs == runs
    assert p.missed == 4 - len(runs)
    assert p.next_due == START + 40
    assert p.remaining is None


# Down for a week with a 10 s interval: every 10 s from START to START + WEEK was
# missed (60481 due times), the latest one 5 s ago.
LONG = START + WEEK + 5
WEEK_DUES = 60481


def test_week_outage_once_runs_the_latest_missed_due_time():
    p = plan(Interval(10), START, LONG, Policy("once"))
    assert p.runs == [START + WEEK]
    assert p.next_due == START + WEEK + 10
    assert p.missed == WEEK_DUES - 1


def test_week_outage_all_keeps_the_most_recent_max_catch_up():
    p = plan(Interval(10), START, LONG, Policy("all"))
    assert len(p.runs) == MAX_CATCH_UP
    assert p.runs == on_grid(START, 10, START + WEEK - (MAX_CATCH_UP - 1) * 10, START + WEEK)
    assert p.next_due == START + WEEK + 10
    assert p.missed == WEEK_DUES - MAX_CATCH_UP


def test_week_outage_all_with_grace_runs_only_those_within_it():
    p = plan(Interval(10), START, LONG, Policy("all", grace=60))
    assert p.runs == on_grid(START, 10, START + WEEK - 50, START + WEEK)  # 5..55 s late
    assert p.missed == WEEK_DUES - 6
    assert p.next_due == START + WEEK + 10


def test_week_outage_skip():
    # With a 10 s interval the latest due time is at most 10 s late: the default
    # grace (60 s) runs it. Only a due time later than the grace is dropped.
    p = plan(Interval(10), START, LONG, Policy("skip"))
    assert (p.runs, p.next_due) == ([START + WEEK], START + WEEK + 10)
    p = plan(Interval(10), START, LONG, Policy("skip", grace=4))
    assert (p.runs, p.next_due, p.missed) == ([], START + WEEK + 10, WEEK_DUES)
    # Hourly: down a week and 30 minutes; the latest due time is 1800 s late.
    p = plan(Interval(3600), START, START + WEEK + 1800, Policy("skip"))
    assert (p.runs, p.next_due, p.missed) == ([], START + WEEK + 3600, 169)
    p = plan(Interval(3600), START, START + WEEK + 1800, Policy("once"))
    assert (p.runs, p.next_due, p.missed) == ([START + WEEK], START + WEEK + 3600, 168)
    p = plan(Interval(3600), START, START + WEEK + 1800, Policy("once", grace=1799))
    assert (p.runs, p.next_due, p.missed) == ([], START + WEEK + 3600, 169)


def test_skip_default_grace_boundary_is_exact():
    assert SKIP_GRACE == 60
    hourly = Interval(3600)
    at_bound = plan(hourly, START, START + SKIP_GRACE, Policy("skip"))
    assert (at_bound.runs, at_bound.next_due, at_bound.missed) == ([START], START + 3600, 0)
    just_after = math.nextafter(START + SKIP_GRACE, math.inf)
    past = plan(hourly, START, just_after, Policy("skip"))
    assert (past.runs, past.next_due, past.missed) == ([], START + 3600, 1)
    # Missed due times before the latest never run under skip, however recent.
    p = plan(Interval(20), START, START + 45, Policy("skip"))
    assert (p.runs, p.next_due, p.missed) == ([START + 40], START + 60, 2)


@pytest.mark.parametrize("misfire", ["once", "all", "skip"])
@pytest.mark.parametrize("grace", [None, 0, 7, 1000])
@pytest.mark.parametrize("now", [START, START + 9.5, START + 35, START + 40, LONG, START + 3e7 + 0.5])
def test_next_due_is_the_first_grid_point_strictly_after_now(misfire, grace, now):
    p = plan(Interval(10), START, now, Policy(misfire, grace))
    assert p.next_due == grid_after(START, 10, now)
    assert all(START <= r <= now for r in p.runs)
    assert p.runs == sorted(set(p.runs))


# ---- until and count ---------------------------------------------------------------


def test_until_ends_the_plan_after_the_last_due_time():
    policy = Policy(until=START + 25)
    p = plan(Interval(10), START, START + 1, policy)
    assert (p.runs, p.next_due) == ([START], START + 10)
    p = plan(Interval(10), START + 10, START + 11, policy)
    assert (p.runs, p.next_due) == ([START + 10], START + 20)
    p = plan(Interval(10), START + 20, START + 21, policy)
    assert (p.runs, p.next_due) == ([START + 20], None)  # START + 30 is past until


def test_until_on_a_due_time_includes_it():
    policy = Policy(until=START + 20)
    assert plan(Interval(10), START + 10, START + 15, policy).next_due == START + 20
    assert plan(Interval(10), START + 20, START + 20, policy) == Plan([START + 20], None, None, 0)


@pytest.mark.parametrize(
    ("misfire", "runs"),
    [("once", [START + 20]), ("all", [START, START + 10, START + 20]), ("skip", [])],
)
def test_outage_past_until_runs_nothing_after_until(misfire, runs):
    p = plan(Interval(10), START, START + 100, Policy(misfire, until=START + 25))
    assert p.runs == runs  # skip: START + 20 is 80 s late
    assert p.next_due is None
    assert p.missed == 3 - len(runs)


@pytest.mark.parametrize("rec", [Interval(60), Cron("* * * * *")], ids=["interval", "cron"])
def test_long_outage_past_until_still_owes_the_due_times_before_until(rec):
    """The jump over a long outage must aim at until, not at now."""
    until = START + 2000 * 60
    now = START + 30 * 86400 + 5
    p = plan(rec, START, now, Policy("once", until=until))
    assert (p.runs, p.next_due) == ([until], None)
    p = plan(rec, START, now, Policy("all", until=until))
    assert p.runs == on_grid(START, 60, until - (MAX_CATCH_UP - 1) * 60, until)
    assert p.next_due is None


def test_count_limits_runs_and_ends_at_zero():
    rec, next_due, remaining, created = Interval(10), START, 3, []
    while next_due is not None:
        p = plan(rec, next_due, next_due + 1, Policy(remaining=remaining))
        assert p.remaining == remaining - 1
        created += p.runs
        next_due, remaining = p.next_due, p.remaining
    assert created == [START, START + 10, START + 20]
    assert remaining == 0


def test_count_after_an_outage():
    p = plan(Interval(10), START, SHORT, Policy("all", remaining=2))
    assert (p.runs, p.remaining, p.next_due) == ([START + 20, START + 30], 0, None)
    p = plan(Interval(10), START, SHORT, Policy("all", remaining=10))
    assert (len(p.runs), p.remaining, p.next_due) == (4, 6, START + 40)
    p = plan(Interval(10), START, SHORT, Policy("once", remaining=1))
    assert (p.runs, p.remaining, p.next_due) == ([START + 30], 0, None)
    # Dropped runs do not use up the count.
    p = plan(Interval(10), START, SHORT, Policy("skip", grace=1, remaining=2))
    assert (p.runs, p.remaining, p.next_due) == ([], 2, START + 40)


def test_a_plan_with_nothing_remaining_creates_nothing():
    for now in (START, SHORT, LONG):
        p = plan(Interval(10), START, now, Policy("all", remaining=0))
        assert (p.runs, p.remaining, p.next_due) == ([], 0, None)


def test_until_and_count_together_end_at_whichever_comes_first():
    p = plan(Interval(10), START, START + 1, Policy(until=START + 100, remaining=1))
    assert (p.runs, p.next_due, p.remaining) == ([START], None, 0)
    p = plan(Interval(10), START, START + 1, Policy(until=START + 5, remaining=10))
    assert (p.runs, p.next_due, p.remaining) == ([START], None, 9)


# ---- policy validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"misfire": "never"}, "misfire policy must be one of once, all, skip"),
        ({"misfire": ""}, "misfire policy"),
        ({"misfire": "ONCE"}, "misfire policy"),
        ({"grace": -1}, "misfire grace"),
        ({"grace": -0.001}, "misfire grace"),
        ({"remaining": -1}, "count"),
    ],
)
def test_bad_policy(kwargs, message):
    with pytest.raises(BadSchedule, match=message):
        Policy(**kwargs)


def test_edge_policies_are_accepted():
    assert Policy("skip", grace=0, remaining=0).effective_grace == 0
    assert Policy("skip").effective_grace == SKIP_GRACE
    assert Policy("once").effective_grace == math.inf
    assert Policy("all").effective_grace == math.inf


# ---- cron ----------------------------------------------------------------------------


def test_weekday_cron_over_a_weekend_outage():
    rec = Cron("0 9 * * MON-FRI", BERLIN)
    friday = local(BERLIN, 2027, 1, 15, 9).timestamp()
    monday = local(BERLIN, 2027, 1, 18, 9).timestamp()
    tuesday = local(BERLIN, 2027, 1, 19, 9).timestamp()
    assert friday == START  # 08:00 UTC is 09:00 in Berlin in winter
    now = local(BERLIN, 2027, 1, 18, 10, 30).timestamp()  # down from Thursday night
    once = plan(rec, friday, now, Policy("once"))
    assert (once.runs, once.next_due, once.missed) == ([monday], tuesday, 1)
    every = plan(rec, friday, now, Policy("all"))
    assert (every.runs, every.next_due, every.missed) == ([friday, monday], tuesday, 0)
    skipped = plan(rec, friday, now, Policy("skip"))
    assert (skipped.runs, skipped.next_due, skipped.missed) == ([], tuesday, 2)  # 90 min late
    late_grace = plan(rec, friday, now, Policy("all", grace=2 * 3600))
    assert late_grace.runs == [monday]


class CountingCron(Cron):
    """A cron that counts its steps: how much work planning an outage takes."""

    steps = 0

    def next_after(self, prev_due: datetime) -> datetime:
        self.steps += 1
        return super().next_after(prev_due)


def test_per_minute_cron_missed_for_30_days_walks_a_bounded_number_of_steps():
    # 43,200 due times were missed; planning must not walk them all (a step costs
    # hundreds of microseconds in croniter), only the recent past it keeps.
    rec = CountingCron("* * * * *", BERLIN)
    now = START + 30 * 86400 + 30.5
    once = plan(rec, START, now, Policy("once"))
    assert rec.steps <= 2 * SCAN_LIMIT + 2, rec.steps
    rec.steps = 0
    every = plan(rec, START, now, Policy("all", until=START + 40 * 86400))
    assert rec.steps <= 2 * SCAN_LIMIT + 2, rec.steps
    last = START + 30 * 86400
    assert (once.runs, once.next_due) == ([last], last + 60)
    assert every.runs == on_grid(START, 60, last - (MAX_CATCH_UP - 1) * 60, last)
    assert every.next_due == last + 60


def test_cron_next_due_is_strictly_after_now():
    rec = Cron("*/15 * * * *")
    p = plan(rec, START, START + 900, Policy("all"))
    assert (p.runs, p.next_due) == ([START, START + 900], START + 1800)


# ---- DST, with a fixed clock stepped forward --------------------------------------------


def fire(rec: Recurrence, start: float, end: float, step: float) -> list[float]:
    """The runs a daemon creates waking every `step` seconds from start until end (misfire
    `all`, so a doubled due time could not hide in a collapse)."""
    next_due: float | None = rec.next_after(datetime.fromtimestamp(start, UTC)).timestamp()
    created, now = [], start
    while now + step <= end and next_due is not None:
        now += step
        if next_due <= now:  # the daemon only expands due schedules
            p = plan(rec, next_due, now, Policy("all"))
            assert p.runs and p.missed == 0
            created += p.runs
            next_due = p.next_due
    return created


def wall(zone: str, times: list[float]) -> list[str]:
    return [datetime.fromtimestamp(t, ZoneInfo(zone)).strftime("%m-%d %H:%M %z") for t in times]


STEPS = pytest.mark.parametrize("step", [86400.0, 3600.0, 600.0], ids=["daily", "hourly", "10min"])


def transitions(zone: str, year: int) -> list[tuple[datetime, timedelta, timedelta]]:
    """(instant, offset before, offset after) of each offset change in `year`, to the minute."""
    tz, found = ZoneInfo(zone), []
    t = datetime(year, 1, 1, tzinfo=UTC)
    before = t.astimezone(tz).utcoffset()
    while t.year == year:
        t += timedelta(hours=1)
        after = t.astimezone(tz).utcoffset()
        if after != before:  # changed within the last hour: find the minute
            m = t - timedelta(minutes=59)
            while m.astimezone(tz).utcoffset() == before:
                m += timedelta(minutes=1)
            found.append((m, before, after))
            before = after
    return found


def test_the_2026_dst_dates_these_tests_rely_on():
    h = timedelta(hours=1)
    assert transitions(NY, 2026) == [
        (datetime(2026, 3, 8, 7, tzinfo=UTC), -5 * h, -4 * h),
        (datetime(2026, 11, 1, 6, tzinfo=UTC), -4 * h, -5 * h),
    ]
    assert transitions(BERLIN, 2026) == [
        (datetime(2026, 3, 29, 1, tzinfo=UTC), h, 2 * h),
        (datetime(2026, 10, 25, 1, tzinfo=UTC), 2 * h, h),
    ]
    # Lord Howe shifts by 30 minutes, at 02:00 local both ways.
    assert transitions(LORD_HOWE, 2026) == [
        (datetime(2026, 4, 4, 15, tzinfo=UTC), 11 * h, 10.5 * h),  # 02:00 -> 01:30 on 5 April
        (datetime(2026, 10, 3, 15, 30, tzinfo=UTC), 10.5 * h, 11 * h),  # 02:00 -> 02:30 on 4 October
    ]


@STEPS
def test_new_york_spring_forward_runs_a_lost_time_once_after_the_gap(step):
    runs = fire(Cron("30 2 * * *", NY), utc(2026, 3, 6), utc(2026, 3, 10), step)
    assert wall(NY, runs) == [
        "03-06 02:30 -0500",
        "03-07 02:30 -0500",
        "03-08 03:00 -0400",  # 02:30 does not exist: the first instant after the gap
        "03-09 02:30 -0400",
    ]
    assert runs[2] == utc(2026, 3, 8, 7)


@STEPS
def test_new_york_fall_back_runs_a_doubled_time_once(step):
    runs = fire(Cron("30 1 * * *", NY), utc(2026, 10, 30), utc(2026, 11, 3), step)
    assert wall(NY, runs) == [
        "10-30 01:30 -0400",
        "10-31 01:30 -0400",
        "11-01 01:30 -0400",  # its first occurrence only
        "11-02 01:30 -0500",
    ]
    assert runs[2] == utc(2026, 11, 1, 5, 30)


@STEPS
def test_berlin_spring_forward_and_fall_back(step):
    spring = fire(Cron("30 2 * * *", BERLIN), utc(2026, 3, 27), utc(2026, 3, 31), step)
    assert wall(BERLIN, spring) == [
        "03-27 02:30 +0100",
        "03-28 02:30 +0100",
        "03-29 03:00 +0200",
        "03-30 02:30 +0200",
    ]
    assert spring[2] == utc(2026, 3, 29, 1)
    autumn = fire(Cron("30 2 * * *", BERLIN), utc(2026, 10, 23), utc(2026, 10, 27), step)
    assert wall(BERLIN, autumn) == [
        "10-23 02:30 +0200",
        "10-24 02:30 +0200",
        "10-25 02:30 +0200",
        "10-26 02:30 +0100",
    ]
    assert autumn[2] == utc(2026, 10, 25, 0, 30)


@STEPS
def test_lord_howe_half_hour_shifts(step):
    spring = fire(Cron("15 2 * * *", LORD_HOWE), utc(2026, 10, 1), utc(2026, 10, 5, 12), step)
    assert wall(LORD_HOWE, spring) == [
        "10-02 02:15 +1030",
        "10-03 02:15 +1030",
        "10-04 02:30 +1100",  # 02:00-02:30 does not exist
        "10-05 02:15 +1100",
    ]
    assert spring[2] == utc(2026, 10, 3, 15, 30)
    autumn = fire(Cron("45 1 * * *", LORD_HOWE), utc(2026, 4, 2), utc(2026, 4, 6, 12), step)
    assert wall(LORD_HOWE, autumn) == [
        "04-03 01:45 +1100",
        "04-04 01:45 +1100",
        "04-05 01:45 +1100",  # 01:30-02:00 happens twice: the first one only
        "04-06 01:45 +1030",
    ]
    assert autumn[2] == utc(2026, 4, 4, 14, 45)


def test_an_hourly_wildcard_cron_follows_the_clock_through_dst():
    """With hour `*` a job skips the lost hour and repeats the doubled one (when.py)."""
    spring = fire(Cron("30 * * * *", NY), utc(2026, 3, 8, 5), utc(2026, 3, 8, 8), 600)
    assert wall(NY, spring) == ["03-08 00:30 -0500", "03-08 01:30 -0500", "03-08 03:30 -0400"]
    autumn = fire(Cron("30 * * * *", NY), utc(2026, 11, 1, 4), utc(2026, 11, 1, 8), 600)
    assert wall(NY, autumn) == [
        "11-01 00:30 -0400",
        "11-01 01:30 -0400",
        "11-01 01:30 -0500",
        "11-01 02:30 -0500",
    ]


@pytest.mark.parametrize(
    ("zone", "start"),
    [(NY, utc(2026, 3, 8, 4)), (NY, utc(2026, 11, 1, 3)), (LORD_HOWE, utc(2026, 10, 3, 12))],
)
def test_an_interval_is_elapsed_time_across_dst(zone, start):
    runs = fire(Interval(3600), start, start + 8 * 3600, 600)
    assert runs == [start + k * 3600 for k in range(1, 9)]
    assert {b - a for a, b in zip(runs, runs[1:], strict=False)} == {3600}
    offsets = {datetime.fromtimestamp(t, ZoneInfo(zone)).utcoffset() for t in runs}
    assert len(offsets) == 2  # the window does cross the change
