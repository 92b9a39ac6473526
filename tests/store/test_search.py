"""Finding tasks in the store: filters, payload fields, time ranges, sorts, keyset pages and
counts, on every backend. Time is passed in as numbers: no sleeps."""

from __future__ import annotations

from dataclasses import replace

import pytest

from martinet.models import Task
from martinet.present import task_page
from martinet.protocol import MAX_VALUE_DEPTH
from martinet.query import Search, check_search
from martinet.store import Store
from martinet.validate import Limits, check_args

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
HOUR = 3600.0


def make(store: Store, name: str, created: float, args: dict | None = None, **fields) -> int:
    """A task created at `created`, then given `fields` (status, times, error) as if it had run."""
    spec = {"name": name, "args": args or {}, "max_attempts": 3}
    for key in ("username", "description", "queue", "key", "run_at"):
        if key in fields:
            spec[key] = fields.pop(key)
    task_id, created_now = store.submit(spec, created)
    assert created_now
    if fields:
        Task.update(**fields).where(Task.id == task_id).execute()
    return task_id


def find(store: Store, limit: int = 50, **h) -> list[int]:
    query, _ = check_search({"filters": h.pop("filters", {}), "limit": limit, **h})
    items, _ = task_page(store.search_tasks(query, limit))
    return [t["id"] for t in items]


@pytest.fixture
def tasks(store) -> dict[str, int]:
    """A small history: resizes that succeeded, failed and died, an email waiting, odd names."""
    return {
        "small": make(store, "resize.small", NOW - 5 * HOUR, {"image_id": 7, "user": {"email": "ana@example.com"}},
                      username="ana", queue="images", description="Resize the avatar", status="succeeded",
                      finished_at=NOW - 4.5 * HOUR),
        "large": make(store, "resize.large", NOW - 3 * HOUR, {"image_id": "7"}, username="bob", queue="images",
                      description="Resize a BANNER", status="failed", error_type="TimeoutError",
                      run_at=NOW + 60),
        "plain": make(store, "resize", NOW - 2 * HOUR, {"image_id": 8, "flag": True}, username="ana",
                      status="dead", error_type="ValueError", finished_at=NOW - HOUR),
        "email": make(store, "email", NOW - 0.5 * HOUR, {"image_id": None, "flag": False}, key="mail-1",
                      description="100% off_sale", run_at=NOW + 600),
        "under": make(store, "re_ize.a", NOW - 0.25 * HOUR),
        "x": make(store, "rexize.a", NOW - 0.2 * HOUR, status="cancelled", finished_at=NOW - 0.1 * HOUR),
    }  # fmt: skip


# ---- filters on every backend ----------------------------------------------------------


def test_args_as_deep_as_allowed_are_found_by_their_fields(store):
    """MAX_VALUE_DEPTH is under MariaDB's limit on a JSON document: deeper, its JSON_EXTRACT
    takes the args for invalid, and a search passes the task by."""
    deep: object = 1
    for _ in range(MAX_VALUE_DEPTH - 1):
        deep = [deep]
    task_id = make(store, "deep", NOW, check_args({"image_id": 7, "deep": deep}, Limits()))
    assert find(store, filters={"where": {"image_id": 7}}) == [task_id]


def test_no_filter_lists_every_task_newest_first(store, tasks):
    t = tasks
    assert find(store) == [t["x"], t["under"], t["email"], t["plain"], t["large"], t["small"]]
    assert find(store, limit=2) == [t["x"], t["under"]]


def test_each_filter_alone(store, tasks):
    t = tasks
    cases = [
        ({"status": "dead"}, ["plain"]),
        ({"status": ["failed", "dead"]}, ["plain", "large"]),
        ({"name": "resize"}, ["plain"]),  # exact
        ({"name": "resize.*"}, ["large", "small"]),  # a prefix: "resize." and more
        ({"name": "resize*"}, ["plain", "large", "small"]),
        ({"name": "re_ize.*"}, ["under"]),  # _ is a character, not a wildcard
        ({"queue": "images"}, ["large", "small"]),
        ({"username": "ana"}, ["plain", "small"]),
        ({"key": "mail-1"}, ["email"]),
        ({"text": "resize"}, ["large", "small"]),  # in the description, any case
        ({"text": "banner"}, ["large"]),
        ({"text": "100% off_"}, ["email"]),  # % and _ are literal
        ({"text": "0%"}, ["email"]),
        ({"error": "TimeoutError"}, ["large"]),
        ({"where": {"image_id": 7}}, ["small"]),
        ({"where": {"user.email": "ana@example.com"}}, ["small"]),
        ({"where": {"user": {"email": "ana@example.com"}}}, ["small"]),
        ({"where": {"user.email": "nobody@example.com"}}, []),
    ]
    for filters, names in cases:
        assert find(store, filters=filters) == [t[n] for n in names], filters


def test_filters_combine_with_and(store, tasks):
    t = tasks
    assert find(store, filters={"name": "resize*", "status": ["failed", "dead"], "username": "ana"}) == [
        t["plain"]
    ]
    assert find(store, filters={"queue": "images", "where": {"image_id": 7}}) == [t["small"]]
    assert find(store, filters={"queue": "images", "where": {"image_id": 8}}) == []
    both = {"image_id": 8, "flag": True}
    assert find(store, filters={"where": both}) == [t["plain"]]
    assert find(store, filters={"where": {**both, "flag": False}}) == []


