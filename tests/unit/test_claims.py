"""The daemon's claims under every kind of limit, with workers serving several task
names and queues: a turn's claims always end, take what may run, and leave the rest
for when a limit has room again. In process, on every backend (tests/core.py)."""

from __future__ import annotations

import pytest

from martinet import protocol
from martinet.present import maybe_task_info
from martinet.protocol import Cmd
from martinet.server import claims
from martinet.server.lanes import rate_window
from martinet.server.outbox import Outbox
from martinet.server.workers import lose_worker
from tests.core import Core

# A claim loop that spins calls the store's claim without end: this many in one turn is a bug.
CLAIMS_PER_TURN = 60


@pytest.fixture
def core(db_url):
    c = Core(db_url)
    calls = []
    claim = c.store.claim

    def counted(*args, **kwargs):
        calls.append(1)
        assert len(calls) <= CLAIMS_PER_TURN, "the claim loop does not end"
        return claim(*args, **kwargs)

    c.store.claim = counted
    c.reset_claims = calls.clear
    c.claims_made = lambda: len(calls)
    yield c
    c.close()


def claim(core: Core) -> list[str]:
    core.reset_claims()
    return core.claimed_names()


def test_a_full_task_concurrency_limit_leaves_the_worker_its_other_names(core):
    core.request("set_limit", name="capped", concurrency=1)
    core.hello("w1", ["capped", "free"], capacity=4)
    first, _second = core.submit("capped"), core.submit("capped")
    assert claim(core) == ["capped"]
    assert claim(core) == []  # the second waits for the limit: the turn ends
    core.submit("free")
    assert claim(core) == ["free"]
    core.succeed(first)
    assert claim(core) == ["capped"]


def test_a_spent_task_rate_frees_by_the_clock_while_the_first_still_runs(core):
    core.request("set_limit", name="rated", rate="1/second")
    core.hello("w1", ["rated", "free"], capacity=4)
    core.submit("rated")
    core.submit("rated")
    core.submit("free")
    assert claim(core) == ["free", "rated"]
    assert claim(core) == []
    core.now += rate_window(1.0) + 0.01  # the first still runs; the rate has room again
    assert claim(core) == ["rated"]


def test_a_full_queue_concurrency_limit_leaves_the_worker_its_other_queues(core):
    core.request("set_queue", name="narrow", concurrency=1)
    core.hello("w1", ["a", "b"], capacity=4, queues=["narrow", "wide"])
    first = core.submit("a", queue="narrow")
    core.submit("b", queue="narrow")
    assert claim(core) == ["a"]
    assert claim(core) == []
    core.submit("b", queue="wide")
    assert claim(core) == ["b"]
    core.succeed(first)
    assert claim(core) == ["b"]


def test_a_spent_queue_rate_frees_by_the_clock(core):
    core.request("set_queue", name="slow", rate="1/s")
    core.hello("w1", ["a", "b"], capacity=4, queues=["slow", "fast"])
    core.submit("a", queue="slow")
    core.submit("b", queue="slow")
    assert claim(core) == ["a"]
    assert claim(core) == []
    core.submit("a", queue="fast")
    assert claim(core) == ["a"]
    core.now += rate_window(1.0) + 0.01
    assert claim(core) == ["b"]


def test_a_paused_queue_holds_its_tasks_and_not_the_others(core):
    core.request("pause_queue", name="held")
    core.hello("w1", ["a", "b"], capacity=4, queues=["held", "open"])
    core.submit("a", queue="held")
    core.submit("b", queue="held")
    assert claim(core) == []
    core.submit("b", queue="open")
    assert claim(core) == ["b"]
    core.request("resume_queue", name="held")
    assert claim(core) == ["a", "b"]


def test_limits_of_both_kinds_at_once_on_two_workers(core):
    """Two workers with different names; a capped name, a rated queue: nothing spins,
    nothing runs beyond its limits, everything runs in the end."""
    core.request("set_queue", name="slow", rate="2/s")
    core.request("set_limit", name="capped", concurrency=1)
    core.hello("w1", ["capped", "a"], capacity=3)
    core.hello("w2", ["capped", "b"], capacity=3, queues=["slow", "default"])
    ids = [core.submit("capped") for _ in range(3)]
    ids += [core.submit("a", queue="slow") for _ in range(3)]
    ids += [core.submit("b", queue="slow") for _ in range(3)]
    ran: list[str] = []
    for _ in range(20):
        names = claim(core)
        assert names.count("capped") <= 1
        ran += names
        for task_id in ids:
            if maybe_task_info(core.store.get_task(task_id))["status"] in ("leased", "running"):
                core.succeed(task_id)
        core.now += 0.6
    assert sorted(ran) == sorted(["capped"] * 3 + ["a"] * 3 + ["b"] * 3)


