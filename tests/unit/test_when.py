"""Unit tests for martinet.when: fixed clocks only, no real time."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from martinet.errors import BadSchedule, BadTime
from martinet.when import (
    Cron,
    Interval,
    Recurrence,
    check_frequency,
    from_timestamp,
    parse_every,
    parse_interval,
    parse_when,
    recurrence_from_db,
    to_timestamp,
    utcnow,
    warn_if_past,
)

NY = "America/New_York"
BERLIN = "Europe/Berlin"
LORD_HOWE = "Australia/Lord_Howe"
SANTIAGO = "America/Santiago"

# Monday 16 November 2026, 10:00 UTC.
NOW = datetime(2026, 11, 16, 10, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(zone: str, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone), fold=fold)


# ---- parse_when: English, in UTC ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in 20 minutes", utc(2026, 11, 16, 10, 20)),
        ("In 20 Minutes", utc(2026, 11, 16, 10, 20)),
        ("  in   20 minutes  ", utc(2026, 11, 16, 10, 20)),
        ("20 minutes", utc(2026, 11, 16, 10, 20)),  # dateparser alone: 20 minutes ago
        ("1 hour", utc(2026, 11, 16, 11, 0)),
        ("in 1h30m", utc(2026, 11, 16, 11, 30)),
        ("in 1 hour and 30 minutes", utc(2026, 11, 16, 11, 30)),
        ("90s from now", utc(2026, 11, 16, 10, 1, 30)),
        ("2 hours later", utc(2026, 11, 16, 12, 0)),
        ("in an hour", utc(2026, 11, 16, 11, 0)),
        ("in 1.5 hours", utc(2026, 11, 16, 11, 30)),
        ("in 0 seconds", NOW),
        ("in 2 days", utc(2026, 11, 18, 10, 0)),
        ("in 1 month", utc(2026, 12, 16, 10, 0)),
        ("1 month", utc(2026, 12, 16, 10, 0)),  # from now, not ago
        ("next week", utc(2026, 11, 23, 10, 0)),
        ("now", NOW),
        ("NOW", NOW),
        ("tomorrow", utc(2026, 11, 17, 10, 0)),
        ("tomorrow at 9am", utc(2026, 11, 17, 9, 0)),
        ("9am tomorrow", utc(2026, 11, 17, 9, 0)),
        ("tomorrow noon", utc(2026, 11, 17, 12, 0)),
        ("today at 9am", utc(2026, 11, 16, 9, 0)),  # explicit day: as is, in the past
        ("tonight", utc(2026, 11, 16, 20, 0)),
        ("next monday 14:00", utc(2026, 11, 23, 14, 0)),
        ("next friday", utc(2026, 11, 20, 0, 0)),
        ("this friday", utc(2026, 11, 20, 0, 0)),
        ("2027-01-05 08:00", utc(2027, 1, 5, 8, 0)),
        ("5 jan 2027 8am", utc(2027, 1, 5, 8, 0)),
        ("2026-11-16T09:00:00+02:00", utc(2026, 11, 16, 7, 0)),  # own offset, past: as is
        ("2026-12-25T10:00:00Z", utc(2026, 12, 25, 10, 0)),
        ("17:00 UTC", utc(2026, 11, 16, 17, 0)),
        ("9am EST", utc(2026, 11, 16, 14, 0)),
    ],
)
def test_english(text: str, expected: datetime) -> None:
    got = parse_when(text, NOW)
    assert got == expected
    assert got.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # A time of day alone: today if still ahead, else tomorrow.
        ("at 9am", utc(2026, 11, 17, 9, 0)),
        ("9am", utc(2026, 11, 17, 9, 0)),
        ("midnight", utc(2026, 11, 17, 0, 0)),
        ("noon", utc(2026, 11, 16, 12, 0)),
        ("14:00", utc(2026, 11, 16, 14, 0)),
        ("9:30pm", utc(2026, 11, 16, 21, 30)),
        ("10:00", NOW),  # exactly now is not the past
        ("9am +0530", utc(2026, 11, 17, 3, 30)),  # own offset, time of day alone
        # A weekday: this week if still ahead, else next week.
        ("friday", utc(2026, 11, 20, 0, 0)),
        ("friday at 5pm", utc(2026, 11, 20, 17, 0)),
        ("monday", utc(2026, 11, 23, 0, 0)),
        ("monday 9am", utc(2026, 11, 23, 9, 0)),
        ("monday 14:00", utc(2026, 11, 16, 14, 0)),
        ("Mon 14:00", utc(2026, 11, 16, 14, 0)),
        # A day of the year without a year: this year if still ahead, else next.
        ("dec 25", utc(2026, 12, 25, 0, 0)),
        ("january 5", utc(2027, 1, 5, 0, 0)),
        ("jan 5 at 8am", utc(2027, 1, 5, 8, 0)),
    ],
)
def test_next_occurrence_rule(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


def test_weekday_named_on_a_later_day_moves_to_next_week() -> None:
    saturday = utc(2026, 11, 21, 12, 0)
    assert parse_when("friday", saturday) == utc(2026, 11, 27, 0, 0)
    assert parse_when("saturday 9am", saturday) == utc(2026, 11, 28, 9, 0)
    assert parse_when("saturday 1pm", saturday) == utc(2026, 11, 21, 13, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-01-01", utc(2020, 1, 1, 0, 0)),
        ("2026-11-16 09:00", utc(2026, 11, 16, 9, 0)),
        ("16/11/2026 9am", utc(2026, 11, 16, 9, 0)),
        ("2 hours ago", utc(2026, 11, 16, 8, 0)),
        ("yesterday", utc(2026, 11, 15, 10, 0)),
    ],
)
def test_past_explicit_times_are_returned_as_is(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


# ---- parse_when: zones ----


def test_english_in_new_york() -> None:
    now = utc(2026, 11, 16, 15, 0)  # 10:00 EST
    assert parse_when("at 9am", now, NY) == utc(2026, 11, 17, 14, 0)
    assert parse_when("noon", now, NY) == utc(2026, 11, 16, 17, 0)
    assert parse_when("tomorrow at 9am", now, NY) == utc(2026, 11, 17, 14, 0)
    assert parse_when("2027-01-05 08:00", now, NY) == utc(2027, 1, 5, 13, 0)
    assert parse_when("in 20 minutes", now, NY) == utc(2026, 11, 16, 15, 20)


def test_local_day_differs_from_utc_day() -> None:
    now = utc(2026, 11, 16, 10, 0)  # 19:00 Monday in Tokyo, 23:00 Monday in Auckland
    assert parse_when("midnight", now, "Asia/Tokyo") == utc(2026, 11, 16, 15, 0)
    assert parse_when("tomorrow at 9am", now, "Asia/Tokyo") == utc(2026, 11, 17, 0, 0)
    late = utc(2026, 11, 16, 12, 0)  # 01:00 Tuesday in Auckland (+13)
    assert parse_when("tuesday 9am", late, "Pacific/Auckland") == utc(2026, 11, 16, 20, 0)
    assert parse_when("monday 9am", late, "Pacific/Auckland") == utc(2026, 11, 22, 20, 0)


def test_new_york_spring_forward_gap() -> None:
    # 02:30 does not exist on 8 March 2026: the first valid instant is 03:00 EDT.
    assert parse_when("2026-03-08 02:30", NOW, NY) == utc(2026, 3, 8, 7, 0)
    assert parse_when(datetime(2026, 3, 8, 2, 30), NOW, NY) == utc(2026, 3, 8, 7, 0)
    saturday_noon = utc(2026, 3, 7, 17, 0)
    assert parse_when("at 2:30am", saturday_noon, NY) == utc(2026, 3, 8, 7, 0)
    assert parse_when("tomorrow at 9am", saturday_noon, NY) == utc(2026, 3, 8, 13, 0)


def test_duration_is_elapsed_time_across_a_gap() -> None:
    before_gap = utc(2026, 3, 8, 6, 50)  # 01:50 EST
    assert parse_when("in 20 minutes", before_gap, NY) == utc(2026, 3, 8, 7, 10)


def test_new_york_fall_back_uses_first_occurrence() -> None:
    assert parse_when("2026-11-01 01:30", NOW, NY) == utc(2026, 11, 1, 5, 30)
    assert parse_when(datetime(2026, 11, 1, 1, 30), NOW, NY) == utc(2026, 11, 1, 5, 30)
    assert parse_when(datetime(2026, 11, 1, 1, 30, fold=1), NOW, NY) == utc(2026, 11, 1, 5, 30)


def test_berlin_gap_and_fold_wall_times() -> None:
    assert parse_when("2026-03-29 02:30", NOW, BERLIN) == utc(2026, 3, 29, 1, 0)
    assert parse_when("2026-10-25 02:30", NOW, BERLIN) == utc(2026, 10, 25, 0, 30)


def test_lord_howe_half_hour_shift_wall_times() -> None:
    # 4 Oct 2026: 02:00 +10:30 becomes 02:30 +11:00.
    assert parse_when("2026-10-04 02:15", NOW, LORD_HOWE) == utc(2026, 10, 3, 15, 30)
    assert parse_when("2026-10-04 02:30", NOW, LORD_HOWE) == utc(2026, 10, 3, 15, 30)
    # 5 Apr 2026: 02:00 +11:00 becomes 01:30 +10:30; 01:45 happens twice.
    assert parse_when("2026-04-05 01:45", NOW, LORD_HOWE) == utc(2026, 4, 4, 14, 45)


# ---- parse_when: datetimes and delays ----


def test_aware_datetimes_are_converted_to_utc() -> None:
    berlin = local(BERLIN, 2026, 7, 1, 9, 0)
    assert parse_when(berlin, NOW) == utc(2026, 7, 1, 7, 0)
    assert parse_when(berlin, NOW, NY) == utc(2026, 7, 1, 7, 0)  # tz ignored when aware
    plus5 = datetime(2026, 7, 1, 9, 0, tzinfo=timezone(timedelta(hours=5)))
    assert parse_when(plus5, NOW).tzinfo is UTC
    assert parse_when(plus5, NOW) == utc(2026, 7, 1, 4, 0)
    assert parse_when(utc(2020, 1, 1), NOW) == utc(2020, 1, 1)  # the past, as is


def test_naive_datetimes_are_wall_time_in_tz() -> None:
    assert parse_when(datetime(2026, 7, 1, 9, 0), NOW) == utc(2026, 7, 1, 9, 0)
    assert parse_when(datetime(2026, 7, 1, 9, 0), NOW, BERLIN) == utc(2026, 7, 1, 7, 0)
    assert parse_when(datetime(2026, 1, 1, 9, 0), NOW, BERLIN) == utc(2026, 1, 1, 8, 0)
    assert parse_when(datetime(2026, 7, 1, 9, 0), NOW, "Asia/Kolkata") == utc(2026, 7, 1, 3, 30)


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (timedelta(minutes=5), utc(2026, 11, 16, 10, 5)),
        (300, utc(2026, 11, 16, 10, 5)),
        (2.5, datetime(2026, 11, 16, 10, 0, 2, 500000, tzinfo=UTC)),
        (0, NOW),
        (timedelta(0), NOW),
    ],
)
def test_delays(delay: timedelta | float, expected: datetime) -> None:
    assert parse_when(delay, NOW) == expected


def test_now_in_another_zone_is_accepted() -> None:
    now_berlin = NOW.astimezone(ZoneInfo(BERLIN))
    got = parse_when(60, now_berlin)
    assert got == utc(2026, 11, 16, 10, 1)
    assert got.tzinfo is UTC


# ---- parse_when: errors ----


def test_unreadable_text_message() -> None:
    with pytest.raises(BadTime) as info:
        parse_when("in twenty flurbs", NOW)
    assert str(info.value) == "could not read 'in twenty flurbs' as a time"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(text: str) -> None:
    with pytest.raises(BadTime, match="empty"):
        parse_when(text, NOW)


@pytest.mark.parametrize("text", ["every 30 minutes", "flurb", "end of month", "morning"])
def test_other_unreadable_texts(text: str) -> None:
    with pytest.raises(BadTime, match="could not read"):
        parse_when(text, NOW)


@pytest.mark.parametrize("text", ["march 2027", "2027", "the 5th"])
def test_text_without_a_day_is_refused(text: str) -> None:
    with pytest.raises(BadTime, match="names no day"):
        parse_when(text, NOW)


def test_too_long_text() -> None:
    with pytest.raises(BadTime, match="longer than"):
        parse_when("in 20 minutes " * 50, NOW)


@pytest.mark.parametrize("delay", [math.nan, math.inf, -math.inf])
def test_odd_delays(delay: object) -> None:
    with pytest.raises(BadTime):
        parse_when(delay, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (-300, NOW - timedelta(minutes=5)),
        (-0.5, NOW - timedelta(seconds=0.5)),
        (timedelta(minutes=-5), NOW - timedelta(minutes=5)),
        ("in -5 minutes", NOW - timedelta(minutes=5)),
        ("5 minutes ago", NOW - timedelta(minutes=5)),
        ("yesterday", NOW - timedelta(days=1)),
        (NOW - timedelta(minutes=5), NOW - timedelta(minutes=5)),
    ],
)
def test_every_form_of_a_past_time_is_that_past_time(when: object, expected: datetime) -> None:
    """One rule for the past: each form names the past time it says (a task due then runs
    now), none is refused: a negative delay and "in -5 minutes" were, "yesterday" was not."""
    assert parse_when(when, NOW) == expected  # type: ignore[arg-type]


def test_a_past_time_is_warned_about_and_now_is_not(caplog: pytest.LogCaptureFixture) -> None:
    warn_if_past(NOW - timedelta(minutes=5), NOW, "run_at 'in -5 minutes'")
    warn_if_past(NOW - timedelta(seconds=0.5), NOW)  # "now", a moment ago: no warning
    assert [r.getMessage() for r in caplog.records] == [
        "run_at 'in -5 minutes' (2026-11-16T09:55:00+00:00) is 300 seconds in the past: it runs now"
    ]


@pytest.mark.parametrize(
    "when", [1e15, timedelta.max, "in 9999999999 days", "9999-12-31 23:59", datetime(9999, 12, 31, 23)]
)
def test_out_of_range_times(when: object) -> None:
    with pytest.raises(BadTime, match="out of range"):
        parse_when(when, NOW, NY)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, None, [1], object()])
def test_wrong_types(value: object) -> None:
    with pytest.raises(BadTime):
        parse_when(value, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", "../etc/passwd"])
def test_bad_zone_is_named(tz: str) -> None:
    with pytest.raises(BadTime, match="unknown time zone") as info:
        parse_when("noon", NOW, tz)
    assert repr(tz) in str(info.value)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="now"):
        parse_when("noon", datetime(2026, 11, 16, 10, 0))


# ---- parse_interval ----


@pytest.mark.parametrize(
    ("spec", "seconds"),
    [
        ("30 minutes", 1800),
        ("30 min", 1800),
        ("30 mins", 1800),
        ("30m", 1800),
        ("1 minute", 60),
        ("1 hour 30 minutes", 5400),
        ("1 hour and 30 minutes", 5400),
        ("1 hour, 30 minutes", 5400),
        ("1 hour, 30 minutes and 15 seconds", 5415),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2 days", 172800),
        ("2d", 172800),
        ("1 week", 604800),
        ("2 wks", 1209600),
        ("90s", 90),
        ("90 sec", 90),
        ("90 seconds", 90),
        ("2 hrs", 7200),
        ("3 h", 10800),
        ("every 30 minutes", 1800),
        ("Every 30 Minutes", 1800),
        ("every hour", 3600),
        ("every day", 86400),
        ("every 2 weeks", 1209600),
        ("1.5 hours", 5400),
        (".5 minutes", 30),
        ("an hour", 3600),
        ("a day", 86400),
        ("one week", 604800),
        ("every an hour", 3600),
        ("hourly", 3600),
        ("daily", 86400),
        ("weekly", 604800),
        ("minutely", 60),
        ("  every   10   seconds  ", 10),
        (timedelta(minutes=5), 300),
        (90, 90),
        (0.25, 0.25),
    ],
)
def test_interval_spellings(spec: str | timedelta | float, seconds: float) -> None:
    assert parse_interval(spec) == timedelta(seconds=seconds)


def test_unreadable_interval_message() -> None:
    with pytest.raises(BadSchedule) as info:
        parse_interval("every blue moon")
    assert str(info.value) == (
        "could not read 'every blue moon' as an interval"
        " (try '30 minutes' or a cron expression like '0 9 * * MON-FRI')"
    )


@pytest.mark.parametrize(
    "spec", ["", "every", "30", "30 flurbs", "minutes 30", "1 hour 30", "9am", "1x", "and"]
)
def test_unreadable_intervals(spec: str) -> None:
    with pytest.raises(BadSchedule, match="could not read"):
        parse_interval(spec)


@pytest.mark.parametrize("spec", ["1 month", "every 2 years"])
def test_calendar_units_point_to_cron(spec: str) -> None:
    with pytest.raises(BadSchedule, match="cron expression"):
        parse_interval(spec)


@pytest.mark.parametrize(
    "spec", ["0 minutes", "0s", "-5 minutes", 0, -1, 0.0, timedelta(0), timedelta(hours=-1)]
)
def test_zero_and_negative_intervals(spec: str | float | timedelta) -> None:
    with pytest.raises(BadSchedule, match="longer than zero"):
        parse_interval(spec)


@pytest.mark.parametrize("spec", [math.nan, math.inf, 1e20])
def test_out_of_range_intervals(spec: float) -> None:
    with pytest.raises(BadSchedule, match="out of range"):
        parse_interval(spec)


@pytest.mark.parametrize("spec", [True, None, [30]])
def test_interval_wrong_types(spec: object) -> None:
    with pytest.raises(BadSchedule):
        parse_interval(spec)  # type: ignore[arg-type]


# ---- Interval ----


def test_interval_has_no_drift() -> None:
    start = datetime(2026, 11, 16, 10, 0, 0, 123456, tzinfo=UTC)
    every = Interval(10)
    runs = every.next_n(start, 1000)
    assert runs[0] == start + timedelta(seconds=10)
    assert runs[-1] == start + timedelta(seconds=10 * 1000)
    due = start
    for _ in range(500):
        due = every.next_after(due)
    assert due == start + timedelta(seconds=5000)


def test_fractional_interval_has_no_drift() -> None:
    runs = Interval(0.1).next_n(NOW, 1000)
    assert runs[-1] == NOW + timedelta(seconds=100)


def test_interval_is_elapsed_time_across_dst() -> None:
    before = utc(2026, 3, 8, 6, 0)  # 01:00 EST
    assert Interval(86400).next_after(before) == utc(2026, 3, 9, 6, 0)  # 02:00 EDT


def test_interval_spec_and_equality() -> None:
    assert Interval(1800).spec == "1800"
    assert Interval(1800.0).spec == "1800"
    assert Interval(1.5).spec == "1.5"
    assert Interval(1800).kind == "interval"
    assert Interval(1800) == Interval(1800.0)
    assert Interval(1800) != Interval(60)
    assert len({Interval(60), Interval(60.0)}) == 1
    assert isinstance(Interval(60), Recurrence)
    assert "1800" in repr(Interval(1800))


def test_interval_next_after_converts_to_utc() -> None:
    got = Interval(60).next_after(local(BERLIN, 2026, 7, 1, 9, 0))
    assert got == utc(2026, 7, 1, 7, 1)
    assert got.tzinfo is UTC


def test_interval_rejects_bad_values() -> None:
    with pytest.raises(BadSchedule):
        Interval(0)
    with pytest.raises(BadSchedule):
        Interval(-10)


def test_next_n_edges() -> None:
    assert Interval(10).next_n(NOW, 0) == []
    with pytest.raises(ValueError):
        Interval(10).next_n(NOW, -1)
    with pytest.raises(ValueError):
        Interval(10).next_after(datetime(2026, 1, 1))


# ---- Cron ----


def test_cron_weekdays_utc() -> None:
    friday = utc(2026, 11, 13, 10, 0)
    runs = Cron("0 9 * * MON-FRI").next_n(friday, 6)
    assert runs == [utc(2026, 11, d, 9, 0) for d in (16, 17, 18, 19, 20, 23)]
    assert all(r.tzinfo is UTC for r in runs)


def test_cron_in_other_zones() -> None:
    friday = utc(2026, 11, 13, 10, 0)
    assert Cron("0 9 * * MON-FRI", "Asia/Tokyo").next_after(friday) == utc(2026, 11, 16, 0, 0)
    assert Cron("0 9 * * *", "Asia/Kolkata").next_after(friday) == utc(2026, 11, 14, 3, 30)
    assert Cron("0 9 * * *", NY).next_after(friday) == utc(2026, 11, 13, 14, 0)


def test_cron_is_strictly_after() -> None:
    cron = Cron("0 9 * * *")
    assert cron.next_after(utc(2026, 11, 16, 9, 0)) == utc(2026, 11, 17, 9, 0)
    assert cron.next_after(utc(2026, 11, 16, 8, 59, 59)) == utc(2026, 11, 16, 9, 0)


def test_cron_follows_wall_clock_across_dst() -> None:
    runs = Cron("0 9 * * *", NY).next_n(utc(2026, 3, 6, 15, 0), 3)
    assert runs == [utc(2026, 3, 7, 14, 0), utc(2026, 3, 8, 13, 0), utc(2026, 3, 9, 13, 0)]


def test_new_york_skipped_time_fires_once_after_the_gap() -> None:
    runs = Cron("30 2 * * *", NY).next_n(utc(2026, 3, 6, 12, 0), 3)
    # 02:30 EST, then 03:00 EDT (02:30 does not exist), then 02:30 EDT.
    assert runs == [utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)]
    two_in_gap = Cron("0,30 2 * * *", NY).next_n(utc(2026, 3, 7, 12, 0), 2)
    assert two_in_gap == [utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 0)]


def test_new_york_repeated_time_fires_once() -> None:
    runs = Cron("30 1 * * *", NY).next_n(utc(2026, 10, 30, 12, 0), 3)
    # croniter 7 alone fires at 01:30 EDT and again at 01:30 EST on 1 November.
    assert runs == [utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_repeated_time_from_inside_the_fold() -> None:
    cron = Cron("30 1 * * *", NY)
    inside = utc(2026, 11, 1, 6, 10)  # 01:10 EST, after the 01:30 EDT run
    assert cron.next_after(inside) == utc(2026, 11, 2, 6, 30)
    every_20 = Cron("*/20 1 * * *", NY).next_n(utc(2026, 11, 1, 5, 0), 4)
    assert every_20 == [
        utc(2026, 11, 1, 5, 20),
        utc(2026, 11, 1, 5, 40),
        utc(2026, 11, 2, 6, 0),
        utc(2026, 11, 2, 6, 20),
    ]


def test_wildcard_hour_follows_the_clock_in_new_york() -> None:
    fall = Cron("30 * * * *", NY).next_n(utc(2026, 11, 1, 4, 0), 4)
    assert fall == [utc(2026, 11, 1, h, 30) for h in (4, 5, 6, 7)]  # 01:30 twice
    spring = Cron("30 * * * *", NY).next_n(utc(2026, 3, 8, 5, 0), 3)
    assert spring == [utc(2026, 3, 8, 5, 30), utc(2026, 3, 8, 6, 30), utc(2026, 3, 8, 7, 30)]
    inside = Cron("*/20 * * * *", NY).next_after(utc(2026, 11, 1, 5, 40))  # 01:40 EDT
    assert inside == utc(2026, 11, 1, 6, 0)  # 01:00 EST


def test_cron_berlin_gap_and_fold() -> None:
    spring = Cron("30 2 * * *", BERLIN).next_n(utc(2026, 3, 27, 12, 0), 3)
    assert spring == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]
    fall = Cron("30 2 * * *", BERLIN).next_n(utc(2026, 10, 23, 12, 0), 3)
    assert fall == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_cron_lord_howe_half_hour_shift() -> None:
    spring = Cron("15 2 * * *", LORD_HOWE).next_n(utc(2026, 10, 2, 12, 0), 3)
    # 02:15 +10:30, then 02:30 +11:00 (02:00-02:30 is skipped), then 02:15 +11:00.
    assert spring == [utc(2026, 10, 2, 15, 45), utc(2026, 10, 3, 15, 30), utc(2026, 10, 4, 15, 15)]
    fall = Cron("45 1 * * *", LORD_HOWE).next_n(utc(2026, 4, 3, 12, 0), 3)
    # 01:45 happens at +11:00 and again at +10:30 on 5 April: once.
    assert fall == [utc(2026, 4, 3, 14, 45), utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)]
    hourly = Cron("15 * * * *", LORD_HOWE).next_n(utc(2026, 10, 3, 13, 30), 3)
    assert hourly == [utc(2026, 10, 3, 13, 45), utc(2026, 10, 3, 14, 45), utc(2026, 10, 3, 16, 15)]


def test_midnight_gap_in_santiago() -> None:
    # 6 Sep 2026: midnight does not exist in Santiago; the day starts at 01:00.
    runs = Cron("@daily", SANTIAGO).next_n(utc(2026, 9, 4, 12, 0), 3)
    assert runs == [utc(2026, 9, 5, 4, 0), utc(2026, 9, 6, 4, 0), utc(2026, 9, 7, 3, 0)]
    fall = Cron("30 23 * * *", SANTIAGO).next_n(utc(2026, 4, 3, 12, 0), 3)
    assert fall == [utc(2026, 4, 4, 2, 30), utc(2026, 4, 5, 2, 30), utc(2026, 4, 6, 3, 30)]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("@hourly", utc(2026, 11, 16, 11, 0)),
        ("@daily", utc(2026, 11, 17, 0, 0)),
        ("@midnight", utc(2026, 11, 17, 0, 0)),
        ("@weekly", utc(2026, 11, 22, 0, 0)),
        ("@monthly", utc(2026, 12, 1, 0, 0)),
        ("@yearly", utc(2027, 1, 1, 0, 0)),
        ("@annually", utc(2027, 1, 1, 0, 0)),
        ("@DAILY", utc(2026, 11, 17, 0, 0)),
    ],
)
def test_cron_aliases(expr: str, expected: datetime) -> None:
    cron = Cron(expr)
    assert cron.next_after(NOW) == expected
    assert cron.spec == expr.lower()


def test_six_fields_take_seconds_last() -> None:
    runs = Cron("* * * * * */15").next_n(NOW, 3)
    assert runs == [NOW + timedelta(seconds=s) for s in (15, 30, 45)]


@pytest.mark.parametrize("spec", ["0.001 seconds", 0.5, timedelta(milliseconds=999), "every 0.9s"])
def test_an_interval_under_the_minimum_is_refused_where_schedules_are_accepted(spec: object) -> None:
    with pytest.raises(BadSchedule, match=r"shorter than the minimum, 1 second \(the min_interval setting\)"):
        parse_every(spec, min_interval=1.0)  # type: ignore[arg-type]
    assert parse_every(spec).kind == "interval"  # a stored schedule still loads


def test_the_minimum_interval_is_a_setting() -> None:
    assert parse_every("1 second", min_interval=1.0).spec == "1"
    assert parse_every(0.2, min_interval=0.1).spec == "0.2"
    with pytest.raises(BadSchedule, match="shorter than the minimum, 30 seconds"):
        parse_every("10 seconds", min_interval=30)


@pytest.mark.parametrize("expr", ["* * * * * *", "0 0 12 * * *", "0 */5 * * * 0-59", "0 9 * * MON *"])
def test_a_cron_firing_every_second_of_a_minute_is_refused_with_the_reason(expr: str) -> None:
    """'0 0 12 * * *' is Quartz for noon; read seconds last it fires 60 times at 00:00 on the 12th."""
    with pytest.raises(BadSchedule, match="fires 60 times a minute") as info:
        parse_every(expr, min_interval=0)
    assert "seconds last" in str(info.value) and "Quartz" in str(info.value)


def test_a_cron_seconds_field_is_held_to_the_minimum_interval() -> None:
    assert parse_every("* * * * * */15", min_interval=1.0).spec == "* * * * * */15"
    assert parse_every("0 9 * * * 30", min_interval=120).spec == "0 9 * * * 30"  # once a minute at most
    with pytest.raises(BadSchedule, match="fires 4 times a minute, 15 s apart"):
        check_frequency(Cron("* * * * * */15"), 20)


@pytest.mark.parametrize(
    ("expr", "classic"),
    [
        ("0 0 12 * * ?", "'0 12 * * *'"),
        ("0 15 10 ? * MON-FRI", "'15 10 * * mon-fri'"),
        ("30 0 12 * * ?", "'0 12 * * * 30'"),
        ("0 0 12 * * ? 2027", "'0 12 * * *'"),
        ("0 0 9 * * MON", "'0 9 * * mon'"),
        ("0 0 * * 5L", None),
        ("0 0 12 LW * ?", None),
        ("0 0 12 ? * 6#3 *", None),
    ],
)
def test_a_quartz_expression_gets_our_message(expr: str, classic: str | None) -> None:
    with pytest.raises(BadSchedule, match="looks like a Quartz cron expression") as info:
        parse_every(expr)
    message = str(info.value)
    assert "seconds last" in message and "croniter" not in message.lower()
    assert (f"here that is {classic}" in message) if classic else "here that is" not in message


@pytest.mark.parametrize("expr", ["0 0 L * *", "0 0 15W * *", "0 0 * * 5#3"])
def test_classic_cron_with_croniters_l_w_and_hash_still_works(expr: str) -> None:
    assert Cron(expr).next_after(NOW) > NOW


@pytest.mark.parametrize(
    "expr", ["59/15 * * * *", "0 23/2 * * *", "0 0 31/2 * *", "0 0 1 DEC/2 *", "0 0 * * SAT/2"]
)
def test_croniter7_max_step_fields_are_refused(expr: str) -> None:
    with pytest.raises(BadSchedule, match="croniter 7") as info:
        Cron(expr)
    assert "ambiguous" in str(info.value)


def test_max_step_refusal_names_the_field_and_fix() -> None:
    with pytest.raises(BadSchedule) as info:
        Cron("59/15 * * * *")
    message = str(info.value)
    assert "'59/15'" in message
    assert "minute 59 only" in message
    assert "'*/15'" in message


@pytest.mark.parametrize("expr", ["*/15 * * * *", "0/15 * * * *", "10/15 * * * *", "0 22/2 * * *"])
def test_other_steps_are_accepted(expr: str) -> None:
    assert Cron(expr).next_after(NOW) > NOW


@pytest.mark.parametrize(
    "expr", ["61 * * * *", "0 9 * * FOO", "*/0 * * * *", "0 9 * *", "0 9 * * 1 0 2027", "@fortnightly"]
)
def test_bad_cron_expressions(expr: str) -> None:
    with pytest.raises(BadSchedule):
        Cron(expr)


def test_cron_that_never_fires() -> None:
    with pytest.raises(BadSchedule, match="never fires"):
        Cron("0 0 30 2 *")


def test_cron_bad_zone() -> None:
    with pytest.raises(BadSchedule, match="Mars/Olympus"):
        Cron("0 9 * * *", "Mars/Olympus")


def test_cron_spec_equality_and_repr() -> None:
    cron = Cron(" 0  9 * *   MON-FRI ", BERLIN)
    assert cron.spec == "0 9 * * MON-FRI"
    assert cron.kind == "cron"
    assert cron == Cron("0 9 * * MON-FRI", BERLIN)
    assert cron != Cron("0 9 * * MON-FRI", NY)
    assert BERLIN in repr(cron)


def test_cron_next_after_takes_any_aware_time() -> None:
    got = Cron("0 9 * * *", BERLIN).next_after(local(NY, 2026, 7, 1, 2, 0))  # 08:00 Berlin
    assert got == utc(2026, 7, 1, 7, 0)
    assert got.tzinfo is UTC
    with pytest.raises(ValueError):
        Cron("0 9 * * *").next_after(datetime(2026, 7, 1))


# ---- parse_every and recurrence_from_db ----


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("30 minutes", Interval(1800)),
        ("every 30 minutes", Interval(1800)),
        ("1 hour 30 minutes 10 seconds", Interval(5410)),
        ("daily", Interval(86400)),
        (timedelta(hours=1), Interval(3600)),
        (90, Interval(90)),
        ("0 9 * * MON-FRI", Cron("0 9 * * MON-FRI")),
        ("*/5 * * * *", Cron("*/5 * * * *")),
        ("0 9 * * * 30", Cron("0 9 * * * 30")),
        ("@daily", Cron("@daily")),
    ],
)
def test_parse_every(spec: str | timedelta | int, expected: Recurrence) -> None:
    assert parse_every(spec) == expected


def test_parse_every_passes_the_zone_to_cron() -> None:
    cron = parse_every("0 9 * * *", BERLIN)
    assert isinstance(cron, Cron)
    assert cron.tz == BERLIN
    assert cron.next_after(utc(2026, 7, 1, 0, 0)) == utc(2026, 7, 1, 7, 0)


@pytest.mark.parametrize("spec", ["every blue moon", "0 9 * *", "59/15 * * * *", "0 minutes"])
def test_parse_every_errors(spec: str) -> None:
    with pytest.raises(BadSchedule):
        parse_every(spec)


def test_recurrence_round_trips_through_the_db() -> None:
    for rec, tz in [
        (parse_every("30 minutes"), "UTC"),
        (parse_every(1.5), "UTC"),
        (parse_every("0 9 * * MON-FRI", BERLIN), BERLIN),
    ]:
        assert recurrence_from_db(rec.kind, rec.spec, tz) == rec
    assert recurrence_from_db("interval", "1800", "UTC") == Interval(1800)


@pytest.mark.parametrize(
    ("kind", "spec"), [("interval", "abc"), ("interval", "0"), ("weekly", "1"), ("cron", "x")]
)
def test_recurrence_from_db_errors(kind: str, spec: str) -> None:
    with pytest.raises(BadSchedule):
        recurrence_from_db(kind, spec, "UTC")


# ---- helpers ----


def test_utcnow_is_aware_utc() -> None:
    assert utcnow().tzinfo is UTC


def test_timestamps() -> None:
    assert to_timestamp(utc(1970, 1, 1, 0, 1)) == 60.0
    assert to_timestamp(datetime(1970, 1, 1, 0, 1)) == 60.0  # naive is UTC
    assert to_timestamp(local(BERLIN, 1970, 1, 1, 1, 1)) == 60.0
    assert from_timestamp(60.5) == datetime(1970, 1, 1, 0, 1, 0, 500000, tzinfo=UTC)
    assert from_timestamp(60).tzinfo is UTC
    assert from_timestamp(to_timestamp(NOW)) == NOW
