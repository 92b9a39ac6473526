"""Reads of tasks: one by id or key, its attempts, and search (filters, keyset pages,
counts by status), with a payload field's equality written in each backend's JSON
dialect. The filters themselves are checked by martinet/query.py, on the client's
side of the wire too (it imports no peewee: that is why it stays apart)."""

from __future__ import annotations

import json
import re
from typing import Any

from martinet.models import Attempt, Task
from martinet.query import Search
from martinet.store.rows import TaskRow
from martinet.store.sql import SqlKit, where

TIME_COLUMNS = {"created": "created_at", "due": "run_at", "finished": "finished_at"}  # search times
INFO_COLUMNS = TaskRow._fields  # what get_task reads (present.task_info shows)


class Reads(SqlKit):
    def find_key(self, key: str) -> tuple[str, int] | None:
        """The task holding `key` (else the newest with it), or the schedule with it."""
        Task, Schedule = self.Task, self.Schedule
        task = Task.select(Task.id).where(Task.unique_key == key).first()
        task = task or Task.select(Task.id).where(Task.key == key).order_by(Task.id.desc()).first()
        if task is not None:
            return "task", task.id
        sched = Schedule.select(Schedule.id).where(Schedule.key == key).first()
        return None if sched is None else ("schedule", sched.id)

    def get_task(self, task_id: int) -> TaskRow | None:
        """One task's record. Hand-written: `wait` answers read it as tasks end, in the loop."""
        columns = ", ".join(map(self._name, INFO_COLUMNS))
        found = self._exec(f"SELECT {columns} FROM task WHERE id = ?", (task_id,)).fetchone()
        return None if found is None else TaskRow(*found)

    def attempts(self, task_id: int) -> list[Attempt]:
        """The task's finished attempts, oldest first (present.attempt_info shows one)."""
        Attempt = self.Attempt
        return list(Attempt.select().where(Attempt.task_id == task_id).order_by(Attempt.attempt))

    def search_tasks(self, q: Search, limit: int) -> tuple[list[Task], tuple[float, int] | None]:
        """One page of the tasks that match `q`, newest first by its sort column, then id.

        Returns the page and the (sort value, id) of its last row when more rows
        follow (None on the last page). Keyset paging: the next page starts
        strictly after that row, so tasks created meanwhile never shift it.
        Sorting by the finished time lists finished tasks only.
        """
        Task = self.Task
        column = TIME_COLUMNS[q.sort]
        conditions, params = self._search_conditions(q)
        if q.sort == "finished":
            conditions.append("finished_at IS NOT NULL")
        if q.after is not None:
            value, last_id = q.after
            conditions.append(f"{column} <= ? AND ({column} < ? OR id < ?)")
            params += [value, value, last_id]
        table = "task"
        if q.where and self.is_mysql:
            # MySQL would walk the sort's index and fetch every row to read its args (5 s for a
            # million on MariaDB); reading the table in order and sorting the few matches is faster.
            table += " IGNORE INDEX FOR ORDER BY (task_created, task_finished)"
        sql = f"SELECT * FROM {table}{where(conditions)} ORDER BY {column} DESC, id DESC LIMIT ?"
        rows = list(Task.raw(self._adapt(sql), *params, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        last = (getattr(rows[-1], column), rows[-1].id) if more else None
        return rows, last

    def count_tasks(self, q: Search) -> dict[str, int]:
        """How many tasks match `q` (its sort and cursor aside), by status."""
        conditions, params = self._search_conditions(q)
        sql = f"SELECT status, COUNT(*) FROM task{where(conditions)} GROUP BY status"
        return {status: n for status, n in self.db.execute_sql(self._adapt(sql), params).fetchall()}

    def _search_conditions(self, q: Search) -> tuple[list[str], list[Any]]:
        conditions: list[str] = []
        params: list[Any] = []

        def add(condition: str, *values: Any) -> None:
            conditions.append(condition)
            params.extend(values)

        if q.statuses:
            add(f"status IN ({', '.join('?' * len(q.statuses))})", *q.statuses)
        for column, value in (
            ("name", q.name),
            ("queue", q.queue),
            ("username", q.username),
            (self._name("key"), q.key),
            ("schedule_id", q.schedule_id),
            ("error_type", q.error),
        ):
            if value is not None:
                add(f"{column} = ?", value)
        if q.name_prefix is not None:
            if not (self.is_postgres or self.is_mysql):  # SQLite: GLOB: case-sensitive, as names are
                add("name GLOB ?", re.sub(r"([*?\[])", r"[\1]", q.name_prefix) + "*")
            else:
                add("name LIKE ? ESCAPE '!'", _like_escape(q.name_prefix) + "%")
        if q.text is not None:
            like = "ILIKE" if self.is_postgres else "LIKE"  # ignoring case on every backend
            add(f"description {like} ? ESCAPE '!'", f"%{_like_escape(q.text)}%")
        column = TIME_COLUMNS[q.time]
        if q.since is not None:
            add(f"{column} >= ?", q.since)
        if q.until is not None:
            add(f"{column} < ?", q.until)
        for path, wanted in q.where:
            condition, values = self._arg_equals(path, wanted)
            add(condition, *values)
        return conditions, params

    def _arg_equals(self, path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
        """A payload field equals a JSON scalar, types compared too (7 is not "7", 1 is not true).

        The path is written as a literal (query.py lets keys hold only letters,
        digits, _ and -), so an expression index on the same path can serve it.
        """
        if self.is_postgres:
            return _arg_equals_postgres(path, value)
        if self.is_mysql:
            return _arg_equals_mysql(path, value)
        return _arg_equals_sqlite(path, value)


def _like_escape(text: str) -> str:
    """Text matched literally by LIKE ... ESCAPE '!'."""
    return text.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _json_path(path: tuple[str, ...]) -> str:
    """A literal JSON path, as SQLite and MySQL write it: '$.user.email'."""
    return "'$" + "".join(f".{key}" if key.isidentifier() else f'."{key}"' for key in path) + "'"


def _arg_equals_sqlite(path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
    """On SQLite, `instr` first: the daemon writes args with json.dumps, so a row that
    matches holds the value's own JSON text, and looking for that text is many times
    cheaper than parsing the row's JSON (which only the rows that hold it then pay)."""
    field, kind = f"json_extract(args, {_json_path(path)})", f"json_type(args, {_json_path(path)})"
    if value is None or isinstance(value, bool):
        return f"instr(args, ?) > 0 AND {kind} = ?", [json.dumps(value)] * 2  # 'null', 'true', 'false'
    if isinstance(value, str):
        return f"instr(args, ?) > 0 AND {field} = ? AND {kind} = 'text'", [json.dumps(value), value]
    condition = f"{field} = ? AND {kind} IN ('integer', 'real')"
    if abs(value) >= 1e15:  # json.dumps may write these with an exponent (1e+16): no text to look for
        return condition, [value]
    # 7 matches 7 and 7.0: both hold "7"; 7.5 is written 7.5.
    text = str(int(value)) if float(value).is_integer() else repr(float(value))
    return f"instr(args, ?) > 0 AND {condition}", [text, value]


def _arg_equals_postgres(path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
    field = "CAST(args AS jsonb)" + "".join(f" -> '{key}'" for key in path)
    return f"({field}) = CAST(? AS jsonb)", [json.dumps(value)]  # jsonb equality compares types


def _arg_equals_mysql(path: tuple[str, ...], value: Any) -> tuple[str, list[Any]]:
    field = f"JSON_EXTRACT(args, {_json_path(path)})"
    kind = f"JSON_TYPE({field})"
    if value is None:
        return f"{kind} = 'NULL'", []
    if isinstance(value, bool):
        return f"{kind} = 'BOOLEAN' AND JSON_UNQUOTE({field}) = ?", [json.dumps(value)]
    if isinstance(value, str):  # compared as bytes, not by the collation: "Ana" is not "ana"
        return f"CAST(JSON_UNQUOTE({field}) AS BINARY) = CAST(? AS BINARY) AND {kind} = 'STRING'", [value]
    return f"{field} = ? AND {kind} IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')", [value]
