"""Checks on submitted tasks and schedules, and the retry backoff (pure)."""

from __future__ import annotations

import random

import pytest

from martinet.errors import BadInput, BadSchedule
from martinet.protocol import MAX_VALUE_DEPTH
from martinet.retry import RetryPolicy
from martinet.validate import Limits, check_every, check_task

LIMITS = Limits(max_payload=1000, max_name_length=20)


def task(**h):
    return check_task({"name": "add", **h}, LIMITS, 3)


def refused(match: str, **h) -> BadInput:
    with pytest.raises(BadInput, match=match) as info:
        task(**h)
    return info.value


# ---- check_task ---------------------------------------------------------------


def test_a_minimal_task_gets_defaults():
    assert task() == {
        "name": "add",
        "args": {},
        "username": None,
        "description": None,
        "queue": None,
        "priority": 0,
        "max_attempts": 3,
        "run_at": None,
        "request_id": None,
        "timeout": None,
        "retry_base": None,
        "retry_factor": None,
        "retry_cap": None,
        "key": None,
        "unique": "active",
        "after": [],
    }


@pytest.mark.parametrize("key", ["timeout", "retry_base", "retry_factor", "retry_cap"])
@pytest.mark.parametrize("value", [0, -1, True, "5", float("inf"), float("nan")])
def test_time_limit_and_backoff_must_be_positive_numbers(key, value):
    refused(f"{key} must be a positive number of seconds", **{key: value})


def test_a_full_task_is_passed_through():
    spec = task(
        args={"x": 1},
        username="ann",
        description="d",
        queue="q",
        priority=-5,
        max_attempts=7,
        run_at=1_800_000_000,
        request_id="r" * 64,
    )
    assert spec["args"] == {"x": 1}
    assert (spec["priority"], spec["max_attempts"]) == (-5, 7)
    assert spec["run_at"] == 1_800_000_000.0 and isinstance(spec["run_at"], float)
    assert spec["request_id"] == "r" * 64


@pytest.mark.parametrize("name", [None, "", "   ", 5, ["add"], b"add"])
def test_name_must_be_a_non_empty_string(name):
    with pytest.raises(BadInput, match="task name must be a non-empty string"):
        check_task({"name": name}, LIMITS, 3)


def test_name_length_limit():
    assert task(name="n" * 20)["name"] == "n" * 20
    err = refused("task name", name="n" * 21)
    assert "21 characters" in str(err) and "20" in str(err) and "max_name_length" in str(err)


@pytest.mark.parametrize("args", [[1, 2], "x=1", 5, (1,)])
def test_args_must_be_a_dict(args):
    err = refused("args must be a JSON object", args=args)
    assert type(args).__name__ in str(err)


def test_args_that_cannot_be_json():
    refused("args cannot be written as JSON", args={"when": object()})
    refused("args cannot be written as JSON", args={"s": {1, 2}})
    # NaN and Infinity are not JSON: the databases' JSON functions (search) would refuse them
    refused("args cannot be written as JSON: Out of range float", args={"x": [float("nan")]})
    refused("args cannot be written as JSON: Out of range float", args={"x": float("inf")})


def test_args_size_limit():
    # {"b": "..."} is 9 characters of JSON around the payload.
    assert task(args={"b": "x" * (1000 - 9)})["args"]
    err = refused("args are", args={"b": "x" * (1000 - 8)})
    assert "1001 bytes" in str(err) and "1000" in str(err) and "max_payload" in str(err)


def test_args_nested_deeper_than_the_limit():
    """The frames that carry args (a submit, a TASK, a reply) would be refused as too deep."""

    def nested(depth: int) -> dict:
        value: object = 1
        for level in range(depth - 1):
            value = [value] if level % 2 else {"a": value}
        return {"top": value}

    assert task(args=nested(MAX_VALUE_DEPTH))["args"]
    refused(
        f"args nest lists and dicts more than {MAX_VALUE_DEPTH} levels deep", args=nested(MAX_VALUE_DEPTH + 1)
    )
    deep: list = []
    for _ in range(100_000):  # deeper than Python's recursion limit: json.dumps raises RecursionError
        deep = [deep]
    refused(f"more than {MAX_VALUE_DEPTH} levels deep", args={"x": deep})


