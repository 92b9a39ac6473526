"""A worker's prefetch filled by the pace of its handlers (server/peers.py, Peer.depth), and
a worker's refusals: what the daemon decides, in process (tests/core.py)."""

from __future__ import annotations

from martinet.protocol import Cmd
from martinet.server.peers import PREFETCH_SECONDS


def ended(worker: str, rows: list[dict], pace: float | None = None) -> tuple[Cmd, dict]:
    """The ENDED of a worker that ran `rows`, with its handlers' pace."""
    header: dict = {
        "worker_id": worker,
        "started": [[r["id"], r["attempt"]] for r in rows],
        "ended": [{"id": r["id"], "attempt": r["attempt"], "ok": True} for r in rows],
    }
    return Cmd.ENDED, header if pace is None else {**header, "pace": pace}


def leased(sent: list) -> dict[str, list[dict]]:
    """The tasks a turn sent, by worker (its ident)."""
    out: dict[str, list[dict]] = {}
    for _sock, ident, cmd, header in sent:
        if cmd is Cmd.TASK:
            out.setdefault(ident.decode(), []).extend(header["tasks"])
    return out


def test_tiny_tasks_fill_a_paced_prefetch_deeper_than_its_capacity_and_long_ones_do_not(
    sqlite_url, make_core
):
    # Given a worker of one thread whose hello lets its prefetch of 32 go 256 deep, and one
    # that does not (a --prefetch of its own), and many tasks queued
    core = make_core(sqlite_url)
    core.hello("paced", ["t"], capacity=33, threads=1, prefetch_max=256)
    core.hello("fixed", ["t"], capacity=33, threads=1)
    for _ in range(4):
        core.request("execute_many", tasks=[{"name": "t", "args": {}}] * 200)
    first = core.claim()
    assert {w: len(rows) for w, rows in first.items()} == {"paced": 33, "fixed": 33}
    # When both end what they hold, their handlers taking a hundredth of PREFETCH_SECONDS a task
    fast = PREFETCH_SECONDS / 100
    second = leased(core.turn(status=[ended(w, rows, fast) for w, rows in first.items()]))
    # Then the one that lets it holds a hundred tasks' worth; the other, its capacity
    assert {w: len(rows) for w, rows in second.items()} == {"paced": 101, "fixed": 33}
    # And once its tasks take long, it is filled no deeper than its capacity
    third = core.turn(status=[ended("paced", second["paced"], 2.0), ended("fixed", second["fixed"], 2.0)])
    assert {w: len(rows) for w, rows in leased(third).items()} == {"paced": 33, "fixed": 33}
    listed = {w["id"]: w for w in core.request("workers")["items"]}
    assert (listed["paced"]["capacity"], listed["paced"]["depth"]) == (33, 33)


def test_a_paced_worker_that_comes_back_keeps_what_its_deepest_prefetch_held(sqlite_url, make_core):
    # Given a paced worker that was filled 101 deep
    core = make_core(sqlite_url)
    core.hello("w1", ["t"], capacity=33, threads=1, prefetch_max=256)
    core.request("execute_many", tasks=[{"name": "t", "args": {}}] * 300)
    first = core.claim()["w1"]
    held = leased(core.turn(status=[ended("w1", first, PREFETCH_SECONDS / 100)]))["w1"]
    assert len(held) == 101
    # When it says hello again on a new connection, holding all of them
    core.reconnect(
        "w1", ["t"], capacity=33, threads=1, prefetch_max=256,
        running=[{"id": r["id"], "attempt": r["attempt"], "started": False} for r in held],
    )  # fmt: skip
    # Then every one is its own still (its capacity of 33 alone would have taken back 33)
    assert {core.store.get_task(r["id"]).worker for r in held} == {"w1"}
    assert {core.store.get_task(r["id"]).status for r in held} == {"leased"}


def reject(task: dict, reason: str, **fields) -> tuple[bytes, Cmd, dict]:
    return (
        b"w1",
        Cmd.REJECT,
        {"id": task["id"], "attempt": task["attempt"], "name": "t", "reason": reason, **fields},
    )


def test_a_worker_that_refuses_a_task_for_want_of_a_slot_keeps_its_name(sqlite_url, make_core):
    """A refusal that is not for a missing handler takes nothing away: a worker that lost
    the task's name would be sent none of them again, and with no other worker for it,
    they would stay queued for good."""
    core = make_core(sqlite_url)
    core.hello("w1", ["t"], capacity=1, threads=1)
    task_id = core.submit("t")
    (task,) = core.claim()["w1"]
    sent = core.turn(worker=[reject(task, "worker w1 has no free slot", passing=True)])
    (again,) = leased(sent)["w1"]  # sent to it again, in the same turn
    assert (again["id"], again["attempt"]) == (task_id, 1)  # no attempt spent by the refusal
    assert core.store.get_task(task_id).worker == "w1"


def test_a_worker_without_the_handler_is_sent_no_more_of_that_name(sqlite_url, make_core):
    core = make_core(sqlite_url)
    core.hello("w1", ["t"], capacity=2, threads=1)
    core.submit("t")
    (task,) = core.claim()["w1"]
    assert leased(core.turn(worker=[reject(task, "worker w1 has no handler for 't'")])) == {}
    core.submit("t")
    assert core.claim() == {}
    # Nor, once it is stopping, more of the names it is sent
    core.hello("w1", ["t"], capacity=2, threads=1)
    (task, _other) = core.claim()["w1"]
    assert leased(core.turn(worker=[reject(task, "worker w1 is shutting down")])) == {}
    assert core.claim() == {}
