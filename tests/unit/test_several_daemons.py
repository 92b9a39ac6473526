"""A client given several daemons on one database (client.Client: "tcp://a,tcp://b")
moves to the next when its daemon stops answering, and what it resends is created once:
embedded daemons on one PostgreSQL, worker threads, real sockets."""

from __future__ import annotations

import time

import pytest

import martinet
from martinet import exchange
from martinet.config import check_url
from martinet.errors import ConfigError, DaemonUnavailable


def free_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_client_moves_to_the_next_daemon_when_its_own_stops(pg_url, make_live, monkeypatch):
    monkeypatch.setattr(exchange, "FIRST_TRY", 0.3)  # the bound: one try, then the next daemon
    first, second = make_live(pg_url), make_live(pg_url)
    second.worker()
    m = martinet.Martinet.connect(f"{first.url},{second.url}", timeout=10)
    try:
        before = m.execute("add", {"a": 1, "b": 1})
        assert m.client.url == first.url and m.ping()["epoch"] == first.m.ping()["epoch"]
        first.m.close()  # the first daemon stops (its port then refuses: it answered before, so no probe)
        started = time.monotonic()
        after = m.execute("add", {"a": 2, "b": 2}, request_id="moved-1")
        assert time.monotonic() - started < 5 and m.client.url == second.url
        assert m.execute("add", {"a": 2, "b": 2}, request_id="moved-1") == after  # created once
        assert m.wait(after, timeout=10) == 4 and m.wait(before, timeout=10) == 2  # (the second's worker)
    finally:
        m.close()


def test_a_daemon_of_the_list_that_is_not_running_is_passed_over_at_once(pg_url, make_live):
    live = make_live(pg_url)
    nothing = f"tcp://127.0.0.1:{free_tcp_port()}"
    m = martinet.Martinet.connect(f"{nothing},{live.url}", timeout=10)
    try:
        started = time.monotonic()
        assert m.ping()["workers"] == 0
        assert time.monotonic() - started < exchange.FIRST_TRY  # refused: no wait for a reply
    finally:
        m.close()
    lonely = martinet.Martinet.connect(f"{nothing},tcp://127.0.0.1:{free_tcp_port()}", timeout=10)
    try:
        with pytest.raises(DaemonUnavailable, match="nothing listens at tcp://127.0.0.1:"):
            lonely.ping()
    finally:
        lonely.close()


def test_a_list_of_daemons_is_checked_one_by_one():
    assert check_url("tcp://a:8008,tcp://b:8008") == "tcp://a:8008,tcp://b:8008"
    with pytest.raises(ConfigError, match="'tcp://b' has no port; write 'tcp://b:8008'"):
        check_url("tcp://a:8008, tcp://b")


def test_a_task_ended_through_one_daemon_answers_a_wait_on_another(pg_url, make_live):
    first, second = make_live(pg_url), make_live(pg_url)
    first.worker()
    deadline = time.monotonic() + 10
    while not all(live.m._embedded[0].core.other_daemons for live in (first, second)):
        assert time.monotonic() < deadline, "the daemons never saw each other"  # (each tick, 1 s)
        time.sleep(0.01)
    tid = first.m.execute("sleepy", {"seconds": 0.2})
    started = time.monotonic()
    # The second asked to be told (a NOTIFY), and the first told it when the task ended:
    # its client's wait is answered then, not at the end of the wait's round (a minute)
    assert second.m.wait(tid, timeout=5) == "slept"
    assert time.monotonic() - started < 4


def test_a_worker_moves_to_the_next_daemon_and_its_running_task_goes_on_there(pg_url, make_live):
    """Two daemons on one database, on 127.0.0.1 and 127.0.0.2 with the same ports; a worker
    given both runs a task for the first, which stops: the worker goes to the second
    (after liveness heartbeats of silence), which adopts the task; it ends there, once."""
    fast = {"heartbeat_interval": 0.2}
    first = make_live(pg_url, **fast)
    ports = first.m.ports
    second = make_live(pg_url, bind="127.0.0.2", client_port=ports["client"], worker_port=ports["worker"],
                       status_port=ports["status"], **fast)  # fmt: skip
    first.worker(concurrency=1, connect="127.0.0.1,127.0.0.2", heartbeat_interval=0.2)
    tid = first.m.execute("sleepy", {"seconds": 1.5})
    deadline = time.monotonic() + 10
    while first.m.get(tid)["status"] != "running":
        assert time.monotonic() < deadline, "the task did not start"
        time.sleep(0.01)
    first.m.close()  # the first daemon stops while its worker runs the task
    assert second.m.wait(tid, timeout=10) == "slept"
    shown = second.m.show(tid)
    assert shown["daemon"] == second.m.ping()["epoch"]  # adopted by the second
    assert [a["outcome"] for a in shown["attempts"]] == ["succeeded"]  # one attempt, never lost