def test_none_args_are_an_empty_dict():
    assert task(args=None)["args"] == {}


@pytest.mark.parametrize("key", ["priority", "max_attempts"])
@pytest.mark.parametrize("value", [True, False, "3", 2.0, 1.5, [3]])
def test_integer_fields_refuse_other_types(key, value):
    err = refused(key, **{key: value})
    assert "must be an integer" in str(err)
    assert repr(value) in str(err)


@pytest.mark.parametrize(
    "key, value",
    [("max_attempts", 0), ("max_attempts", 1001), ("priority", 1_000_001), ("priority", -1_000_001)],
)
def test_integer_fields_out_of_range(key, value):
    err = refused(key, **{key: value})
    assert str(value) in str(err)


def test_integer_field_bounds_are_inclusive():
    assert task(max_attempts=1)["max_attempts"] == 1
    assert task(max_attempts=1000)["max_attempts"] == 1000
    assert task(priority=1_000_000)["priority"] == 1_000_000
    assert task(priority=-1_000_000)["priority"] == -1_000_000


@pytest.mark.parametrize("run_at", ["tomorrow", True, [1], {"t": 1}])
def test_bad_run_at(run_at):
    refused("run_at must be a UTC timestamp", run_at=run_at)


@pytest.mark.parametrize(
    "key, value, limit",
    [
        ("username", "u" * 256, 255),
        ("queue", "q" * 256, 255),
        ("request_id", "r" * 65, 64),
        ("description", "d" * 10_001, 10_000),
        ("username", 5, 255),
    ],
)
def test_text_fields(key, value, limit):
    err = refused(key, **{key: value})
    assert str(limit) in str(err)


# ---- check_every --------------------------------------------------------------


def every(**h):
    return check_every({"name": "tick", **h}, LIMITS, "Europe/Paris")


def test_every_interval():
    spec, rec = every(every="30 minutes", args={"a": 1})
    assert (rec.kind, rec.spec) == ("interval", "1800")
    assert (spec["kind"], spec["spec"], spec["timezone"]) == ("interval", "1800", "Europe/Paris")
    assert spec["max_attempts"] is None  # the daemon's default applies at each run
    assert spec["first_due"] is None
    assert spec["args"] == {"a": 1}


def test_every_cron_with_zone_and_first_due():
    spec, rec = every(
        every="0 9 * * MON-FRI", timezone="America/New_York", first_due=1_800_000_000, max_attempts=2
    )
    assert (rec.kind, spec["spec"], spec["timezone"]) == ("cron", "0 9 * * MON-FRI", "America/New_York")
    assert spec["first_due"] == 1_800_000_000
    assert spec["max_attempts"] == 2


@pytest.mark.parametrize("value", [None, True, [1], {"minutes": 5}])
def test_every_must_be_an_interval_or_cron(value):
    with pytest.raises(BadInput, match="every must be"):
        every(every=value)


def test_every_that_cannot_be_read():
    with pytest.raises(BadSchedule):
        every(every="every blue moon")
    with pytest.raises(BadSchedule):
        every(every=0)


@pytest.mark.parametrize("first_due", ["soon", True])
def test_bad_first_due(first_due):
    with pytest.raises(BadInput, match="first_due must be a UTC timestamp"):
        every(every=60, first_due=first_due)


def test_every_checks_the_task_fields_too():
    with pytest.raises(BadInput, match="task name"):
        check_every({"name": "", "every": 60}, LIMITS, "UTC")
    with pytest.raises(BadInput, match="max_attempts"):
        every(every=60, max_attempts=0)
    with pytest.raises(BadInput, match="args"):
        every(every=60, args=[1])


# ---- retry backoff ------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [RetryPolicy(), RetryPolicy(base=0.5, factor=3.0, cap=60.0), RetryPolicy(base=2, factor=1, cap=5)],
)
def test_delay_stays_within_the_exponential_ceiling(policy):
    rand = random.Random(1234)
    for attempt in range(1, 40):
        ceiling = min(policy.cap, policy.base * policy.factor ** (attempt - 1))
        for _ in range(50):
            d = policy.delay(attempt, rand)
            assert 0 <= d <= ceiling, (attempt, d, ceiling)


