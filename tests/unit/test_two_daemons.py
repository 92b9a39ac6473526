"""Two daemons on one database (tests/core.py: two cores, each with its own connection, on
every backend), their turns interleaved at a clock the test sets. (The store's side, one
statement at a time across connections: tests/store/test_two_daemons.py.)"""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import datetime

import pytest

from martinet.errors import MartinetError
from martinet.server import presence
from tests import backends
from tests.core import T0, Core


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request) -> str:
    """An empty database on a server backend: SQLite serves one daemon (see the last test)."""
    url = backends.check(request.param)
    backends.reset(url)
    return url


def runs(core: Core, sid: str) -> list[float]:
    items = core.request("list", name="clock", limit=1000)["items"]
    return sorted(datetime.fromisoformat(t["due_at"]).timestamp() for t in items if t["schedule"] == sid)


def test_two_daemons_on_one_database_create_each_run_once(server_url, make_core, caplog):
    fast = {"min_interval": 0.1}  # below the default minimum, 1 s: a quick test
    first = make_core(server_url, **fast)
    sid = first.request("every", name="clock", args={}, every=0.2, timezone="UTC")["id"]
    second = make_core(server_url, **fast)  # it reads the schedule at its first turn
    created = {"first": 0, "second": 0}
    start = first.now
    with caplog.at_level(logging.INFO, logger="martinet"):
        for step in range(1, 23):  # 2.2 s of turns, every 0.1 s; each daemon first for 0.2 s in turn
            order = [("first", first), ("second", second)][:: 1 if step // 2 % 2 else -1]
            for name, core in order:
                core.now = start + step * 0.1
                before = len(caplog.records)
                core.claim()
                created[name] += sum(
                    "schedules created tasks" in r.getMessage() for r in caplog.records[before:]
                )
    dues = runs(first, sid)
    assert len(dues) >= 10 and runs(second, sid) == dues
    assert len(dues) == len(set(dues))  # never two runs for one due time
    assert {round(b - a, 6) for a, b in zip(dues, dues[1:], strict=False)} == {0.2}
    assert created["first"] and created["second"], created  # both made runs: they raced


def test_a_schedule_made_through_one_daemon_runs_on_the_other_when_the_first_is_gone(pg_url, make_core):
    fast = {"min_interval": 0.1}  # (the daemon's own state: the backend makes no difference)
    first, second = make_core(pg_url, **fast), make_core(pg_url, **fast)
    second.claim()  # running already
    sid = first.request("every", name="clock", args={}, every=0.2, timezone="UTC")["id"]
    later = first.submit("clock", run_at=first.now + 0.5)
    first.close()
    for _ in range(40):  # 2 s of the second daemon's turns, heartbeats and ticks included
        second.now += 0.05
        second.claim()
    assert len(runs(second, sid)) >= 5
    assert second.request("get", id=later)["item"]["status"] == "queued"


def test_sqlite_serves_one_daemon_and_a_second_one_is_refused_naming_the_first(sqlite_url, make_core):
    first = make_core(sqlite_url)
    with pytest.raises(
        MartinetError, match=r"another martinet serve \(pid \d+ on .*SQLite serves one daemon"
    ):
        make_core(sqlite_url)
    first.close()
    again = make_core(sqlite_url)  # the first stopped: its row says so
    rows = {row["id"]: row for row in again.request("daemons")["items"]}
    assert rows[first.server.epoch]["state"] == "stopped" and rows[again.server.epoch]["this"]
    assert rows[again.server.epoch]["state"] == "serving"


def test_a_daemon_killed_without_stopping_does_not_hold_the_sqlite_file(sqlite_url, make_core):
    """Its row still looks alive (a fresh heartbeat), but its process is gone from this host."""
    first = make_core(sqlite_url)
    store = first.server.store
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    store.DaemonRow.update(pid=int(gone.stdout)).where(store.DaemonRow.id == first.server.epoch).execute()
    second = make_core(sqlite_url)  # (first is left as a kill -9 leaves it)
    rows = {row["id"]: row for row in second.request("daemons")["items"]}
    assert rows[first.server.epoch]["state"] == "stopped" and rows[second.server.epoch]["state"] == "serving"


def test_daemons_on_one_postgresql_database_are_listed_and_beat(pg_url, make_core):
    first, second = make_core(pg_url), make_core(pg_url)
    listed = first.request("daemons")["items"]
    assert {row["id"] for row in listed} == {first.server.epoch, second.server.epoch}
    assert all(
        row["state"] == "serving" and row["pid"] > 0 and row["address"].startswith("tcp://") for row in listed
    )
    second.now += 10  # its clock runs on; the first's stays: no beat of its own for 10 s
    second.claim()
    state = {row["id"]: row["state"] for row in second.request("daemons")["items"]}
    assert state == {first.server.epoch: "silent", second.server.epoch: "serving"}


def test_what_a_daemon_killed_meanwhile_accepted_runs_on_another(pg_url, make_core):
    """The first daemon accepts a delayed task and a ready one, then is killed (no more turns,
    no stop): the second fires the delayed one within a tick of its due time, while the
    first still looks alive, and takes the ready one once the first has gone silent."""
    first, second = make_core(pg_url), make_core(pg_url)
    second.hello("w", ["clock"], capacity=2)
    second.claim()  # a tick: the first serves
    due = first.now + 0.5
    later, ready = first.submit("clock", run_at=due), first.submit("clock", queue="other")
    leased: dict[int, float] = {}
    while len(leased) < 2:
        second.now += 0.05
        for task in second.claim().get("w", []):
            leased[task["id"]] = second.now
        assert second.now < due + 5, leased
    assert due - 0.1 <= leased[later] <= due + 1.1  # read again at the next tick (leased a little ahead)
    silent_at = T0 + presence.SILENT_AFTER * 1.0  # (heartbeat_interval 1 s)
    assert silent_at < leased[ready] <= silent_at + 1.1


def test_a_wait_whose_time_runs_out_on_a_task_ended_unheard_gets_the_task(sqlite_url, make_core):
    """Ended by a writer this daemon did not hear of (another daemon on MySQL, which has no
    NOTIFY): at the wait's deadline the answer is the ended task, not a timeout."""
    from martinet.protocol import Cmd

    core = make_core(sqlite_url)
    core.hello("w", ["add"])
    tid = core.submit("add")
    core.claim()
    asked = core.turn(client=[(Cmd.REQUEST, {"op": "wait", "rid": "r", "id": tid, "wait_for": 1})])
    assert not [m for m in asked if m[0] == "client"]  # held
    core.store.complete(tid, 1, "w", 2, core.now)  # (no turn of this daemon's)
    core.now += 1.5
    (answer,) = [header for socket, _ident, _cmd, header in core.turn() if socket == "client"]
    assert answer["done"] is True and answer["item"]["status"] == "succeeded"


def test_the_leases_of_a_daemon_gone_silent_end_without_waiting_for_them_to_run_out(pg_url, make_core):
    first, second = make_core(pg_url), make_core(pg_url)
    first.hello("w", ["clock"])
    tid = first.submit("clock")
    assert [t["id"] for t in first.claim()["w"]] == [tid]  # leased by the first, for its worker
    second.claim()  # a tick: the first serves
    # The first is killed with its worker: no more turns, no stop, its lease 30 s long
    while second.request("get", id=tid)["item"]["status"] == "leased":
        second.now += 0.1
        second.claim()
        # silent after SILENT_AFTER heartbeats; its workers get as long again to move
        assert second.now < T0 + 2 * presence.SILENT_AFTER + 1.5, "the lease was not taken over"
    assert second.now > T0 + 2 * presence.SILENT_AFTER - 1.1
    item = second.request("show", id=tid)["item"]
    assert item["status"] == "failed" and item["attempts"][0]["outcome"] == "lost"
    assert f"its daemon {first.server.epoch} stopped or went silent" in item["error"]["message"]


def test_a_daemon_with_room_takes_what_another_accepted_within_a_tick(server_url, make_core):
    """The second daemon has no worker for the task. On PostgreSQL it names the queue to
    the others at once (tests/unit/test_several_daemons.py); should that note be missed,
    and on MySQL, which has none, a daemon whose workers have room looks each tick."""
    first = make_core(server_url)
    first.hello("w", ["add"])
    first.submit("add")
    first.succeed(first.claim()["w"][0]["id"])
    assert first.claim() == {}  # its lanes: the default queue is empty
    second = make_core(server_url)
    second.claim()  # a tick: the first serves
    tid = second.submit("add")
    first.now += 0.5
    assert first.claim() == {}  # (not heard here: the harness takes no notes)
    first.now += 0.6  # its next tick
    assert [t["id"] for t in first.claim()["w"]] == [tid]
