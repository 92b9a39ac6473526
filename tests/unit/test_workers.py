"""Which worker the daemon sends what: by the names it handles, and never beyond its slots
when a hello is repeated on one connection. In process, with the clock the test sets
(tests/core.py); restarts, kills and refusals by real workers are tests/e2e/test_reliability.py."""

from __future__ import annotations

from martinet import protocol


def test_tasks_go_only_to_workers_that_handle_their_name(sqlite_url, make_core):
    core = make_core(sqlite_url)
    core.hello("wa", ["alpha"])
    core.hello("wb", ["beta"])
    ids = {core.submit(name): name for name in ["alpha", "beta"] * 4}
    went = {}
    for _ in range(5):
        for worker, rows in core.claim().items():
            for row in rows:
                went[row["id"]] = worker
                core.succeed(row["id"])
        core.now += 0.1
    assert went == {tid: {"alpha": "wa", "beta": "wb"}[name] for tid, name in ids.items()}
    assert {core.request("get", id=tid)["item"]["status"] for tid in ids} == {"succeeded"}
    waiting = core.submit("gamma")
    assert core.request("show", id=waiting)["item"]["waiting"] == "no connected worker handles 'gamma'"
    assert core.claim() == {}
    assert core.request("get", id=waiting)["item"]["status"] == "queued"


def test_a_hello_repeated_on_one_connection_keeps_the_tasks_on_their_way(sqlite_url, make_core):
    # Given a worker of one slot that got a task, and two more tasks waiting
    core = make_core(sqlite_url)
    first, *_ = [core.submit("add") for _ in range(3)]
    hello = {"capacity": 1, "version": protocol.VERSION}
    core.hello("slow", ["add"], **hello)
    assert [row["id"] for row in core.claim()["slow"]] == [first]
    # When it says hello again on the same connection, before it read that task
    core.hello("slow", ["add"], **hello, running=[])
    # Then its one slot is still taken: no second task comes
    assert core.claim() == {}
    assert core.request("get", id=first)["item"]["status"] == "leased"
