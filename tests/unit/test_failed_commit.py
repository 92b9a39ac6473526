"""A turn whose commit fails leaves the daemon's picture of the database as it was before
the turn: an outcome that freed a slot in it, rolled back, frees that slot again when its
worker sends it again, and must not free a second one (issue 24). In process, every backend."""

from __future__ import annotations

from martinet.protocol import Cmd


def done(task_id: int, attempt: int = 1, worker_id: str = "w1") -> tuple[Cmd, dict]:
    return Cmd.DONE, {"id": task_id, "attempt": attempt, "worker_id": worker_id, "result": None}


def tasks_sent(sent: list) -> list[int]:
    return [row["id"] for role, _ident, cmd, h in sent if cmd is Cmd.TASK for row in h["tasks"]]


def test_an_outcome_rolled_back_then_resent_frees_one_slot_not_two(db_url, make_core):
    core = make_core(db_url)
    core.request("set_queue", name="one", concurrency=1)
    core.hello("w1", ["t"], capacity=4)
    a, b, c = (core.submit("t", queue="one") for _ in range(3))
    assert tasks_sent(core.turn()) == [a]
    # When A's outcome comes in a turn whose commit fails
    assert tasks_sent(core.turn(status=[done(a)], fail=True)) == []
    assert core.store.get_task(a).status == "leased"  # rolled back
    # Then nothing else starts while the database says A still runs
    assert tasks_sent(core.turn()) == []
    # And when its worker sends it again, B starts, and C waits for B
    assert tasks_sent(core.turn(status=[done(a)])) == [b]
    assert tasks_sent(core.turn()) == []
    assert [core.store.get_task(t).status for t in (a, b, c)] == ["succeeded", "leased", "queued"]
    assert core.daemon.lanes.queue("one").running == 1


def test_a_claim_rolled_back_gives_back_its_slot_and_its_rate(db_url, make_core):
    core = make_core(db_url)
    core.request("set_queue", name="rated", rate="1/1h")
    core.hello("w1", ["t"], capacity=4)
    a = core.submit("t", queue="rated")
    # When the turn that claims A fails to commit
    assert tasks_sent(core.turn(fail=True)) == []
    assert core.store.get_task(a).status == "queued"
    # Then the next turn claims it (the rolled back start spent none of the rate)
    assert tasks_sent(core.turn()) == [a]
    assert core.daemon.peers.get("w1").credit == 3