def test_a_turn_makes_a_bounded_number_of_claims_and_the_next_goes_on(core, monkeypatch):
    monkeypatch.setattr("martinet.server.claims.CLAIMS_PER_TURN", 4)
    queues = [f"q{i}" for i in range(10)]
    core.hello("w1", ["a"], capacity=20, queues=queues)
    for queue in queues:
        core.submit("a", queue=queue)
    counts = []
    while len(counts) < 5 and (not counts or counts[-1]):
        counts.append(len(claim(core)))
    assert counts == [4, 4, 2, 0]  # one claim a queue, four a turn; nothing lost between turns


def test_a_queue_that_runs_dry_does_not_end_the_claim_for_the_others(core):
    """Weighted queues: when the queue the weights pick has run dry, the same claim goes
    on to the other queues (a claim that only learned a queue was empty used to end there,
    and with nothing else to wake it the daemon stopped dispatching for good)."""
    core.request("set_queue", name="urgent", weight=3)
    core.request("set_queue", name="bulk", weight=1)
    core.hello("w1", ["a"], capacity=1)
    urgent = core.submit("a", queue="urgent")
    bulk = [core.submit("a", queue="bulk") for _ in range(3)]
    assert [row["id"] for row in core.claim()["w1"]] == [urgent]
    core.succeed(urgent)
    for task_id in bulk:
        assert [row["id"] for row in core.claim()["w1"]] == [task_id]
        core.succeed(task_id)


def test_a_task_readopted_after_its_worker_was_lost_counts_toward_its_limit_again(core):
    """The daemon lost a worker (its tasks' slots were freed), then the worker came back
    still running its task: that task holds the queue's only slot again."""
    core.request("set_queue", name="narrow", concurrency=1)
    core.hello("w1", ["a"], capacity=2)
    first = core.submit("a", queue="narrow")
    core.submit("a", queue="narrow")
    assert claim(core) == ["a"]
    with core.store.atomic():
        lose_worker(core.server, "w1", core.now, "silent")
    core.hello("w1", ["a"], capacity=2, running=[{"id": first, "attempt": 1, "started": True}])
    assert maybe_task_info(core.store.get_task(first))["status"] == "running"
    assert claim(core) == []  # the second waits: the first holds the limit again
    core.succeed(first)
    assert claim(core) == ["a"]


def test_a_task_into_idle_workers_costs_one_claim_then_none(core):
    """The claim that takes the one ready task says none is left: no second claim (the
    next idle worker's, or a prefetch) to find the queue empty, on the latency path.
    Once a claim found the queue empty, the next task goes to an idle worker as it is
    inserted, with no claim at all (claims.lease_at_once)."""
    for w in ("w1", "w2"):
        core.hello(w, ["t"], capacity=33, threads=1)  # one thread and the default prefetch
    core.claim()
    first = core.submit("t")
    core.reset_claims()
    assert sum(len(rows) for rows in core.claim().values()) == 1
    assert core.claims_made() == 1
    second = core.submit("t")
    core.reset_claims()
    sent = core.claim()
    assert core.claims_made() == 0
    (worker,) = [w for w, rows in sent.items() if [r["id"] for r in rows] == [second]]
    task = core.store.get_task(second)
    assert (task.status, task.worker, task.attempt) == ("leased", worker, 1)
    assert core.server.peers.owner(second).worker_id == worker
    # In a turn that holds another writer's notes (elsewhere.py), the claim decides
    for task_id in (first, second):
        core.succeed(task_id)
    assert core.claim() == {}  # two idle workers, their queue known empty
    core.reset_claims()
    request = protocol.encode(Cmd.REQUEST, {"op": "execute", "rid": "r", "name": "t", "args": {}})
    note = {"from": "another", "run_at": core.now + 60}  # (a task it scheduled)
    out = core.server.turn([(b"client", request)], [], [], core.now, [note])
    assert core.claims_made() == 1 and sum(len(rows) for _peer, rows in out.tasks) == 1


