"""Arrays sent to PostgreSQL as one literal (store/pg.py, Array): every value the store
writes through `unnest` arrives as it was sent, whatever its quotes, backslashes,
braces, commas or spelling of NULL, and a value the literal does not write falls back
to psycopg2's own adaptation."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from martinet.messages.outcome import OutcomeKind
from martinet.states import TaskState
from martinet.store import open_database
from martinet.store.pg import Array, PgDatabase

AWKWARD = [
    "",
    "NULL",
    "null",
    "a,b",
    "{x}",
    "}",
    'quote"d',
    "back\\slash",
    '\\"',
    "it's",
    "''",
    " spaced ",
    "ünïcödé ☃",
    "line\nbreak\ttab",
    '{"event": "failed", "error": "can\'t parse \\"x\\" at \\\\n"}',
    "%s %% %(name)s",
    None,
]


@pytest.fixture
def pg(pg_url):
    db = open_database(pg_url)
    assert isinstance(db, PgDatabase)
    yield db
    db.close()


def one(db, sql: str, *params):
    return db.execute_sql(sql, params).fetchone()[0]


def test_strings_and_nulls_arrive_as_sent(pg):
    assert one(pg, "SELECT %s::text[]", pg.array(AWKWARD)) == AWKWARD
    assert one(pg, "SELECT %s::varchar[] = %s::varchar[]", pg.array(AWKWARD), AWKWARD) is True
    rows = pg.execute_sql("SELECT * FROM unnest(%s::text[]) WITH ORDINALITY", (pg.array(AWKWARD),)).fetchall()
    assert [value for value, _n in rows] == AWKWARD


def test_numbers_and_bools_arrive_as_sent(pg):
    floats = [0.1, -0.0, 1e300, 5e-324, 1796612003.7395053, 2.0, math.inf, -math.inf, None]
    assert one(pg, "SELECT %s::float8[]", pg.array(floats)) == floats
    assert math.isnan(one(pg, "SELECT (%s::float8[])[1]", pg.array([math.nan])))
    ints = [0, -1, 2**62, -(2**62), None]
    assert one(pg, "SELECT %s::bigint[]", pg.array(ints)) == ints
    assert one(pg, "SELECT %s::boolean[]", pg.array([True, False, None])) == [True, False, None]
    assert one(pg, "SELECT %s::bigint[]", pg.array([])) == []


def test_a_column_of_one_type_arrives_as_sent(pg):
    """The daemon's arrays are columns of one type, written without a step a value (a
    turn's times, mostly its own `now`, each distinct one written once)."""
    now = 1796612003.7395053
    times = [now, now, now + 1e-6, now, 2.0, 1e300, 5e-324, now]
    assert one(pg, "SELECT %s::float8[]", pg.array(times)) == times
    distinct = [0.1, 1.5, now]
    assert one(pg, "SELECT %s::float8[]", pg.array(distinct)) == distinct
    zeros = one(pg, "SELECT %s::float8[]", pg.array([0.0, -0.0, 0.0]))
    assert [math.copysign(1, z) for z in zeros] == [1, -1, 1]  # equal, yet each its own
    assert one(pg, "SELECT %s::float8[]", pg.array([math.inf, 1.0, -math.inf])) == [math.inf, 1.0, -math.inf]
    strings = [text for text in AWKWARD if text is not None]
    assert one(pg, "SELECT %s::text[]", pg.array(strings)) == strings
    assert one(pg, "SELECT %s::varchar[]", pg.array([TaskState.FAILED] * 3)) == ["failed"] * 3
    assert one(pg, "SELECT %s::bigint[]", pg.array([7, 2**62, -1])) == [7, 2**62, -1]
    assert one(pg, "SELECT %s::boolean[]", pg.array([True, False])) == [True, False]
    assert one(pg, "SELECT %s::bigint[]", pg.array([None, None])) == [None, None]


def test_a_nul_in_a_string_is_refused_as_psycopg2_refuses_it(pg):
    for values in (["a", "b\x00c"], ["a\x00", None]):  # a column of one type, and not
        with pytest.raises(ValueError, match="NUL"):
            pg.cursor().mogrify("%s::text[]", (pg.array(values),))


def test_a_str_enum_goes_as_its_value_in_the_literal(pg):
    statuses = [TaskState.SUCCEEDED, OutcomeKind.RELEASED, "plain", None]
    assert one(pg, "SELECT %s::varchar[]", pg.array(statuses)) == ["succeeded", "released", "plain", None]
    sent = pg.cursor().mogrify("%s::varchar[]", (pg.array([TaskState.FAILED]),)).decode()
    assert sent == "'{\"failed\"}'::varchar[]"  # one quoted literal, not psycopg2's ARRAY[...]


def test_a_value_the_literal_does_not_write_goes_as_psycopg2_adapts_a_list(pg):
    values = [Decimal("1.5"), None]
    assert one(pg, "SELECT %s::numeric[]", Array(values)) == values
    cursor = pg.cursor()
    assert cursor.mogrify("%s", (Array(values),)) == cursor.mogrify("%s", (values,))


def test_a_literal_is_one_quoted_string_not_a_value_by_value_array(pg):
    sent = pg.cursor().mogrify("%s::text[]", (pg.array(["a", 'b"', None]),)).decode()
    assert sent == '\'{"a","b\\"",NULL}\'::text[]'


def test_with_another_driver_the_list_goes_as_it_is(pg_url):
    pytest.importorskip("psycopg")
    db = PgDatabase("test", prefer_psycopg3=True)
    assert db.array([1, 2]) == [1, 2]
