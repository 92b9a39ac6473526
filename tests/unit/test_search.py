"""Finding tasks: filters, payload fields, time ranges, sorts, keyset pages and counts,
the rules of a search and its cursors, pure. The store's side is tests/store/test_search.py;
the API against an embedded daemon, at the end; the CLI's list, tests/unit/test_cli_commands.py;
the examples of docs/finding-tasks.md, tests/e2e/test_search.py."""

from __future__ import annotations

import pytest

from martinet.errors import BadInput
from martinet.query import check_search, decode_cursor, encode_cursor, parse_where

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC


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


# ---- through the API: an embedded daemon and worker threads (tests/live.py) ---------------


def test_api_search_count_and_pages_under_concurrent_inserts(make_live, db_url):
    live = make_live(db_url)
    m = live.m
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
