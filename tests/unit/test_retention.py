"""Retention: old finished tasks are deleted with their attempts, in bounded batches,
on every backend; never a task that is unfinished or that an unfinished task waits on.

Store tests pass time in as numbers; the daemon test (in process, tests/core.py) inserts
old tasks and ticks its clock once.
"""

from __future__ import annotations

import logging

import pytest

from martinet import config, when
from martinet.errors import BadInput, ConfigError
from martinet.models import Attempt, Task
from martinet.retention import Retention
from martinet.store import Pruned, Store

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
DAY = 86400.0
KEEP = {"succeeded": NOW - 7 * DAY, "cancelled": NOW - 7 * DAY, "dead": NOW - 30 * DAY}


# ---- the daemon's pace (a fake store and timer) --------------------------------------


class FakeStore:
    def __init__(self, batches: int) -> None:
        self.left = batches
        self.calls: list[tuple[dict, object]] = []

    def prune(self, cutoffs, limit, after):
        self.calls.append((cutoffs, after))
        self.left -= 1
        return Pruned(limit, 0, self.left > 0, (1.0, len(self.calls)))


def test_a_backlog_is_pruned_a_budget_per_tick_then_passes_wait_an_interval():
    clock = iter(range(1000))  # each reading of the timer: 1 s later
    retention = Retention(7 * DAY, None, budget=2.5, interval=60, timer=lambda: next(clock))
    store = FakeStore(batches=5)
    assert retention.step(store, NOW) == (1500, 0)  # three batches, then the budget is spent
    assert [after for _, after in store.calls] == [None, (1.0, 1), (1.0, 2)]
    assert store.calls[0][0] == {"succeeded": NOW - 7 * DAY, "cancelled": NOW - 7 * DAY}  # dead kept for good
    assert retention.step(store, NOW + 1) == (1000, 0)  # where it stopped, to the end
    assert store.calls[3][1] == (1.0, 3) and retention.after is None
    assert retention.step(store, NOW + 30) == (0, 0) and len(store.calls) == 5  # the next pass: at NOW + 61
    store.left = 1
    assert retention.step(store, NOW + 61) == (500, 0) and store.calls[5][1] is None


def test_retention_off_prunes_nothing():
    store = FakeStore(batches=1)
    assert Retention(None, None).step(store, NOW) == (0, 0) and store.calls == []


# ---- settings and ages --------------------------------------------------------------------


def test_ages_read_like_intervals_and_zero_is_allowed():
    assert when.parse_age("30 days") == 30 * DAY
    assert when.parse_age("1h30m") == 5400
    assert when.parse_age("0") == 0 and when.parse_age(0) == 0 and when.parse_age("90") == 90
    for bad, message in (
        ("-3 days", "an age must be 0 or more"),
        (-1, "an age must be 0 or more"),
        ("in twenty flurbs", "could not read 'in twenty flurbs' as an age"),
        ("3 months", "could not read '3 months' as an age"),
        (True, "cannot use True as an age"),
        (float("inf"), "an age of inf is out of range"),
    ):
        with pytest.raises(BadInput, match=message):
            when.parse_age(bad)


def test_retention_settings_from_file_and_environment(tmp_path):
    assert (config.Settings().keep_finished, config.Settings().keep_dead) == ("7 days", "30 days")
    conf = tmp_path / "m.toml"
    conf.write_text('[retention]\nkeep_finished = "2 days"\nkeep_dead = 3600\n')
    s = config.load(conf, environ={"MARTINET_KEEP_DEAD": "never"})
    assert (s.keep_finished, s.keep_dead) == ("2 days", "never")
    assert config.keep_seconds("keep_finished", s.keep_finished) == 2 * DAY
    assert config.keep_seconds("keep_dead", s.keep_dead) is None
    assert config.keep_seconds("keep_dead", "0") is None  # 0 keeps for good too
    assert config.keep_seconds("keep_dead", 3600) == 3600
    with pytest.raises(ConfigError, match="setting 'keep_finished': could not read 'a while' as an age"):
        config.load(environ={"MARTINET_KEEP_FINISHED": "a while"})


# ---- the daemon, in process on every backend -------------------------------------------


def _finished(store: Store, status: str, finished_at: float, attempts: int = 0) -> int:
    task_id, _ = store.submit({"name": "job", "args": {}, "max_attempts": 3}, finished_at - 10)
    Task.update(status=status, finished_at=finished_at).where(Task.id == task_id).execute()
    for n in range(1, attempts + 1):
        Attempt.create(task_id=task_id, attempt=n, worker="w", started_at=finished_at - 1, ended_at=finished_at,
                       outcome=status)  # fmt: skip
    return task_id


def test_the_daemon_prunes_old_finished_tasks_by_itself(db_url, make_core, caplog):
    # Given a daemon keeping finished tasks for an hour (and dead ones 30 days), with old
    # finished tasks and tasks that must stay in its database
    caplog.set_level(logging.INFO, logger="martinet")
    core = make_core(db_url, keep_finished="1 hour")
    store, now = core.store, core.now
    with store.atomic():
        old_ones = [_finished(store, "succeeded", now - 3 * 3600, attempts=2) for _ in range(3)]
        old_ones.append(_finished(store, "dead", now - 40 * DAY, attempts=1))
        recent = _finished(store, "succeeded", now - 60)
        dead = _finished(store, "dead", now - 10 * DAY)
        waiting, _ = store.submit({"name": "later", "args": {}, "max_attempts": 3, "run_at": now + DAY}, now)
    # When its timers tick
    core.tick()
    # Then the old ones are gone, with their attempts, and the rest stay
    remaining = {r[0] for r in store.db.execute_sql("SELECT id FROM task").fetchall()}
    assert not set(old_ones) & remaining
    assert remaining == {recent, dead, waiting}
    assert store.db.execute_sql("SELECT COUNT(*) FROM attempt").fetchone()[0] == 0
    assert "retention: deleted 4 finished tasks and 7 attempt rows" in caplog.text
