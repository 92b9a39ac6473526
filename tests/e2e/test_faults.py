"""Fault injection with real processes, and hostile input on every socket."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import time
from pathlib import Path

import pytest
import zmq

from martinet import protocol
from martinet.protocol import Cmd
from tests.harness import ROOT, wait_for

spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
chaos = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chaos)


def test_nothing_accepted_is_lost_while_daemon_and_workers_are_killed(tmp_path, db_url, capsys):
    # Kills the daemon twice, a worker once and cuts one off, while 200 tasks arrive.
    result = chaos.run_chaos(tasks=200, kills=4, duration=6, db=db_url, workdir=tmp_path, say=lambda s: None)
    with capsys.disabled():
        print(f"\nchaos on {db_url.split(':')[0]}: {json.dumps(result)}")
    assert result["faults"] == {"kill_daemon": 2, "kill_worker": 1, "cut_off_worker": 1}
    assert result["accepted"] == result["unique_ids"] == 200  # a retried submit never created twice
    assert result["lost"] == 0 and result["never_ran"] == 0
    assert result["completed"] == 200


def _children_alive() -> list[int]:
    """Processes this one started that are still running (not zombies)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.parametrize("mix", ["limited", "pauses", "silent"])
def test_each_new_chaos_mix_ends_bounded_and_reports(mix, tmp_path, capsys):
    # A tiny run of the mix on SQLite: the script ends within its bounds, stops what it
    # started, and the daemon passes: no hang (limits), no worker blamed for the daemon's
    # pauses, no task held by a silent worker; nothing lost.
    args = chaos.parser().parse_args(
        ["--tasks", "40", "--duration", "1.5", "--pauses", "2", "--hang-after", "2", "--settle", "5"]
    )
    started = time.monotonic()
    (result,) = chaos.run_mixes(args, [mix], tmp_path, say=lambda s: None)
    with capsys.disabled():
        print(f"\nchaos {mix}: {json.dumps(result)}")
    assert time.monotonic() - started < 40
    assert _children_alive() == []
    assert result["mix"] == mix and result["lost"] == 0 and result["accepted"] == result["unique_ids"]
    assert result["longest_gap"] is not None and result["longest_unplanned_gap"] <= result["longest_gap"]
    assert result["failures"] == []
    assert result["completed"] == result["accepted"] > 0


def test_daemons_killed_and_frozen_on_one_postgresql_lose_nothing(pg_url, tmp_path, capsys):
    # Given three daemons on one PostgreSQL, two workers (so one daemon has none) and a
    # client given all, and a schedule every second: the client's daemon is killed -9
    # twice and frozen once while 150 tasks arrive. Every accepted task completes, each
    # due time runs once, and each kill has its failover figures. (Two daemons:
    # tests/e2e/test_several_daemons.py.)
    args = chaos.parser().parse_args(
        ["--daemons", "3", "--tasks", "150", "--duration", "12", "--kills", "2", "--db", pg_url]
    )
    started = time.monotonic()
    (result,) = chaos.run_mixes(args, ["daemons"], tmp_path, say=lambda s: None)
    with capsys.disabled():
        print(f"\nchaos daemons: {json.dumps(result)}")
    assert time.monotonic() - started < 40
    assert _children_alive() == []
    assert result["faults"] == {"kill": 2, "freeze": 1}
    assert result["accepted"] == result["unique_ids"] == result["completed"] == 150
    assert result["failures"] == []  # nothing lost, all completed, no due time ran twice
    assert result["schedule"]["due_times"] > 0 and set(result["schedule"]["runs_per_due_time"]) == {1}
    assert result["failover"]["client_call"]["n"] == result["failover"]["first_start"]["n"] == 2
    assert sum(result["duplicated_by_cause"].values()) == result["duplicated"]


def test_the_daemons_mix_asks_for_postgresql():
    args = chaos.parser().parse_args(["--daemons", "2"])
    assert "needs a PostgreSQL --db" in chaos.daemons_problem(args)
    with pytest.raises(ValueError, match="SQLite serves one daemon"):
        chaos.run_daemons(args, Path("/nonexistent"))


