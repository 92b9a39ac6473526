"""Queues and fleet-wide limits, as the daemon decides them for several workers: in process,
with the clock the test sets (tests/core.py). A task runs from its claim to its success;
"at once" counts the tasks claimed and not yet ended. (Once end to end with real
workers, timing spans written by the handlers; tests/e2e/test_queues.py keeps what needs
a restart.)"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tests.core import Core

NO_CHANGE = {"concurrency": None, "rate": None, "weight": None, "order": None}  # as the API sends


def set_queue(core: Core, name: str, **settings: object) -> None:
    core.request("set_queue", name=name, **{**NO_CHANGE, **settings})


def run_all(
    core: Core, ids: Iterable[int], step: float = 0.1, turns: int = 200, first: int | None = None
) -> list[tuple[float, int]]:
    """Turns of claims, every claimed task ending in the same turn, the clock `step` on each
    time: (when it started, task id) of each, in the order they started (the `first` ones)."""
    todo, started = set(ids), []
    for _ in range(turns):
        claimed = [row["id"] for rows in core.claim().values() for row in rows]
        started += [(core.now, task_id) for task_id in claimed]
        for task_id in claimed:
            core.succeed(task_id)
        todo -= set(claimed)
        if not todo or (first is not None and len(started) >= first):
            return started
        core.now += step
    raise AssertionError(f"{len(todo)} task(s) never ran")


def most_at_once(core: Core, ids: list[int], turns: int = 200) -> int:
    """Turns of claims, the oldest task claimed and not yet ended ending in each: the most
    claimed and not yet ended at any time."""
    todo, running, peak = set(ids), [], 0
    for _ in range(turns):
        running += [row["id"] for rows in core.claim().values() for row in rows]
        peak = max(peak, len(running))
        if running:
            finished = running.pop(0)
            core.succeed(finished)
            todo.discard(finished)
        if not todo:
            return peak
        core.now += 0.05
    raise AssertionError(f"{len(todo)} task(s) never ran")


def status(core: Core, task_id: int) -> str:
    return core.request("get", id=task_id)["item"]["status"]


def test_workers_serve_only_their_queues_and_paused_queues_wait(db_url, make_core):
    core = make_core(db_url)
    core.hello("w1", ["add"], queues=["images"])
    image = core.submit("add", queue="images")
    plain = core.submit("add")
    assert run_all(core, [image])[0][1] == image and status(core, image) == "succeeded"
    waiting = core.request("show", id=plain)["item"]["waiting"]
    assert waiting == "no connected worker that handles 'add' serves queue 'default'"
    core.request("pause_queue", name="images")
    held = core.submit("add", queue="images")
    assert core.request("show", id=held)["item"]["waiting"] == "queue 'images' is paused"
    assert core.claim() == {}
    listed = {q["name"]: q for q in core.request("queues")["items"]}
    assert listed["images"]["paused"] and listed["images"]["counts"]["queued"] == 1
    assert listed["default"]["served_by"] == 0 and listed["default"]["oldest_waiting_seconds"] >= 0
    core.request("resume_queue", name="images")
    run_all(core, [held])
    assert status(core, held) == "succeeded" and status(core, plain) == "queued"


def test_weights_share_a_worker_between_busy_queues(db_url, make_core):
    core = make_core(db_url)
    set_queue(core, "bulk", weight=1)
    set_queue(core, "urgent", weight=3)
    ids = {core.submit("clock", queue=q): q for _ in range(100) for q in ("bulk", "urgent")}
    core.hello("w1", ["clock"], capacity=1)
    first = [task_id for _at, task_id in run_all(core, ids, first=80)][:80]
    urgent = sum(1 for t in first if ids[t] == "urgent")
    ratio = urgent / (80 - urgent)
    assert 2.4 <= ratio <= 3.6, ratio  # 3:1 within 20 %


def test_a_queue_concurrency_cap_holds_across_workers(db_url, make_core):
    core = make_core(db_url)
    set_queue(core, "narrow", concurrency=2)
    ids = [core.submit("span", queue="narrow") for _ in range(16)]
    core.hello("w1", ["span"], capacity=4)
    core.hello("w2", ["span"], capacity=4)
    assert most_at_once(core, ids) <= 2
    set_queue(core, "narrow", concurrency="none")  # cleared
    assert {q["name"]: q for q in core.request("queues")["items"]}["narrow"]["concurrency"] is None


def test_a_rate_is_never_exceeded_across_workers(db_url, make_core):
    core = make_core(db_url)
    set_queue(core, "metered", rate="5/second")
    ids = [core.submit("span", queue="metered") for _ in range(12)]
    core.hello("w1", ["span"], capacity=4)
    core.hello("w2", ["span"], capacity=4)
    starts = sorted(at for at, _task_id in run_all(core, ids, step=0.05))
    for i, s in enumerate(starts):
        assert len([t for t in starts[i:] if t < s + 1.0]) <= 5  # any one-second window
    assert starts[-1] - starts[0] >= 1.0  # 12 starts at 5/s take over two seconds


def test_a_task_name_limit_set_by_an_admin_holds_fleet_wide(db_url, make_core):
    core = make_core(db_url)
    core.request("set_limit", name="capped", concurrency=1)
    core.hello("w1", ["capped"], capacity=4)
    core.hello("w2", ["capped"], capacity=4)
    ids = [core.submit("capped") for _ in range(8)]
    assert most_at_once(core, ids) == 1


def test_a_limit_set_while_tasks_run_counts_those_already_running(db_url, make_core):
    core = make_core(db_url)
    core.hello("w1", ["capped"], capacity=4)
    ids = [core.submit("capped") for _ in range(4)]
    assert len(core.claim()["w1"]) == 4
    core.request("set_limit", name="capped", concurrency=2)
    assert core.server.lanes.names["capped"].running == 4
    more = core.submit("capped")
    core.succeed(ids[0])
    core.succeed(ids[1])
    assert core.claim() == {}  # 2 still run: the limit is full
    core.succeed(ids[2])
    assert [row["id"] for row in core.claim()["w1"]] == [more]


def test_a_hello_declaring_limits_changes_nothing_and_is_named_once(db_url, make_core, caplog):
    """Limits come from the daemon's config and from admins, never from a worker: a hello
    that declares some (a decorator's, or a stranger's) is not applied nor stored."""
    core = make_core(db_url)
    core.request("set_limit", name="capped", concurrency=3)
    declared = {"capped": {"concurrency": 1}, "free": {"rate": [1, 1.0]}}
    with caplog.at_level(logging.WARNING, "martinet.daemon"):
        core.hello("w1", ["capped", "free"], capacity=4, limits=declared)
        core.hello("w2", ["capped", "free"], capacity=4, limits=declared)
    assert core.server.lanes.names["capped"].concurrency == 3
    assert "free" not in core.server.lanes.names
    assert {row["name"]: row["concurrency"] for row in core.store.lanes_state(core.now, 1.0)["names"]} == {
        "capped": 3
    }
    told = [r.getMessage() for r in caplog.records if "declares limits" in r.getMessage()]
    assert len(told) == 2  # once per name, not per worker
    assert "martinet limits set capped --concurrency 1" in told[0]
    assert core.request("limits")["items"] == [
        {"name": "capped", "concurrency": 3, "rate": None, "running": 0}
    ]


def test_random_order_does_not_keep_submission_order(db_url, make_core):
    core = make_core(db_url)
    set_queue(core, "shuffled", order="random")
    ids = [core.submit("clock", queue="shuffled") for _ in range(30)]
    core.hello("w1", ["clock"], capacity=1)
    assert [task_id for _at, task_id in run_all(core, ids)] != ids


def test_bad_queue_settings_are_refused(sqlite_url, make_core):
    core = make_core(sqlite_url)
    for settings, message in (
        ({"concurrency": -1}, "concurrency must be a whole number"),
        ({"concurrency": 0}, "concurrency must be a whole number of 1 or more ('none' clears it)"),
        ({"weight": 0}, "weight must be a whole number of 1 or more"),
        ({"rate": "fast"}, "could not read 'fast' as a rate"),
        ({"order": "lifo"}, "order must be 'fifo' or 'random'"),
        ({}, "nothing to set"),
    ):
        error = core.refusal("set_queue", name="q", **{**NO_CHANGE, **settings})
        assert error["type"] == "BadInput" and message in error["message"], settings
    error = core.refusal("execute", name="add", args={}, queue="has space")
    assert error["type"] == "BadInput" and "is not a queue name" in error["message"]
    assert core.request("list")["items"] == []


def test_idle_threads_fleet_wide_come_before_any_prefetch(sqlite_url, make_core):
    # Given two workers of 2 threads, each able to hold 8 more tasks (the default prefetch)
    core = make_core(sqlite_url)
    core.hello("a", ["sleepy"], capacity=10, threads=2)
    core.hello("b", ["sleepy"], capacity=10, threads=2)
    # When 4 long tasks arrive at once, then 8 more
    few = [core.submit("sleepy") for _ in range(4)]
    claimed = core.claim()
    for task_id in few:
        core.succeed(task_id)
    many = [core.submit("sleepy") for _ in range(8)]
    claimed_many = core.claim()

    # Then each worker got half: no worker's prefetch hoarded what another could start
    def by_worker(batch: dict[str, list[dict]], ids: list[int]) -> dict[str, int]:
        return {w: len([r for r in rows if r["id"] in ids]) for w, rows in batch.items()}

    assert by_worker(claimed, few) == {"a": 2, "b": 2}
    assert by_worker(claimed_many, many) == {"a": 4, "b": 4}