def test_delay_ceiling_grows_then_caps():
    policy = RetryPolicy(base=1.0, factor=2.0, cap=300.0)
    rand = random.Random(7)
    highest = {a: max(policy.delay(a, rand) for _ in range(500)) for a in (1, 2, 3, 4, 9, 10, 20)}
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 256), (10, 300), (20, 300)]:
        assert 0.95 * ceiling <= highest[attempt] <= ceiling, attempt  # full jitter reaches near the top


def test_delay_is_jittered_down_to_zero():
    rand = random.Random(99)
    draws = [RetryPolicy().delay(5, rand) for _ in range(500)]
    assert min(draws) < 0.05 * 16
    assert len(set(draws)) == len(draws)


def test_delay_is_reproducible_with_a_seed():
    policy = RetryPolicy()
    first = [policy.delay(a, random.Random(42)) for a in range(1, 10)]
    again = [policy.delay(a, random.Random(42)) for a in range(1, 10)]
    assert first == again


@pytest.mark.parametrize("attempt", [0, -3])
def test_delay_before_the_first_attempt_uses_the_base(attempt):
    rand = random.Random(3)
    assert all(0 <= RetryPolicy(base=4).delay(attempt, rand) <= 4 for _ in range(100))


def test_delay_with_a_huge_attempt_number_is_capped():
    assert 0 <= RetryPolicy().delay(1000, random.Random(0)) <= 300.0


@pytest.mark.parametrize("factor", [2.0, 3.0, 3, 10.0])
def test_delay_does_not_overflow_for_many_attempts(factor):
    # max_attempts may be 1000, and retry_factor is configurable: 3.0 ** 999 is beyond a float.
    policy = RetryPolicy(base=1.0, factor=factor, cap=300.0)
    rand = random.Random(5)
    assert all(0 <= policy.delay(a, rand) <= 300.0 for a in (100, 700, 1000, 5000))


# ---- the minimum interval: the daemon's setting counts ------------------------


def test_every_under_the_minimum_interval_is_refused():
    with pytest.raises(BadSchedule, match=r"0.001 seconds is shorter than the minimum, 1 second"):
        every(every="0.001 seconds")
    with pytest.raises(BadSchedule, match="fires 60 times a minute"):
        every(every="0 0 12 * * *")
    fast = Limits(max_payload=1000, max_name_length=20, min_interval=0.1)
    assert check_every({"name": "tick", "every": 0.5}, fast, "UTC")[1].spec == "0.5"


def _refusal(core, op: str, **fields) -> dict:
    from martinet import protocol
    from martinet.protocol import Cmd
    from martinet.server.outbox import Outbox

    out = Outbox()
    with core.store.atomic():
        core.server.on_client(
            b"client", protocol.encode(Cmd.REQUEST, {"op": op, "rid": "r", **fields}), out, core.now
        )
    ((_ident, reply),) = out.replies
    assert not reply["ok"]
    return reply["error"]


@pytest.mark.parametrize("min_interval", [None, 0.1])
def test_the_daemons_min_interval_decides_every_and_update(sqlite_url, min_interval, make_core):
    """A client that skips its own check (another version, a raw request) meets the daemon's."""

    core = make_core(sqlite_url, **({} if min_interval is None else {"min_interval": min_interval}))
    if min_interval is None:  # the default, 1 s
        error = _refusal(core, "every", name="tick", every=0.001)
        assert error["type"] == "BadSchedule" and "shorter than the minimum, 1 second" in error["message"]
        sid = core.request("every", name="tick", every=60)["id"]
        error = _refusal(core, "update", id=sid, every=0.5)
        assert "shorter than the minimum" in error["message"]
    else:
        sid = core.request("every", name="tick", every=0.5)["id"]
        core.request("update", id=sid, every=0.2)
    error = _refusal(core, "every", name="tick", every="* * * * * *")
    assert "fires 60 times a minute" in error["message"]
