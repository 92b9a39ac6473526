"""Who is alive, as the daemon decides it: silence counts only while the daemon listens.
In process, with the clock the test sets (tests/core.py)."""

from __future__ import annotations

from martinet.present import attempt_infos, maybe_task_info
from martinet.server import claims
from martinet.server.outbox import Outbox
from martinet.server.outcomes import on_outcomes
from martinet.store import Outcome


def test_a_silent_worker_is_lost_after_liveness_intervals(sqlite_url, make_core):
    core = make_core(sqlite_url, heartbeat_interval=0.2)
    core.hello("w1", ["add"])
    core.now += 0.5
    core.tick()
    assert core.daemon.peers.get("w1") is not None
    core.now += 0.2
    core.tick()
    assert core.daemon.peers.get("w1") is None


def test_a_daemon_that_did_not_listen_does_not_count_that_silence(sqlite_url, make_core):
    core = make_core(sqlite_url, heartbeat_interval=0.2)
    core.hello("w1", ["add"])
    task_id = core.submit("add")
    assert core.claimed_names() == ["add"]
    core.now += 5.0  # the daemon was stopped: its sockets filled up, unread
    core.server.not_listening(5.0)
    core.tick()
    assert core.daemon.peers.get("w1") is not None
    assert maybe_task_info(core.store.get_task(task_id))["status"] == "leased"  # sent, not started
    core.now += 0.7  # then silence while it listens does count
    core.tick()
    assert core.daemon.peers.get("w1") is None


def test_tasks_claimed_for_a_connection_that_is_gone_go_back_unspent(db_url, make_core):
    """A worker that reconnected while the daemon was paused: the tasks claimed for its old
    connection never left. They are queued again with no attempt spent and no attempt
    lost, and the worker is not declared gone for it."""
    core = make_core(db_url)
    core.hello("w1", ["add"])  # its connection: nobody is on the other end
    task_id = core.submit("add")
    out = Outbox()
    with core.store.atomic():
        claims.claim(core.server, out, core.now)
    core.daemon._send_tasks(out.tasks, core.now)
    task = maybe_task_info(core.store.get_task(task_id))
    assert (task["status"], task["attempt"], attempt_infos(core.store.attempts(task_id))) == ("queued", 0, [])
    peer = core.daemon.peers.get("w1")
    assert peer is not None and peer.credit == 0 and not peer.inflight
    core.hello("w1", ["add"])  # it says hello on its new connection
    assert core.claimed_names() == ["add"]


def test_a_worker_stuck_past_a_time_limit_gets_no_more_work_until_it_answers(db_url, make_core):
    """Its attempt ends timed out and is retried elsewhere; its slot stays taken (its thread
    may be stuck in the handler) until it answers for that task, fenced out or not."""
    core = make_core(db_url, time_limit_grace=0.5)
    core.hello("stuck", ["add"], capacity=1)
    first = core.submit("add", timeout=1.0, max_attempts=5)
    assert core.claimed_names() == ["add"]
    core.now += 1.6  # past its time limit and the grace, heartbeats or not
    core.claim()
    task = maybe_task_info(core.store.get_task(first))
    assert (task["status"], task["error"]["type"]) == ("failed", "TaskTimeout")
    second = core.submit("add")
    assert core.claim() == {}  # nothing more for the stuck worker
    core.hello("fresh", ["add"], capacity=4)
    core.now += 60  # the retry is due
    assert sorted(row["id"] for row in core.claim()["fresh"]) == [first, second]
    out = Outbox()
    with core.store.atomic():  # the stuck handler returns at last: fenced out, its slot freed
        on_outcomes(core.server, [(b"status", Outcome(first, 1, "stuck", "succeeded"))], out, core.now)
    assert core.daemon.peers.get("stuck").credit == 1


def test_a_task_sent_on_a_connection_its_worker_had_left_goes_back_unspent_a_restart_loses_it(
    db_url, make_core
):
    """The send seemed to go (the daemon had not seen the old connection close: it was
    paused, say), and the worker came back on a new one without the task. From the same
    process (its incarnation) it never reached it: queued again with no attempt spent.
    From a new process with the same session (its journal keeps it) it may have died
    there: lost, as before."""
    core = make_core(db_url)
    core.hello("w1", ["add"], incarnation="run-1")
    first = core.submit("add")
    assert [row["id"] for row in core.claim()["w1"]] == [first]
    core.reconnect("w1", ["add"], incarnation="run-1", running=[])
    task = maybe_task_info(core.store.get_task(first))
    (attempt,) = attempt_infos(core.store.attempts(first))
    assert (task["status"], attempt["outcome"]) == ("queued", "interrupted")
    assert "never received" in attempt["error"]["message"]
    assert task["max_attempts"] - task["attempt"] == 3 - 0  # no attempt spent (3 by default)

    assert [row["id"] for row in core.claim()["w1"]] == [first]
    core.reconnect("w1", ["add"], connection="third", incarnation="run-2", running=[])  # restarted
    (_, second) = attempt_infos(core.store.attempts(first))
    assert (maybe_task_info(core.store.get_task(first))["status"], second["outcome"]) == (
        "failed",
        "lost",
    )  # retried later