def _mutations(rng: random.Random) -> list[list[bytes]]:
    valid = [
        protocol.encode(Cmd.REQUEST, {"op": "get", "id": 1, "rid": "r"}),
        protocol.encode(Cmd.HELLO, {"worker_id": "w", "names": ["add"], "capacity": 1, "running": []}),
        protocol.encode(Cmd.DONE, {"worker_id": "w", "id": 1, "attempt": 1, "result": 1}),
        protocol.encode(
            Cmd.ENDED,
            {
                "worker_id": "w",
                "ended": [
                    {"id": 1, "attempt": 1, "ok": True},
                    {"id": 2, "attempt": 1, "ok": False, "error": {"type": "E"}},
                ],
            },
        ),  # fmt: skip
        protocol.encode(Cmd.PROGRESS, {"worker_id": "w", "id": 1, "attempt": 1, "progress": 0.5}),
        protocol.encode(Cmd.REJECT, {"id": 1, "attempt": 1}),
    ]
    weird_values = [None, -1, 2**70, 1.5, "x" * 300, [], {}, {"a": [1, {"b": None}]}, True, "\u0000"]
    out = []
    for _ in range(600):
        frames = [bytearray(f) for f in rng.choice(valid)]
        kind = rng.randrange(6)
        if kind == 0:  # flip bytes anywhere
            for _ in range(rng.randint(1, 4)):
                f = rng.choice(frames)
                if f:
                    f[rng.randrange(len(f))] = rng.randrange(256)
        elif kind == 1:  # cut the message short
            frames = [frames[0][: rng.randrange(len(frames[0]) + 1)]]
        elif kind == 2:  # replace header values with values of the wrong type
            header = json.loads(bytes(frames[0][6:]))
            for key in list(header):
                if rng.random() < 0.5:
                    header[key] = rng.choice(weird_values)
            frames[0] = frames[0][:6] + json.dumps(header).encode()
        elif kind == 3:  # random bytes
            frames = [bytearray(rng.randbytes(rng.randint(0, 64))) for _ in range(rng.randint(1, 5))]
        elif kind == 4:  # extra frames
            frames += [bytearray(rng.randbytes(8))]
        else:  # an unknown command byte
            frames[0][5] = rng.randrange(256)
        out.append([bytes(f) for f in frames])
    return out


def test_fuzzed_frames_on_every_socket_change_nothing(any_cluster):
    cluster = any_cluster
    cluster.start_daemon()
    cluster.start_worker(worker_id="w")
    m = cluster.client()
    done = m.execute("add", {"a": 1, "b": 2})
    assert m.wait(done, timeout=10) == 3
    waiting = m.schedule("in 1 hour", "add", {"a": 0, "b": 0})
    before = (m.get(done), m.get(waiting))
    rng = random.Random(20261123)
    ctx = zmq.Context()
    try:
        for port in (cluster.client_port, cluster.worker_port, cluster.status_port):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 2000)  # deliver all of it before closing, and never wait longer
            sock.connect(f"tcp://127.0.0.1:{port}")
            for frames in _mutations(rng) + _mutations(rng):
                sock.send_multipart(frames)
            sock.send_multipart([b"\x00" * (3 * 1024 * 1024)])  # over MAXMSGSIZE: the peer is cut off
            sock.close()
    finally:
        ctx.destroy(linger=0)  # also closes a socket an error left open, instead of hanging
    assert cluster.daemon.alive()
    assert (m.get(done), m.get(waiting)) == before  # no task changed state wrongly
    assert m.wait(m.execute("add", {"a": 20, "b": 22}), timeout=10) == 42  # and it still works
    log = cluster.daemon.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


def test_a_flood_of_hellos_is_forgotten(cluster):
    cluster.start_daemon(env={"MARTINET_HEARTBEAT_INTERVAL": "0.2"})
    m = cluster.client()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.RCVHWM, 0)  # every WELCOME fits: none is dropped at the daemon's side
        sock.connect(f"tcp://127.0.0.1:{cluster.worker_port}")
        for i in range(2000):
            sock.send_multipart(
                protocol.encode(Cmd.HELLO, {"worker_id": f"fake-{i}", "names": ["add"], "capacity": 1})
            )
        # Each hello is answered with a WELCOME once its peer is registered. (Polling ping for
        # them raced the liveness window: on a loaded machine one turn could take longer than
        # 3 heartbeat intervals to register 2,000 peers, and the next turn dropped them all.)
        welcomed, deadline = 0, time.monotonic() + 30  # bounded generously for a loaded machine
        while welcomed < 2000 and sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            welcomed += protocol.decode(sock.recv_multipart())[0] is Cmd.WELCOME
        assert welcomed == 2000, f"{welcomed} of 2,000 hellos were welcomed in 30 s"
    finally:
        sock.close(linger=0)  # also when the wait fails: an open socket would hang term() for ever
        ctx.term()
    # Silent peers are dropped after a few heartbeat intervals: memory does not keep them.
    wait_for(lambda: m.ping()["workers"] == 0, timeout=30, what="the fake workers to be forgotten")
    assert cluster.daemon.alive()