def test_schedule_filter_finds_a_schedules_runs(store):
    sched, _ = store.add_schedule({"name": "tick", "kind": "interval", "spec": "60"}, NOW, NOW - 100)
    make(store, "tick", NOW - 10)
    (run,) = store.expand_schedules(NOW, 3)
    assert find(store, filters={"schedule": f"s{sched}"}) == [run]
    assert find(store, filters={"schedule": sched + 1}) == []


# ---- payload fields: types compared too ----------------------------------------------------


def test_payload_values_compare_with_their_types(store):
    payloads = {
        "int": {"v": 7},
        "text": {"v": "7"},
        "float": {"v": 7.0},
        "half": {"v": 7.5},
        "true": {"v": True},
        "one": {"v": 1},
        "false": {"v": False},
        "zero": {"v": 0},
        "null": {"v": None},
        "missing": {},
        "list": {"v": [7]},
        "object": {"v": {"w": 7}},
        "quoted": {"v": 'say "hi" é'},
        "upper": {"v": "Ana"},
        "lower": {"v": "ana"},
        "dash": {"a-b": {"0": 1}},
    }
    ids = {label: make(store, "t", NOW + i, args) for i, (label, args) in enumerate(payloads.items())}

    def found(value, field="v"):
        return sorted(
            label for label, i in ids.items() if i in find(store, filters={"where": {field: value}})
        )

    assert found(7) == ["float", "int"]  # numbers equal as numbers
    assert found("7") == ["text"]  # a string is not a number
    assert found(7.5) == ["half"]
    assert found(True) == ["true"]  # true is not 1
    assert found(1) == ["one"]
    assert found(False) == ["false"]
    assert found(0) == ["zero"]
    assert found(None) == ["null"]  # a JSON null; a missing field is not null
    assert found('say "hi" é') == ["quoted"]
    assert found("ana") == ["lower"]  # exact, case included, on every backend
    assert found(7, "v.w") == ["object"]
    assert found(1, "a-b.0") == ["dash"]


# ---- time ranges and sorts -------------------------------------------------------------------


def test_since_and_until_apply_to_the_chosen_time(store, tasks):
    t = tasks
    created = {"since": NOW - 3 * HOUR, "until": NOW - 0.5 * HOUR}
    assert find(store, filters=created) == [t["plain"], t["large"]]  # until is exclusive
    assert find(store, filters={**created, "time": "created"}) == [t["plain"], t["large"]]
    assert find(store, filters={"since": NOW, "time": "due"}) == [t["email"], t["large"]]
    assert find(store, filters={"until": NOW - HOUR, "time": "finished"}) == [t["small"]]
    assert find(store, filters={"since": NOW - HOUR, "time": "finished"}) == [t["x"], t["plain"]]


def test_sort_by_due_or_finished_newest_first(store, tasks):
    t = tasks
    assert find(store, sort="due")[:2] == [t["email"], t["large"]]  # due furthest ahead first
    assert find(store, sort="finished") == [t["x"], t["plain"], t["small"]]  # finished ones only
    assert find(store, sort="finished", filters={"status": "dead"}) == [t["plain"]]


def test_counts_by_status_with_the_same_filters(store, tasks):
    assert store.count_tasks(Search()) == {
        "succeeded": 1, "failed": 1, "dead": 1, "scheduled": 1, "queued": 1, "cancelled": 1,
    }  # fmt: skip
    query, _ = check_search({"filters": {"name": "resize*", "username": "ana"}})
    assert store.count_tasks(query) == {"succeeded": 1, "dead": 1}
    query, _ = check_search({"filters": {"where": {"image_id": 9}}})
    assert store.count_tasks(query) == {}


# ---- keyset pages --------------------------------------------------------------------------


def all_pages(store: Store, query: Search, size: int, between=None) -> list[int]:
    """Every page in turn, calling `between(last_row)` before reading the next."""
    seen, after = [], None
    while True:
        items, after = task_page(store.search_tasks(replace(query, after=after), size))
        seen.extend(t["id"] for t in items)
        if after is None:
            return seen
        if between:
            between(after)


@pytest.mark.parametrize("sort", ["created", "due", "finished"])
def test_pages_neither_skip_nor_repeat_while_tasks_arrive(store, sort):
    # Given 23 tasks, many sharing a time (ties are broken by id) and times with fractions
    times = [NOW + 0.123456789 * (i // 4) for i in range(23)]
    ids = [
        make(store, "job", at, {"k": 1}, run_at=at + 10, status="succeeded", finished_at=at + 20)
        for at in times
    ]
    query = Search(
        sort=sort, statuses=("succeeded",), where=((("k",), 1),)
    )  # MySQL reads these unlike others
    expected = all_pages(store, query, 50)
    assert sorted(expected) == sorted(ids) and len(expected) == 23

    # When new tasks arrive between pages (newer ones, and one tied with the last row shown)
    def insert(last):
        value, _ = last
        shift = {"created": 0.0, "due": 10.0, "finished": 20.0}[sort]
        for at in (NOW + 1000, value - shift):
            make(store, "job", at, {"k": 1}, run_at=at + 10, status="succeeded", finished_at=at + 20)

    # Then paging in fives still yields exactly the first listing, in order
    assert all_pages(store, query, 5, between=insert) == expected


def test_the_last_page_has_no_cursor(store):
    for i in range(4):
        make(store, "job", NOW + i)
    items, after = task_page(store.search_tasks(Search(), 4))
    assert len(items) == 4 and after is None
    items, after = task_page(store.search_tasks(Search(), 3))
    assert len(items) == 3 and after is not None
