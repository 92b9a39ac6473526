"""Delayed and recurring tasks end to end: a worker process holding a task sent ahead of its
due time, schedules across a daemon's kill -9. (Schedules as the daemon runs them, delayed
tasks through the API and bad times, in process: tests/unit/test_schedules.py; two daemons,
tests/unit/test_two_daemons.py.)"""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import zmq

import martinet
from martinet import protocol
from martinet.protocol import Cmd
from tests.harness import wait_for


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def runs_of(m: martinet.Martinet, sid: str) -> list[float]:
    return sorted(ts(t["due_at"]) for t in m.list(name="clock", limit=10_000) if t["schedule"] == sid)


def test_a_task_sent_ahead_of_its_due_time_starts_then_or_never_if_cancelled_meanwhile(cluster):
    """The daemon leases a delayed task a moment before it is due (start_in, see
    daemon.TIMER_LEAD) and the worker holds it until then. A scripted daemon plays
    the daemon's part here, so that the times are the test's own."""
    ctx = zmq.Context()
    work, status = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    try:
        for sock, port in ((work, cluster.worker_port), (status, cluster.status_port)):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(f"tcp://127.0.0.1:{port}")
        cluster.start_worker(wait=False)
        assert work.poll(10_000), "the worker did not say hello"
        ident, frame = work.recv_multipart()
        assert protocol.decode([frame])[0] is Cmd.HELLO

        def send(cmd: Cmd, header: dict) -> None:
            work.send_multipart([ident, *protocol.encode(cmd, header)])

        starts: list[list[int]] = []

        def outcomes() -> list[dict]:
            while True:
                assert status.poll(10_000), "no outcome came"
                cmd, header = protocol.decode(status.recv_multipart()[1:])
                if cmd is not Cmd.STARTED:
                    break
                starts.extend(header["started"])  # a handler took it
            assert cmd is Cmd.ENDED
            starts.extend(header.get("started", []))  # or with the outcomes of the same pass
            return header["ended"]

        sent = time.time()
        send(Cmd.TASK, {"tasks": [{"id": 1, "attempt": 1, "name": "clock", "args": {}, "start_in": 0.3}]})
        (outcome,) = outcomes()
        assert outcome["ok"] and outcome["result"] >= sent + 0.3  # the handler's start: not before

        send(Cmd.TASK, {"tasks": [{"id": 2, "attempt": 1, "name": "clock", "args": {}, "start_in": 0.9}]})
        send(Cmd.CANCEL, {"id": 2})
        (outcome,) = outcomes()
        assert (outcome["id"], outcome["ok"], outcome["result"]) == (2, True, None)  # its handler never ran
        assert starts == [[1, 1]]  # so it never said it started
    finally:
        work.close()
        status.close()
        ctx.term()


@pytest.mark.parametrize("policy", ["once", "all", "skip"])
def test_schedule_resumes_after_kill9_under_its_misfire_policy(cluster, policy):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    sid = m.every("1 second", "clock", {}, misfire=policy, misfire_grace=0.6 if policy == "skip" else None)
    wait_for(lambda: len(runs_of(m, sid)) >= 1, timeout=10, what="a first run")
    cluster.daemon.kill9()
    killed = time.time()
    time.sleep(2.6)  # the outage itself: due times pass while nobody is there
    restarted = time.time()
    cluster.start_daemon()
    m = cluster.client()
    wait_for(
        lambda: [d for d in runs_of(m, sid) if d > restarted], timeout=10, what="an on-time run after restart"
    )
    dues = runs_of(m, sid)
    missed = [d for d in dues if killed < d < restarted - 0.6]
    assert len(dues) == len(set(dues))  # never two runs for one due time
    assert {round(b - a, 6) % 1 for a, b in zip(dues, dues[1:], strict=False)} <= {0.0}  # one grid, no drift
    if policy == "all":
        assert {round(b - a, 6) for a, b in zip(dues, dues[1:], strict=False)} == {1.0}  # every due time ran
    elif policy == "once":
        # The missed due times collapsed into one run: the latest one reached when the
        # daemon was back (within the outage, or just after it if the start was slow).
        assert len([d for d in dues if killed < d < restarted]) <= 1
        assert max(b - a for a, b in zip(dues, dues[1:], strict=False)) > 1.5  # not every missed one ran
    else:
        assert missed == []