def test_a_client_on_one_daemon_watches_every_daemons_events_in_order(pg_url, make_live):
    """Events recorded through either daemon reach a client watching on the second, each
    once and in the table's order (every daemon's events are numbered in commit order);
    the first hears that the second's clients watch, and says when it records some."""
    from martinet.store import open_database
    from tests.unit.test_events import Seen, table

    first, second = make_live(pg_url), make_live(pg_url)
    first.worker()
    second.worker()
    cores = [live.m._embedded[0].core for live in (first, second)]
    deadline = time.monotonic() + 10
    while not all(core.hub.foreign for core in cores):
        assert time.monotonic() < deadline, "the daemons never saw each other"  # (each tick, 1 s)
        time.sleep(0.01)
    seen = Seen()
    second.m.on("any", seen)
    start = second.m.ping()  # subscribed (the hook's listener starts with the first request)
    assert start["epoch"] != first.m.ping()["epoch"]
    tids = [first.m.execute("steps", {"n": 2}), second.m.execute("add", {"a": 1, "b": 1})]
    tids += [first.m.execute("add", {"a": i, "b": 1}) for i in range(4)]
    for tid in tids:
        first.m.wait(tid, timeout=20)
    items = seen.wait(lambda items: {e["id"] for e in items if e["event"] == "succeeded"} >= set(tids),
                      what="every task's end, through either daemon")  # fmt: skip
    assert cores[0].remote_watch_until > 0  # the first heard that the second's clients watch
    ids = [e["event_id"] for e in items]
    assert ids == sorted(set(ids))  # each once, in order
    db = open_database(pg_url)
    try:
        kept = table(db, ids[0] - 1)
    finally:
        db.close()
    assert ids == [row[0] for row in kept][: len(ids)]  # none skipped: the table's, from the first
    assert [e["progress"] for e in items if e["id"] == tids[0] and e["event"] == "progress"] == [0.5, 1.0]


def test_a_task_accepted_by_a_daemon_without_its_worker_runs_at_once_on_another(pg_url, make_live):
    """The second daemon has no worker for the task: it names the task's queue to the
    others with its commit, and the first one's idle worker takes it at once, not at a
    tick (an hour here) nor when something else happens to wake the first."""
    slow = {"heartbeat_interval": 3600.0}
    first = make_live(pg_url, **slow)
    first.worker()
    second = make_live(pg_url, **slow)  # its first tick, at once, finds the first serving
    assert first.m.wait(first.m.execute("add", {"a": 0, "b": 0}), timeout=10) == 0  # the first's lanes: empty
    deadline = time.monotonic() + 10
    while not second.m._embedded[0].core.other_daemons:
        assert time.monotonic() < deadline, "the second daemon never saw the first"
        time.sleep(0.01)
    tid = second.m.execute("add", {"a": 2, "b": 3})
    assert tid.warning == "no connected worker handles 'add'"  # (to this daemon)
    assert second.m.wait(tid, timeout=5) == 5


def test_a_call_with_a_short_timeout_still_reaches_the_next_daemon(pg_url, make_live):
    """The first daemon of the list takes connections and never answers (frozen, say): a
    call whose timeout is no longer than the first resend (FIRST_TRY) shares it out, and
    is answered by the second within it."""
    import zmq

    live = make_live(pg_url)
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    # 2 s: the first resend's own wait (FIRST_TRY) would leave the second daemon no time
    m = martinet.Martinet.connect(f"tcp://127.0.0.1:{port},{live.url}", timeout=exchange.FIRST_TRY)
    try:
        started = time.monotonic()
        assert m.ping()["epoch"] == live.m.ping()["epoch"]
        assert time.monotonic() - started < exchange.FIRST_TRY
    finally:
        m.close()
        silent.close()
