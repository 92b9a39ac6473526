"""A Worker in a thread of the test's process, against sockets the test binds itself (a
scripted daemon, its times the test's own) or an embedded daemon (tests/live.py): what a
worker does with what it is sent, without a worker process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

import martinet.worker
from martinet import protocol
from martinet.messages import Task
from martinet.protocol import Cmd
from martinet.worker import MAX_START_IN, Worker, start_wait
from tests.harness import free_ports, wait_for
from tests.live import HANDLERS


@contextmanager
def scripted_daemon(**options: Any) -> Iterator[tuple[Worker, zmq.Socket, zmq.Socket, bytes, dict]]:
    """A Worker (of `options`) in a thread, against a worker and a status socket the test
    binds itself and plays the daemon on: (worker, worker socket, status socket, the
    worker's ident, its hello's header). Stopped and closed after."""
    ctx = zmq.Context()
    work, status = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    ports = free_ports(2)
    worker = Worker(worker_port=ports[0], status_port=ports[1], **options)
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        for sock, port in ((work, ports[0]), (status, ports[1])):
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(f"tcp://127.0.0.1:{port}")
        thread.start()
        assert work.poll(10_000), "the worker did not say hello"
        ident, frame = work.recv_multipart()
        cmd, hello = protocol.decode([frame])
        assert cmd is Cmd.HELLO
        yield worker, work, status, ident, hello
    finally:
        worker.options.grace = 0
        worker.stop()
        thread.join(10)
        work.close()
        status.close()
        ctx.term()


WELCOME = {"epoch": "e1", "database": "d1", "session": "5" * 32}  # (a worker reports after one)


def _status_messages(status: zmq.Socket, until: Cmd, within: float = 10.0) -> list[tuple[Cmd, dict, float]]:
    """What the worker sent on the status socket, up to the first `until`: (command,
    header, when it came), in order; outcomes acknowledged as the daemon does."""
    came: list[tuple[Cmd, dict, float]] = []
    deadline = time.monotonic() + within
    while not came or came[-1][0] is not until:
        left = deadline - time.monotonic()
        assert left > 0 and status.poll(int(left * 1000) + 1), f"no {until.name} came; got {came}"
        sender, *frames = status.recv_multipart()
        cmd, header = protocol.decode(frames)
        came.append((cmd, header, time.monotonic()))
        if cmd is Cmd.ENDED:
            acks = [[item["id"], item["attempt"]] for item in header["ended"]]
            status.send_multipart([sender, *protocol.encode(Cmd.ACK, {"acks": acks})])
    return came


def test_a_task_sent_ahead_of_its_due_time_starts_then_or_never_if_cancelled_meanwhile():
    """The daemon leases a delayed task a moment before it is due (start_in, see
    server/timers.py's TIMER_LEAD) and the worker holds it until then. A scripted daemon plays
    the daemon's part here, so that the times are the test's own."""
    with scripted_daemon(handlers=HANDLERS, concurrency=2) as (_worker, work, status, ident, _hello):

        def send(cmd: Cmd, header: dict) -> None:
            work.send_multipart([ident, *protocol.encode(cmd, header)])

        send(Cmd.WELCOME, WELCOME)
        starts: list[list[int]] = []

        def outcomes() -> list[dict]:
            came = _status_messages(status, Cmd.ENDED)
            assert all(cmd is Cmd.STARTED for cmd, _header, _at in came[:-1])  # a handler took it
            for _cmd, header, _at in came:
                starts.extend(header.get("started", []))  # or with the outcomes of the same pass
            return came[-1][1]["ended"]

        sent = time.time()
        send(Cmd.TASK, {"tasks": [{"id": 1, "attempt": 1, "name": "clock", "args": {}, "start_in": 0.3}]})
        (outcome,) = outcomes()
        assert outcome["ok"] and outcome["result"] >= sent + 0.3  # the handler's start: not before

        send(Cmd.TASK, {"tasks": [{"id": 2, "attempt": 1, "name": "clock", "args": {}, "start_in": 0.9}]})
        send(Cmd.CANCEL, {"id": 2})
        (outcome,) = outcomes()
        assert (outcome["id"], outcome["ok"], outcome["result"]) == (2, True, None)  # its handler never ran
        assert starts == [[1, 1]]  # so it never said it started


def test_a_task_sent_ahead_starts_when_the_workers_clock_reaches_its_run_at_not_a_trip_later():
    """start_in counts from when the daemon sent it; the task's run_at, by a clock that
    agrees, is when it starts: a trip of 0.6 s here (start_in 0.9, due in 0.3 by this
    host's clock) does not make it late."""
    with scripted_daemon(handlers=HANDLERS, concurrency=1) as (_worker, work, status, ident, _hello):
        work.send_multipart([ident, *protocol.encode(Cmd.WELCOME, WELCOME)])
        sent = time.time()
        task = {"id": 1, "attempt": 1, "name": "clock", "args": {}, "start_in": 0.9, "run_at": sent + 0.3}
        work.send_multipart([ident, *protocol.encode(Cmd.TASK, {"tasks": [task]})])
        (outcome,) = _status_messages(status, Cmd.ENDED)[-1][1]["ended"]
        assert sent + 0.3 <= outcome["result"] < sent + 0.8


def test_a_task_sent_ahead_starts_later_never_sooner_when_its_thread_stops_between_two_clocks(monkeypatch):
    """Its wait is read off this host's clock, then counted on the monotonic one: should
    the thread stop between the two reads, the task starts later, never sooner. One clock
    here for both, each read half a second after the last (a thread stopped each time)."""

    class Stopping:
        now = 1000.0

        def time(self) -> float:
            self.now += 0.5
            return self.now

        monotonic = time

    worker = Worker(handlers=HANDLERS, worker_id="w", concurrency=1)
    monkeypatch.setattr(martinet.worker, "time", Stopping())
    worker._on_task(Task(1, 1, "clock", {}, start_in=0.02, run_at=1000.52))
    (ctx,) = worker._running.values()
    assert ctx._start_at >= 1000.52


def test_a_start_wakes_no_one_a_task_that_ends_before_the_loop_looks_says_it_started_in_its_outcome(
    monkeypatch,
):
    """A handler's start does not wake the worker's loop (which would take the GIL from
    the thread about to call the handler): a task that ends before the loop looks for
    starts says it started in its ENDED, one message. (The look comes late here, so
    that nothing but the outcome can wake the loop.)"""
    monkeypatch.setattr(martinet.worker, "START_REPORT_WAIT", 30.0)
    with scripted_daemon(handlers=HANDLERS, concurrency=1, heartbeat_interval=30.0) as scripted:
        _worker, work, status, ident, _hello = scripted
        work.send_multipart([ident, *protocol.encode(Cmd.WELCOME, WELCOME)])
        task = {"id": 1, "attempt": 1, "name": "sleepy", "args": {"seconds": 0.05}}
        work.send_multipart([ident, *protocol.encode(Cmd.TASK, {"tasks": [task]})])
        ((cmd, header, _at),) = _status_messages(status, Cmd.ENDED)
        assert header["started"] == [[1, 1]] and [item["id"] for item in header["ended"]] == [1]


def test_a_task_that_runs_on_is_said_to_have_started_while_it_runs_with_no_heartbeat_due():
    """The loop looks for starts a moment after a thread may take a task: a long task's
    STARTED comes while it runs, long before the next heartbeat (30 s here) would wake
    the loop, and so does the start of the next task once the first one's thread is free."""
    with scripted_daemon(handlers=HANDLERS, concurrency=1, heartbeat_interval=30.0) as scripted:
        _worker, work, status, ident, _hello = scripted
        work.send_multipart([ident, *protocol.encode(Cmd.WELCOME, WELCOME)])
        tasks = [{"id": i, "attempt": 1, "name": "sleepy", "args": {"seconds": 0.5}} for i in (1, 2)]
        work.send_multipart([ident, *protocol.encode(Cmd.TASK, {"tasks": tasks})])
        came = _status_messages(status, Cmd.ENDED)  # task 1's outcome: its start came before it
        assert [(cmd, header["started"]) for cmd, header, _at in came[:-1]] == [(Cmd.STARTED, [[1, 1]])]
        header = came[-1][1]
        assert [item["id"] for item in header["ended"]] == [1]
        if "started" not in header:  # task 2, in the thread task 1 left: with that outcome, or alone
            ((cmd, header, _at),) = _status_messages(status, Cmd.STARTED)  # before its own outcome
        assert header["started"] == [[2, 1]]


@pytest.mark.parametrize(
    ("start_in", "run_at", "wait"),
    [
        (0.3, None, 0.3),  # an older daemon's: from its arrival
        (0.3, 100.1, 0.1),  # the trip here counted
        (0.3, 95.0, 0.0),  # this clock is ahead of the daemon's: at once
        (0.3, 110.0, 0.3),  # behind it: as start_in says
        (5.0, None, MAX_START_IN),
    ],
)
def test_how_long_a_task_sent_ahead_is_held(start_in, run_at, wait):
    assert start_wait(start_in, run_at, now=100.0) == pytest.approx(wait)


class LiarWorker(Worker):
    """Says it handles 'beta' but has no handler for it: it must refuse."""

    def _hello(self):
        self.handlers.setdefault("beta", None)  # advertised...
        super()._hello()
        del self.handlers["beta"]  # ...but not really there


def test_refused_task_goes_elsewhere_without_spending_an_attempt(make_live, sqlite_url, caplog):
    # Given a worker that claims 'beta' but cannot run it
    live = make_live(sqlite_url)
    m, ports = live.m, {"worker_port": live.m.ports["worker"], "status_port": live.m.ports["status"]}
    liar = LiarWorker(handlers={"alpha": lambda task: "alpha"}, worker_id="liar", concurrency=2, **ports)
    threads = [threading.Thread(target=liar.run, daemon=True)]
    threads[0].start()
    try:
        wait_for(lambda: m.ping()["workers"] == 1, what="the liar's hello")
        with caplog.at_level(logging.INFO, logger="martinet"):
            tid = m.execute("beta")
            wait_for(lambda: "worker liar refused task" in caplog.text, timeout=10, what="the refusal")
        info = m.show(tid)
        assert (info["status"], info["attempt"]) == ("queued", 0)
        assert info["waiting"] == "no connected worker handles 'beta'"
        # When a worker that can run it arrives, it runs there, on its first attempt
        live.worker(worker_id="honest", handlers={"beta": lambda task: "beta"})
        assert m.wait(tid, timeout=10) == "beta"
        assert [(a["attempt"], a["worker"]) for a in m.show(tid)["attempts"]] == [(1, "honest")]
    finally:
        liar.options.grace = 0
        liar.stop()
        threads[0].join(10)


def test_a_worker_with_the_default_prefetch_holds_a_deeper_one_and_tells_its_pace():
    """With the default prefetch the worker's hello lets the daemon fill its prefetch deeper
    than its capacity (prefetch_max) and its outcomes carry its handlers' pace: it takes
    tasks beyond its capacity, up to that depth, and refuses none of them."""

    def nap(task, s):
        time.sleep(s)

    assert Worker(handlers={}, prefetch=4).prefetch_max is None  # a prefetch of its own: as asked
    with scripted_daemon(handlers={"nap": nap}, concurrency=1) as (worker, work, status, ident, hello):
        assert (worker.capacity, worker.prefetch_max, worker.most) == (33, 128, 129)
        assert (hello["capacity"], hello["prefetch_max"]) == (33, 128)
        welcome = {"epoch": "e", "database": "d", "session": "5" * 32}
        work.send_multipart([ident, *protocol.encode(Cmd.WELCOME, welcome)])
        tasks = [{"id": i, "attempt": 1, "name": "nap", "args": {"s": 0.002}} for i in range(1, 41)]
        work.send_multipart([ident, *protocol.encode(Cmd.TASK, {"tasks": tasks})])  # 40: more than 33
        ended, paces = [], []
        while len(ended) < 40:
            assert status.poll(10_000), f"{len(ended)} of 40 outcomes came"
            sender, *frames = status.recv_multipart()
            cmd, header = protocol.decode(frames)
            if cmd is Cmd.ENDED:
                ended += [item["id"] for item in header["ended"] if item["ok"]]
                paces.append(header["pace"])
                acks = [[item["id"], item["attempt"]] for item in header["ended"]]
                status.send_multipart([sender, *protocol.encode(Cmd.ACK, {"acks": acks})])
        assert sorted(ended) == list(range(1, 41))  # every one run: none refused
        assert not work.poll(0)  # (no REJECT came)
        assert 0.002 <= paces[-1] < 1.0
