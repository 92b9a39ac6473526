"""A worker that never answers cannot hold tasks for ever: the daemon enforces each task's
time limit itself (plus time_limit_grace), and a hello readopts no more than the worker's
capacity. In process, with the clock the test sets (tests/core.py); the worker is its
hello and its heartbeats. (tests/e2e/test_time_limits.py: a real worker's prefetch.)"""

from __future__ import annotations

from martinet import protocol
from tests.core import Core


def get(core: Core, task_id: int) -> dict:
    return core.request("get", id=task_id)["item"]


def test_a_task_held_by_a_worker_that_never_answers_times_out_and_runs_elsewhere(db_url, make_core):
    # Given a worker that takes a task with a time limit of 0.5 s, heartbeats, and never answers
    core = make_core(db_url, heartbeat_interval=0.2, time_limit_grace=0.5)
    core.hello("silent", ["add"], capacity=1, threads=1, version=protocol.VERSION, running=[])
    tid = core.submit("add", timeout=0.5, retry_base=0.01)
    sent = core.now
    assert [row["id"] for row in core.claim()["silent"]] == [tid]
    # Then, however many heartbeats come, the daemon ends the attempt as timed out within
    # its time limit, the grace and a tick (0.5 + 0.5 + 0.2 s), and tells the worker to stop it
    while core.now < sent + 0.99:
        core.now += 0.1
        core.claim()  # a turn: the timers, every worker heard from
        assert get(core, tid)["status"] == "leased" and not core.cancels
    core.now = sent + 1.2
    core.claim()
    assert [task_id for _ident, task_id in core.cancels] == [tid]  # a CANCEL, sent after the commit
    first = core.request("show", id=tid)["item"]["attempts"][0]
    assert (first["attempt"], first["outcome"], first["worker"]) == (1, "failed", "silent")
    assert first["error"]["type"] == "TaskTimeout"
    assert "time limit of 0.5s" in first["error"]["message"]
    # When a healthy worker comes, the task runs there and succeeds
    core.hello("healthy", ["add"], capacity=4)
    core.now += 1.0  # its retry is due
    assert [row["id"] for row in core.claim()["healthy"]] == [tid]
    core.succeed(tid, attempt=2)
    attempts = core.request("show", id=tid)["item"]["attempts"]
    assert attempts[-1]["outcome"] == "succeeded" and attempts[-1]["worker"] != "silent"
    assert core.request("ping")["workers"] == 2  # the silent worker was never declared lost


def test_a_hello_claiming_more_than_its_capacity_readopts_no_more_than_that(sqlite_url, make_core):
    # Given a worker that took five tasks
    core = make_core(sqlite_url, retry_base=600)  # lost ones wait: nobody takes them
    ids = [core.submit("add") for _ in range(5)]
    hello = {"capacity": 5, "threads": 5, "version": protocol.VERSION, "running": []}
    core.hello("liar", ["add"], **hello)
    assert sorted(row["id"] for row in core.claim()["liar"]) == ids
    # When it comes back on a new connection with room for two (one thread, one prefetched),
    # saying it runs those five and a thousand more
    running = [{"id": i, "attempt": 1} for i in ids] + [{"id": 10_000 + i, "attempt": 1} for i in range(1000)]
    core.reconnect("liar", ["add"], **{**hello, "capacity": 2, "threads": 1, "running": running})
    # Then it holds two of them; the other three end as lost, to run elsewhere
    items = [get(core, t) for t in ids]
    assert [(i["status"], i["worker"]) for i in items[:2]] == [("leased", "liar")] * 2  # never started
    assert [i["status"] for i in items[2:]] == ["failed"] * 3
    lost = core.request("show", id=ids[2])["item"]["attempts"][0]
    assert lost["outcome"] == "lost" and "beyond its capacity of 2" in lost["error"]["message"]
