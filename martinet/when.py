"""Time: English times, intervals, cron expressions, zones and next-run arithmetic.

Pure code: only `utcnow()` reads the clock; what needs "now" takes it as an
argument. Every datetime leaving this module is aware UTC. Wall times are
placed on the time line here, not by dateparser or croniter: a wall time lost
to a DST gap becomes the first instant after the gap, one that happens twice
its first occurrence. Durations ("in 20 minutes", "1h30m", intervals) are
elapsed time, so DST never stretches them.

The next-occurrence rule of `parse_when`: text naming neither a year nor
anything relative means its next occurrence, so a result in the past moves
forward: a time of day alone ("at 9am" said at 10am, "midnight", "noon") by a
day, a weekday ("friday", "monday 9am" said on Monday at 10) by a week, a day
without a year ("dec 25") by a year. Text with a relative part ("in 2 days",
"tomorrow at 9am", "next monday", "tonight", "2 hours ago") or a year
("2020-01-01") is returned as is, even in the past. Text naming no day
("march 2027") is refused rather than guessed.

Times in the past, one rule for every form: "yesterday", "2 hours ago",
"in -5 minutes", a negative delay (-5, timedelta(seconds=-5)) and a past
datetime are all returned as the past time they name, and a task due in the
past runs now (the client warns: `warn_if_past`).

`Cron` keeps the classic cron rule for DST: a job at a fixed hour whose time
is skipped runs at the first instant after the gap, and one whose time happens
twice runs once; a job whose hour field is `*` follows the clock (it skips the
lost hour and repeats the doubled one). A sixth field is seconds, as in
croniter (last, not first as in Quartz). Where a schedule is accepted,
`parse_every(..., min_interval=...)` also refuses one that would fire more
often than the minimum interval, and a seconds field of `*` (every second).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from martinet.errors import BadInput, BadSchedule, BadTime

if TYPE_CHECKING:
    from dateparser.date import DateData

log = logging.getLogger(__name__)

# No sane time expression is longer; bounds what we hand to dateparser.
MAX_TEXT = 200

_INTERVAL_HINT = "try '30 minutes' or a cron expression like '0 9 * * MON-FRI'"
_RATE_HINT = "try '100/minute' or '5/second'"

_UNITS = {
    name: seconds
    for names, seconds in [("s sec secs second seconds", 1), ("m min mins minute minutes", 60)]
    + [("h hr hrs hour hours", 3600), ("d day days", 86400), ("w wk wks week weeks", 604800)]
    for name in names.split()
}
_ALIASES = {"minutely": 60, "hourly": 3600, "daily": 86400, "weekly": 604800}
_PART = re.compile(r"(?:(?P<num>[+-]?(?:\d+(?:\.\d+)?|\.\d+))\s*|(?P<one>an?|one)\s+)?(?P<unit>[a-z]+)")
_SEP = re.compile(r"(?:\s*(?:,|\band\b))*\s*")
_DURATION_TEXT = re.compile(r"(?:in\s+)?(?P<d>.+?)(?:\s+(?:from\s+now|later|hence))?")
# "100/minute", "5/s", "50 / 10 seconds", "100/60s", "3 per day".
_RATE = re.compile(r"(?P<count>\d+)\s*(?:/|\bper\b)\s*(?P<num>\d+(?:\.\d+)?|\.\d+)?\s*(?P<unit>[a-z]+)")
# A count this large is a typo, not a limit (and would not fit an INTEGER column).
_MAX_RATE_COUNT = 2**31 - 1
_BARE_CALENDAR_DURATION = re.compile(r"(?:\d+|an?|one)\s*(?:months?|years?)\b")

_RELATIVE = re.compile(r"\b(?:in|ago|now|today|tonight|tomorrow|yesterday|next|last|this|hence|later|from)\b")
# A year, not a UTC offset like "+0530".
_YEAR = re.compile(r"(?<![+\-:\d])\d{4}(?!\d)")
_WEEKDAY = re.compile(r"\b(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)(?:day|nesday|sday|urday)?\b")

_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELD = re.compile(r"[\d*/,\-]+")
# Largest value of each field, in croniter's order: minute, hour, day of
# month, month, day of week, second.
_FIELD_MAX = (59, 23, 31, 12, 6, 59)
_FIELD_NAMES = ("minute", "hour", "day of month", "month", "day of week", "second")
_NAMES = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())} | {
    n: i + 1 for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())
}


def utcnow() -> datetime:
    """The current time, aware, in UTC (the only clock read in this module)."""
    return datetime.now(UTC)


def to_timestamp(dt: datetime) -> float:
    """Seconds since the epoch; a naive datetime is taken to be UTC (as stored)."""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def from_timestamp(ts: float) -> datetime:
    """Aware UTC datetime from seconds since the epoch."""
    return datetime.fromtimestamp(ts, UTC)


def _require_aware(dt: Any, name: str) -> None:
    if not isinstance(dt, datetime) or dt.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {dt!r}")


def _zone(name: str, error: type[Exception]) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise error(f"unknown time zone {name!r} (use an IANA name like 'Europe/Berlin')") from None


def check_timezone(name: Any) -> str:
    """The IANA zone name, or BadTime saying it is unknown."""
    if not isinstance(name, str) or not name:
        raise BadTime(f"unknown time zone {name!r} (use an IANA name like 'Europe/Berlin')")
    _zone(name, BadTime)
    return name


def _localize(wall: datetime, zone: ZoneInfo) -> datetime:
    """Naive wall time in `zone` -> aware UTC.

    A wall time in a DST gap becomes the first valid instant after the gap;
    one in a fold becomes its first occurrence (fold=0).
    """
    utc = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == wall:
        return utc
    # In a gap, fold=0 and fold=1 read the wall time with the offsets from
    # either side of the change, which lies between the two instants: find it.
    lo, hi = sorted((utc, wall.replace(tzinfo=zone, fold=1).astimezone(UTC)))
    after = hi.astimezone(zone).utcoffset()
    lo_s, hi_s = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if from_timestamp(mid).astimezone(zone).utcoffset() == after:
            hi_s = mid
        else:
            lo_s = mid
    log.debug("%s does not exist in %s; using %s", wall, zone.key, from_timestamp(hi_s))
    return from_timestamp(hi_s)


def parse_when(when: str | datetime | timedelta | int | float, now: datetime, tz: str = "UTC") -> datetime:
    """When something should run, as an aware UTC datetime.

    `when` is English text (read in zone `tz`), a datetime (naive means wall
    time in `tz`), or a delay from `now` (timedelta, or seconds). See the
    module docstring for the next-occurrence rule.
    """
    _require_aware(now, "now")
    now = now.astimezone(UTC)
    zone = _zone(tz, BadTime)
    try:
        if isinstance(when, datetime):
            return _place(when, zone)
        if isinstance(when, timedelta | int | float) and not isinstance(when, bool):
            seconds = when.total_seconds() if isinstance(when, timedelta) else float(when)
            if not math.isfinite(seconds):
                raise BadTime(f"a delay must be a finite number of seconds, got {when!r}")
            return now + timedelta(seconds=seconds)  # a negative one is in the past: it runs now
        if isinstance(when, str):
            return _parse_text(when, now, zone)
    except OverflowError:
        raise BadTime(f"{when!r} is out of range (too far from now)") from None
    raise BadTime(f"cannot use {when!r} as a time")


def _parse_text(text: str, now: datetime, zone: ZoneInfo) -> datetime:
    text = " ".join(text.split())
    if not text:
        raise BadTime("empty time: give one like 'in 20 minutes' or '2027-01-05 08:00'")
    if len(text) > MAX_TEXT:
        raise BadTime(f"time text is longer than {MAX_TEXT} characters")
    low = text.lower()
    if low == "now":
        return now
    spoken = _DURATION_TEXT.fullmatch(low)
    assert spoken is not None  # it takes any text that is not empty
    duration = _duration_seconds(spoken["d"])
    if duration is not None:
        return now + timedelta(seconds=duration)  # "in -5 minutes" is in the past: it runs now
    if _BARE_CALENDAR_DURATION.match(low):
        low = "in " + low  # "1 month" means from now, not ago

    local_now = now.astimezone(zone).replace(tzinfo=None)
    data = _date_data(low, local_now)
    found = data.date_obj
    if found is None:
        raise BadTime(f"could not read {text!r} as a time")
    parts = getattr(data, "parts", None) or ()
    relative = bool(_RELATIVE.search(low))
    if parts and "day" not in parts and not relative:
        raise BadTime(f"{text!r} names no day; give a full date like '2027-03-01 09:00'")

    yearless = "month" in parts and "year" not in parts
    step = timedelta(days=7 if _WEEKDAY.search(low) else 1)
    fixed = relative or bool(_YEAR.search(low))
    result, k = _place(found, zone), 0
    while result < now and not fixed and k < 8:
        k += 1
        try:
            result = _place(found.replace(year=found.year + k) if yearless else found + k * step, zone)
        except ValueError:  # 29 February in a common year: try the next
            continue
    return result


def _place(found: datetime, zone: ZoneInfo) -> datetime:
    """A datetime as aware UTC; naive means wall time in `zone`."""
    if found.utcoffset() is None:
        return _localize(found.replace(tzinfo=None), zone)
    return found.astimezone(UTC)


def _date_data(text: str, relative_base: datetime) -> DateData:
    """dateparser's reading of `text` relative to a naive wall time.

    A DateDataParser fixes its settings, RELATIVE_BASE included, when made, so
    each call makes one: the costly part (locale data, ~140 ms) is loaded once
    per process and shared, and a new parser costs ~0.04 ms. TIMEZONE "UTC"
    keeps dateparser's arithmetic naive ("local" would use the machine's zone).
    """
    from dateparser.date import DateDataParser  # slow import (~90 ms): on first use

    settings = {"TIMEZONE": "UTC", "RELATIVE_BASE": relative_base}
    return DateDataParser(languages=["en"], settings=settings).get_date_data(text)


def _duration_seconds(text: str) -> float | None:
    """'1h30m', '1 hour and 30 minutes', 'an hour' -> seconds; None if unreadable."""
    pos, total, found = 0, 0.0, False
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None or m["unit"] not in _UNITS:
            return None
        total += (float(m["num"]) if m["num"] else 1.0) * _UNITS[m["unit"]]
        found = True
        sep = _SEP.match(text, m.end())
        assert sep is not None  # it matches the empty string
        pos = sep.end()
    return total if found else None


def parse_interval(spec: str | timedelta | int | float) -> timedelta:
    """A positive length of time: '30 minutes', 'every 1h30m', 'daily', 90, timedelta."""
    if isinstance(spec, timedelta | int | float) and not isinstance(spec, bool):
        return _positive(spec.total_seconds() if isinstance(spec, timedelta) else float(spec), spec)
    if not isinstance(spec, str):
        raise BadSchedule(f"cannot use {spec!r} as an interval")
    text = re.sub(r"^every\s+", "", " ".join(spec.lower().split()))
    seconds = _ALIASES.get(text) or _duration_seconds(text)
    if seconds is None:
        if re.search(r"\b(?:months?|years?)\b", text):
            raise BadSchedule(
                f"could not read {spec!r} as an interval: months and years vary in"
                " length, use a cron expression like '0 9 1 * *'"
            )
        raise BadSchedule(f"could not read {spec!r} as an interval ({_INTERVAL_HINT})")
    return _positive(seconds, spec)


def format_interval(seconds: float) -> str:
    """An interval as people write it, which parse_interval reads back: 1800 -> '30 minutes',
    5400 -> '1 hour 30 minutes', 90061.5 -> '1 day 1 hour 1 minute 1.5 seconds'."""
    parts = []
    rest = round(float(seconds), 6)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{int(count)} {unit}{'' if count == 1 else 's'}")
    rest = round(rest, 6)
    if rest or not parts:
        text = f"{rest:.6f}".rstrip("0").rstrip(".")  # never 1e-06, which it could not read back
        parts.append(f"{text} second{'' if rest == 1 else 's'}")
    return " ".join(parts)


def _positive(seconds: float, spec: object) -> timedelta:
    try:
        delta = timedelta(seconds=seconds)  # rounds to whole microseconds
    except (OverflowError, ValueError):
        raise BadSchedule(f"an interval of {spec!r} is out of range") from None
    if delta <= timedelta(0):
        raise BadSchedule(f"an interval must be longer than zero, got {spec!r}")
    return delta


def parse_age(spec: str | timedelta | int | float) -> float:
    """How old, in seconds (0 or more): '30 days', '12h', '1 week 2 days', 90, a timedelta.

    Used by retention ("tasks finished more than 30 days ago"); unlike an
    interval, 0 is allowed. A negative or unreadable age is refused, quoted.
    """
    if isinstance(spec, bool) or not isinstance(spec, str | timedelta | int | float):
        raise BadInput(f"cannot use {spec!r} as an age; give one like '30 days'")
    if isinstance(spec, str):
        text = " ".join(spec.lower().split())
        if re.fullmatch(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)", text):
            seconds: float | None = float(text)
        else:
            seconds = _ALIASES.get(text) or _duration_seconds(text)
        if seconds is None:
            raise BadInput(f"could not read {spec!r} as an age (try '30 days' or '12 hours')")
    else:
        seconds = spec.total_seconds() if isinstance(spec, timedelta) else float(spec)
    if seconds < 0:
        raise BadInput(f"an age must be 0 or more, got {spec!r}")
    if not math.isfinite(seconds) or seconds > 1e11:  # 3,000 years: a typo, not an age
        raise BadInput(f"an age of {spec!r} is out of range")
    return seconds


class Recurrence:
    """A rule giving each due time from the one before."""

    kind: str  # "interval" or "cron"
    spec: str  # canonical text, as stored in the database

    def next_after(self, prev_due: datetime) -> datetime:
        """The first due time strictly after `prev_due` (aware; UTC out)."""
        raise NotImplementedError

    def next_n(self, after: datetime, n: int) -> list[datetime]:
        """The next `n` due times after `after`."""
        if n < 0:
            raise ValueError(f"n must be zero or more, got {n}")
        return [after := self.next_after(after) for _ in range(n)]

    def _key(self) -> tuple[Any, ...]:
        return (self.kind, self.spec, getattr(self, "tz", None))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recurrence) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class Interval(Recurrence):
    """Every `seconds` of elapsed time, counted from the previous due time."""

    kind = "interval"

    def __init__(self, seconds: float) -> None:
        self.delta = parse_interval(seconds)
        self.seconds = self.delta.total_seconds()
        self.spec = str(int(self.seconds)) if self.seconds.is_integer() else repr(self.seconds)

    def next_after(self, prev_due: datetime) -> datetime:
        _require_aware(prev_due, "prev_due")
        return prev_due.astimezone(UTC) + self.delta

    def __repr__(self) -> str:
        return f"Interval({self.spec})"


class Cron(Recurrence):
    """A cron expression matched against wall time in zone `tz`."""

    kind = "cron"

    def __init__(self, expr: str, tz: str = "UTC") -> None:
        from croniter import CroniterBadDateError, croniter  # slow import (~100 ms): on first use

        text = " ".join(str(expr).split())
        if text.startswith("@"):
            text = text.lower()
            if text not in _CRON_ALIASES:
                raise BadSchedule(f"unknown cron alias {expr!r} (use one of {', '.join(_CRON_ALIASES)})")
        elif len(text.split()) not in (5, 6):
            _reject_quartz(expr, text)
            raise BadSchedule(
                f"could not read {expr!r} as a cron expression: it needs 5 fields"
                " (minute hour day month weekday), or 6 with seconds last"
            )
        else:
            _reject_max_step(expr, text.split())
        self.spec, self.tz, self.zone = text, tz, _zone(tz, BadSchedule)
        try:
            it = croniter(text, datetime(2000, 1, 1, tzinfo=self.zone))
            # Each field's values: ints, or ["*"] for every value (the stubs say str only).
            fields: Sequence[Sequence[int | str]] = it.expanded
            self._every_hour = fields[1] == ["*"]
            # The seconds a 6-field expression fires at in a minute (one, 0, for 5 fields).
            seconds = fields[5] if len(fields) > 5 else [0]
            self.seconds: list[int] = (
                list(range(60)) if seconds == ["*"] else sorted(int(second) for second in seconds)
            )
            it.get_next(datetime)
        except CroniterBadDateError:
            raise BadSchedule(f"cron expression {expr!r} never fires") from None
        except (ValueError, KeyError, TypeError) as e:
            _reject_quartz(expr, text)
            raise BadSchedule(f"could not read {expr!r} as a cron expression: {e}") from None

    def next_after(self, prev_due: datetime) -> datetime:
        from croniter import croniter

        _require_aware(prev_due, "prev_due")
        prev_due = prev_due.astimezone(UTC)
        it = croniter(self.spec, prev_due.astimezone(self.zone))
        # croniter 7 fires twice when a fall-back repeats a fixed-hour job's
        # time: skip the repeat. Bounded by the longest fold, in seconds.
        for _ in range(100_000):
            due = it.get_next(datetime).astimezone(UTC)
            wall = due.astimezone(self.zone).replace(tzinfo=None)
            if due > prev_due and (self._every_hour or _localize(wall, self.zone) == due):
                return due
        raise BadSchedule(f"cron expression {self.spec!r} found no time after {prev_due}")

    def __repr__(self) -> str:
        return f"Cron({self.spec!r}, tz={self.tz!r})"


def _reject_max_step(expr: str, fields: list[str]) -> None:
    """Refuse '{max}/{step}' fields: croniter 7 reads '59/15' as :59 only, older
    versions as every 15 minutes from :00, so a schedule would change meaning."""
    for index, field in enumerate(fields):
        for item in field.lower().split(","):
            m = re.fullmatch(r"([a-z]+|\d+)/(\d+)", item)
            if m is None:
                continue
            start = int(m[1]) if m[1].isdigit() else _NAMES.get(m[1])
            if start == _FIELD_MAX[index]:
                unit = _FIELD_NAMES[index]
                raise BadSchedule(
                    f"cron field {item!r} in {expr!r} is ambiguous: croniter 7 reads"
                    f" it as {unit} {m[1]} only, older versions as every {m[2]}"
                    f" from the start; write {m[1]!r} or '*/{m[2]}'"
                )


# What Quartz (Java) cron has and classic cron lacks: '?', a year field, and L/W/#
# where croniter 7 does not take them (croniter's own message names none of this).
_QUARTZ_MARK = re.compile(r"\?|\d[lw]\b|\bl[w-]|#")


def _reject_quartz(expr: str, text: str) -> None:
    """Refuse, in our words, a Quartz-style expression croniter cannot read: Quartz puts
    seconds first (and may add a year), we take seconds last, as croniter does."""
    fields = text.lower().split()
    quartz_weekday = len(fields) == 6 and re.search(r"[a-z?]", fields[5])  # Quartz's sixth field
    if not (_QUARTZ_MARK.search(text.lower()) or len(fields) == 7 or quartz_weekday):
        return
    hint = ""
    if len(fields) in (6, 7) and re.fullmatch(r"\d+", fields[0]):
        classic = [f.replace("?", "*") for f in fields[1:6]]
        if fields[0] != "0":
            classic.append(fields[0])
        if not any(_QUARTZ_MARK.search(f) for f in classic):
            hint = f"; here that is {' '.join(classic)!r}"
    raise BadSchedule(
        f"{expr!r} looks like a Quartz cron expression (seconds first, '?', a year, or L/W/#"
        " where classic cron has none): martinet takes classic cron, 5 fields (minute hour"
        f" day month weekday) or 6 with seconds last, '*' for 'any'{hint}"
    )


def check_frequency(recurrence: Recurrence, min_interval: float) -> None:
    """Refuse a recurrence that would fire more often than every `min_interval` seconds,
    and a cron whose seconds field is '*': every second of each matching minute is a
    Quartz expression (seconds first) read in croniter's order far more often than a
    schedule meant. Checked where schedules are accepted, not on stored ones."""
    if isinstance(recurrence, Interval):
        if recurrence.seconds < min_interval:
            raise BadSchedule(
                f"an interval of {_seconds_text(recurrence.seconds)} is shorter than the minimum,"
                f" {_seconds_text(min_interval)} (the min_interval setting): each run is a task"
                " stored in the database; use a loop in one task for anything faster"
            )
        return
    if not isinstance(recurrence, Cron) or len(recurrence.seconds) < 2:
        return
    field = recurrence.spec.split()[5]
    if len(recurrence.seconds) == 60:
        raise BadSchedule(
            f"cron expression {recurrence.spec!r} fires 60 times a minute: its sixth field,"
            f" {field!r}, is seconds (croniter's order, seconds last). If it is a Quartz"
            " expression (seconds first), drop its seconds field; for a run every few"
            " seconds use an interval like '10 seconds'"
        )
    gap = min(b - a for a, b in zip(recurrence.seconds, recurrence.seconds[1:], strict=False))
    if gap < min_interval:
        raise BadSchedule(
            f"cron expression {recurrence.spec!r} fires {len(recurrence.seconds)} times a minute,"
            f" {gap} s apart (its seconds field {field!r}): that is more often than the minimum"
            f" interval, {_seconds_text(min_interval)} (the min_interval setting)"
        )


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g} second" + ("" if seconds == 1 else "s")


def _looks_like_cron(text: str) -> bool:
    fields = text.split()
    return text.startswith("@") or (len(fields) >= 3 and all(_CRON_FIELD.fullmatch(f) for f in fields[:2]))


def parse_every(
    spec: str | timedelta | int | float, tz: str = "UTC", min_interval: float | None = None
) -> Recurrence:
    """A recurrence: a cron expression (5 or 6 fields, or @alias) or an interval; with
    `min_interval`, one that fires at most that often (check_frequency)."""
    if isinstance(spec, str) and _looks_like_cron(spec.strip()):
        recurrence: Recurrence = Cron(spec, tz)
    else:
        recurrence = Interval(parse_interval(spec).total_seconds())
    if min_interval is not None:
        check_frequency(recurrence, min_interval)
    return recurrence


def warn_if_past(due: datetime, now: datetime, what: str = "the time") -> None:
    """Log a warning when `due` is over a second before `now`: what is due then runs now."""
    late = (now - due).total_seconds()
    if late > 1:
        log.warning(
            "%s (%s) is %s in the past: it runs now", what, due.isoformat(), _seconds_text(round(late))
        )


def recurrence_from_db(kind: str, spec: str, tz: str) -> Recurrence:
    """Rebuild a recurrence from its stored kind, spec and zone."""
    if kind == Interval.kind:
        try:
            return Interval(float(spec))
        except ValueError:
            raise BadSchedule(f"stored interval {spec!r} is not a number of seconds") from None
    if kind == Cron.kind:
        return Cron(spec, tz)
    raise BadSchedule(f"unknown recurrence kind {kind!r} (expected 'interval' or 'cron')")


def parse_rate(text: str) -> tuple[int, float]:
    """A rate limit: '100/minute', '5/s', '50 / 10 seconds', '3/day' -> (count, period in seconds).

    The count is a whole number of at least 1 and the period is longer than
    zero; anything else raises BadInput quoting the text.
    """
    shown = text[:60] + "..." if isinstance(text, str) and len(text) > MAX_TEXT else text
    error = BadInput(f"could not read {shown!r} as a rate ({_RATE_HINT})")
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise error
    m = _RATE.fullmatch(text.strip().lower())
    if m is None or m["unit"] not in _UNITS:
        raise error
    count = int(m["count"])
    period = (float(m["num"]) if m["num"] else 1.0) * _UNITS[m["unit"]]
    if not 1 <= count <= _MAX_RATE_COUNT or not (period > 0 and math.isfinite(period)):
        raise error
    return count, period