def test_a_task_leased_as_it_is_inserted_never_passes_one_ready_before_it(core):
    """Only a worker that could take nothing else gets a new task at its insert: a task
    already waiting in its queue goes first, and a paused or rated queue, or a task name
    at its limit, leaves the new task to the claims and their rules."""
    core.hello("w1", ["t", "capped"], capacity=1)
    first = core.submit("t", priority=5)
    assert claim(core) == ["t"]  # (and the queue found empty)
    waiting = core.submit("t", priority=5)  # no idle worker: it waits
    core.succeed(first)
    newer = core.submit("t", priority=5)  # an idle worker now, but a task is ahead of it
    sent = core.claim()
    assert [r["id"] for r in sent["w1"]] == [waiting] and core.store.get_task(newer).status == "queued"
    core.succeed(waiting)
    assert [r["id"] for r in core.claim()["w1"]] == [newer]
    core.succeed(newer)
    assert claim(core) == []  # idle, its queue known empty

    core.request("set_limit", name="capped", concurrency=1)
    core.hello("w2", ["capped"], capacity=1)  # holds the one it may run
    held = core.submit("capped")
    assert claim(core) == ["capped"]
    capped = core.submit("capped")  # w1 is idle, but the name is at its limit
    assert claim(core) == [] and core.store.get_task(capped).status == "queued"
    core.succeed(held)
    assert claim(core) == ["capped"]
    core.succeed(capped)

    core.request("pause_queue", name="default")
    paused = core.submit("t")
    assert claim(core) == [] and core.store.get_task(paused).status == "queued"
    core.request("resume_queue", name="default")
    assert claim(core) == ["t"]
    core.succeed(paused)

    core.request("set_queue", name="default", rate="100/s")
    assert claim(core) == []
    rated = core.submit("t")  # a rate's starts are counted by the claims, never at an insert
    assert core.store.get_task(rated).status == "queued"
    assert claim(core) == ["t"] and core.store.get_task(rated).status == "leased"
    core.succeed(rated)
    core.request("set_queue", name="default", rate="none")
    assert claim(core) == []  # idle, its queue known empty

    core.server.other_daemons = {"another"}  # (at its last tick) its tasks are in the table too
    beside = core.submit("t")
    assert core.store.get_task(beside).status == "queued"
    assert claim(core) == ["t"]


def test_claimed_tasks_carry_their_args_as_submitted(core):
    """A claim's args are decoded in one parse for all its rows (store.rows.decoded_args)."""
    args = [{"n": 1}, {"text": 'a "quote", a \\ and ☃', "nested": {"l": [1, 2.5, None, True]}}, {}]
    ids = [core.submit("a", args=a) for a in args]
    core.hello("w1", ["a"], capacity=8)
    rows = core.claim()["w1"]
    assert {row["id"]: row["args"] for row in rows} == dict(zip(ids, args, strict=True))


def test_args_that_are_not_one_json_object_a_row_are_read_one_by_one():
    import json

    from martinet.store.rows import Unreadable, decoded_args

    assert decoded_args([]) == ([], True)
    assert decoded_args(['{"a": [1, 2]}', "{}"]) == ([{"a": [1, 2]}, {}], True)
    # Joined, "1, 2" would read as two rows' values, and '[{"a": 1}' with "2]" as one
    for texts in (["1, 2", '{"a": 1}'], ['[{"a": 1}', "2]", "{}"], ["{bad", "{}"], [None, "{}"]):
        decoded, readable = decoded_args(texts)
        assert not readable and decoded[-1] == json.loads(texts[-1])
        assert all(type(args) is Unreadable for args in decoded[:-1]), decoded


def test_a_task_whose_stored_args_cannot_be_read_ends_dead_and_the_others_run(core):
    """Only a database changed by hand holds such args: the claim must not raise (it would
    fail every turn in which a worker may take the task), nor send args the handler never
    got (a worker reads args that are not an object as {})."""
    bad, listed, good = core.submit("a", args={"x": 1}), core.submit("a", args={"x": 2}), core.submit("a")
    core.store.db.execute_sql(f"UPDATE task SET args = '{{bad' WHERE id = {bad}")
    core.store.db.execute_sql(f"UPDATE task SET args = '[1, 2]' WHERE id = {listed}")
    child = core.submit("a", after=[bad])
    core.hello("w1", ["a"], capacity=8)
    out = Outbox()
    with core.store.atomic():
        claims.claim(core.server, out, core.now)
    ((_peer, rows),) = out.tasks
    assert [row["id"] for row in rows] == [good]
    for task_id, why in ((bad, "not JSON"), (listed, "JSON, but a list, not an object")):
        task = core.store.get_task(task_id)  # (its info would read its args)
        assert task.status == "dead" and task.worker is None and task.finished_at == core.now
        assert task.error_type == "UnreadableArgs" and why in task.error_message
    assert core.store.get_task(child).status == "cancelled"  # it waited on one that will never succeed
    assert sorted(out.ended) == [bad, listed, child]
    assert [(e["event"], e["id"]) for e in out.events] == [
        ("dead", bad),
        ("cancelled", child),
        ("dead", listed),
    ]
    assert core.claim() == {}  # and the next turn claims as ever
