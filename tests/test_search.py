"""Finding tasks: filters, payload fields, time ranges, sorts, keyset pages and counts,
on every backend (SQLite, PostgreSQL, MySQL); then the same through a real daemon,
the API and the CLI. Store tests pass time in as numbers: no sleeps."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import replace

import pytest

import martinet
from martinet.errors import BadInput
from martinet.models import Task
from martinet.query import Search, check_search, decode_cursor, encode_cursor, parse_where
from martinet.store import Store, open_database
from tests.harness import ROOT

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
HOUR = 3600.0


@pytest.fixture
def store(db_url):
    db = open_database(db_url)
    yield Store(db)
    db.close()


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
    items, _ = store.search_tasks(query, limit)
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
        items, after = store.search_tasks(replace(query, after=after), size)
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
    items, after = store.search_tasks(Search(), 4)
    assert len(items) == 4 and after is None
    items, after = store.search_tasks(Search(), 3)
    assert len(items) == 3 and after is not None


# ---- what the daemon checks (pure) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image_id=7", ("image_id", 7)),
        ("ratio=0.5", ("ratio", 0.5)),
        ("ok=true", ("ok", True)),
        ("gone=null", ("gone", None)),
        ('code="7"', ("code", "7")),
        ("user.email=ana@example.com", ("user.email", "ana@example.com")),
        ("note=a=b", ("note", "a=b")),
        ("tags=[1, 2]", ("tags", "[1, 2]")),  # not a scalar: plain text
        ("empty=", ("empty", "")),
    ],
)
def test_parse_where(text, expected):
    assert parse_where(text) == expected


def refused(match: str, **h) -> None:
    with pytest.raises(BadInput, match=match):
        check_search(h)


def test_bad_searches_are_refused_quoting_the_input():
    refused("unknown filter 'colour'; filters are status, name", filters={"colour": "red"})
    refused("unknown status 'lost'", filters={"status": ["dead", "lost"]})
    refused("unknown sort 'size'; choose created, due, finished", sort="size")
    refused("unknown time 'started'", filters={"time": "started"})
    refused("limit must be an integer from 1 to 10000, got 0", limit=0)
    refused(r"since \(2027-01-15T08:00:00\+00:00\) is not before until \(2027-01-15T08:00:00\+00:00\)",
            filters={"since": NOW, "until": NOW})  # fmt: skip
    refused("since must be a UTC timestamp", filters={"since": "yesterday"})
    refused("schedule must be a schedule id like s7, got 'weekly'", filters={"schedule": "weekly"})
    refused("where field 'user..email' is not a payload path", filters={"where": {"user..email": 1}})
    refused('where field "a\'b" is not a payload path', filters={"where": {"a'b": 1}})
    refused("where tags must equal a string, number, true, false or null, not \\[1\\]",
            filters={"where": {"tags": [1]}})  # fmt: skip
    refused("where n: inf is not a number", filters={"where": {"n": float("inf")}})
    refused("where must be a map", filters={"where": "image_id=7"})
    with pytest.raises(BadInput, match="--where 'image_id' must look like FIELD=VALUE"):
        parse_where("image_id")


def test_cursors_round_trip_and_refuse_any_change():
    cursor = encode_cursor("created", NOW + 0.123456789, 42)
    assert decode_cursor(cursor, "created") == (NOW + 0.123456789, 42)
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    for bad in (flipped, cursor[:-3], "hello", "", 42, cursor + "x" * 300):
        with pytest.raises(BadInput, match="was altered or is not a martinet cursor"):
            decode_cursor(bad, "created")
    with pytest.raises(BadInput, match="continues a listing sorted by created, not due"):
        decode_cursor(cursor, "due")


# ---- through a real daemon: the API and the CLI ------------------------------------------------


def test_api_search_count_and_pages_under_concurrent_inserts(any_cluster):
    any_cluster.start_daemon()
    m = any_cluster.client()
    ids = m.execute_many([({"name": "resize", "username": "ana"}, {"image_id": i % 3}) for i in range(12)])
    m.execute("email", {"image_id": 1})
    assert [t["id"] for t in m.list(name="resize", where={"image_id": 1})] == ids[1::3][::-1]
    assert m.count(name="resize") == {"queued": 12}
    assert m.count(where={"image_id": 1}, since="1 hour ago") == {"queued": 5}
    assert m.list(since="in 1 hour") == []

    # Pages of 5 while another client keeps adding tasks: each old task once, in order
    seen, page = [], m.search(name="resize", limit=5)
    while True:
        seen.extend(t["id"] for t in page.items)
        m.execute("resize", {"image_id": 0})
        if page.next is None:
            break
        page = m.search(name="resize", limit=5, after=page.next)
    assert seen == ids[::-1]

    for bad, match in [
        ({"colour": "red"}, "unknown filter 'colour'"),
        ({"status": "lost"}, "unknown status 'lost'"),
        ({"since": "in twenty flurbs"}, "could not read 'in twenty flurbs' as a time"),
        ({"after": "bm90IGEgY3Vyc29y"}, "was altered or is not a martinet cursor"),
        ({"sort": "size"}, "unknown sort 'size'"),
    ]:
        with pytest.raises(BadInput, match=match):
            m.search(**bad)


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    return subprocess.run(
        [sys.executable, "-m", "martinet", "list", *args, "--url", url, "--timeout", "5"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


def test_cli_list_filters_pages_and_counts(cluster):
    cluster.start_daemon()
    m = cluster.client()
    a = m.execute(
        {"name": "resize.small", "description": "Avatar"}, {"image_id": 7, "user": {"email": "a@x.io"}}
    )
    b = m.execute("resize.large", {"image_id": "7"})
    c = m.execute("resize.large", {"image_id": 7})

    out = cli(cluster.url, "--name", "resize.*", "--where", "image_id=7", "--json")
    assert [t["id"] for t in json.loads(out.stdout)["items"]] == [c, a]
    out = cli(cluster.url, "--where", 'image_id="7"', "--where", "user.email=a@x.io", "--json")
    assert json.loads(out.stdout) == {"items": [], "next": None}
    first = json.loads(cli(cluster.url, "--limit", "2", "--json").stdout)
    assert [t["id"] for t in first["items"]] == [c, b] and first["next"]
    rest = json.loads(cli(cluster.url, "--limit", "2", "--after", first["next"], "--json").stdout)
    assert [t["id"] for t in rest["items"]] == [a] and rest["next"] is None
    out = cli(cluster.url, "--text", "avatar", "--since", "1 hour ago", "--status", "queued,running")
    assert out.returncode == 0 and f"{a:>8}  queued" in out.stdout and "resize.large" not in out.stdout
    out = cli(cluster.url, "--limit", "1")
    assert "more: martinet list ... --after " in out.stdout
    out = cli(cluster.url, "--count", "--name", "resize.large")
    assert out.stdout.split() == ["queued", "2", "total", "2"]
    assert json.loads(cli(cluster.url, "--count", "--json").stdout) == {"counts": {"queued": 3}, "total": 3}

    for args, message in [
        (["--where", "image_id"], "--where 'image_id' must look like FIELD=VALUE, e.g. image_id=7"),
        (["--where", "a b=1"], "where field 'a b' is not a payload path"),
        (["--since", "in twenty flurbs"], "could not read 'in twenty flurbs' as a time"),
        (["--after", first["next"][:-2]], "was altered or is not a martinet cursor"),
        (["--after", first["next"], "--sort", "due"], "continues a listing sorted by created, not due"),
        (["--status", "lost"], "unknown status 'lost'"),
        (["--schedule", "weekly"], "schedule must be a schedule id like s7, got 'weekly'"),
    ]:
        out = cli(cluster.url, *args)
        assert out.returncode == 1, args
        assert out.stderr.startswith("martinet: error: ") and message in out.stderr, out.stderr
    out = cli(cluster.url, "--sort", "size")
    assert out.returncode == 2 and "invalid choice: 'size'" in out.stderr
    assert m.count() == {"queued": 3}  # nothing changed


def test_the_readme_search_examples_run(cluster):
    """Each `martinet list` line and the Python example of "Finding tasks" run as written."""
    section = (ROOT / "README.md").read_text().split("## Finding tasks", 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cluster.start_daemon()
    m = cluster.client()
    m.execute({"name": "resize", "username": "ana", "queue": "images", "description": "Resize avatar"},
              {"image_id": 7, "user": {"email": "ana@example.com"}})  # fmt: skip
    lines = [shlex.split(line.split("#")[0]) for line in shell.strip().splitlines()]
    assert len(lines) >= 5 and all(line[:2] == ["martinet", "list"] for line in lines)
    for line in lines:
        out = cli(cluster.url, *line[2:])
        assert out.returncode == 0, (line, out.stderr)
    assert "resize" in cli(cluster.url, *lines[1][2:]).stdout  # the --where example finds it
    martinet.configure(url=cluster.url, timeout=5)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(python, {})
        assert printed.getvalue().split() == ["1", "queued", "None"]
    finally:
        martinet.configure(url=cluster.url)  # closes the shared handle
