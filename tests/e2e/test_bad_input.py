"""Bad input gets a clear, specific error; the daemon keeps running and loses nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import zmq

import martinet
from martinet import protocol
from martinet.protocol import Cmd
from martinet.server.events import MALFORMED_LOGGED_PER_SECOND
from tests.harness import ROOT, free_ports, wait_for


def cli(cluster, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    return subprocess.run(
        [sys.executable, "-m", "martinet", *args, "--url", cluster.url, "--timeout", "5"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout,
    )  # fmt: skip


def raw_request(cluster, header: dict) -> dict:
    """Send a request straight to the daemon, bypassing the client's own checks."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.url)
    try:
        sock.send_multipart(protocol.encode(Cmd.REQUEST, {"rid": "raw", **header}))
        assert sock.poll(5000), "the daemon did not answer"
        cmd, reply = protocol.decode(sock.recv_multipart())
        assert cmd is Cmd.REPLY
        return reply
    finally:
        sock.close()
        ctx.term()


def test_unreadable_time(cluster):
    cluster.start_daemon()
    m = cluster.client()
    with pytest.raises(martinet.BadTime, match="could not read 'in twenty flurbs' as a time"):
        m.schedule("in twenty flurbs", "echo", {})
    with pytest.raises(martinet.BadSchedule, match="every blue moon"):
        m.every("every blue moon", "echo", {})
    out = cli(cluster, "schedule", "in twenty flurbs", "echo")
    assert out.returncode == 1
    assert out.stderr.strip() == "martinet: error: could not read 'in twenty flurbs' as a time"
    assert m.list() == []  # nothing was created


def test_args_that_are_not_a_json_object(cluster):
    cluster.start_daemon()
    m = cluster.client()
    with pytest.raises(martinet.BadInput, match="args must be a JSON object"):
        m.execute("echo", [1, 2])
    for text, expected in (("[1, 2]", "must be a JSON object"), ("{nope", "not valid JSON")):
        out = cli(cluster, "execute", "echo", "--args", text)
        assert out.returncode == 1 and expected in out.stderr and "Traceback" not in out.stderr
    reply = raw_request(cluster, {"op": "execute", "name": "echo", "args": "a string"})
    assert reply["ok"] is False and reply["error"]["type"] == "BadInput"
    assert "args must be a JSON object" in reply["error"]["message"]


def test_empty_or_overlong_names(cluster):
    cluster.start_daemon()
    m = cluster.client()
    with pytest.raises(martinet.BadInput, match="non-empty"):
        m.execute("", {})
    with pytest.raises(martinet.BadInput, match="over the limit of 200"):
        m.execute("x" * 201, {})
    for name in ("", "   ", "y" * 500, 42, None):
        reply = raw_request(cluster, {"op": "execute", "name": name})
        assert reply["ok"] is False and reply["error"]["type"] == "BadInput", reply
    out = cli(cluster, "execute", "z" * 300)
    assert out.returncode == 1 and "over the limit of 200 (max_name_length)" in out.stderr
    assert m.list() == []


def test_payload_over_the_limit(cluster):
    cluster.start_daemon(env={"MARTINET_MAX_PAYLOAD": "1000"})
    m = cluster.client()
    with pytest.raises(martinet.BadInput, match="over the limit of 1000"):
        m.execute("echo", {"blob": "x" * 2000})  # passes the client's 1 MiB limit, not the daemon's
    with pytest.raises(martinet.BadInput, match="over the limit of 1048576"):
        m.execute("echo", {"blob": "x" * 1_100_000})  # refused before it leaves the client
    assert m.execute("echo", {"blob": "small"}) > 0  # the daemon is fine


def test_daemon_that_does_not_answer(tmp_path):
    (port,) = free_ports(1)
    m = martinet.Martinet.connect(f"tcp://127.0.0.1:{port}", timeout=0.5)
    try:
        with pytest.raises(martinet.DaemonUnavailable, match="no answer .* within 0.5s"):
            m.execute("echo", {})
    finally:
        m.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    out = subprocess.run(
        [sys.executable, "-m", "martinet", "list", "--url", f"tcp://127.0.0.1:{port}", "--timeout", "0.5"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and "no answer from the martinet daemon" in out.stderr


def test_garbage_on_every_port(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    ports = (cluster.client_port, cluster.worker_port, cluster.status_port)
    for port in ports:  # raw bytes that are not even ZMTP
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(os.urandom(4096))
            s.sendall(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")
    ctx = zmq.Context()
    try:
        for port in ports:  # well-formed ZeroMQ, malformed martinet
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 2000)  # deliver all of it before closing
            sock.connect(f"tcp://127.0.0.1:{port}")
            for frames in (
                [b"junk"],
                [b"MRTN\x02\x01{not json"],
                [b"MRTN\x09\x01{}"],  # a protocol version we do not speak
                [b"MRTN\x01", b"\x01", b"{}"],  # version 1's three frames
                [b"MRTN\x02\x7f{}"],  # an unknown command
                [b"MRTN\x02\x01[1, 2]"],
                protocol.encode(Cmd.DONE, {"worker_id": "nobody", "id": 1, "attempt": 1, "result": "forged"}),
                protocol.encode(Cmd.HELLO, {"worker_id": 7, "names": "all", "capacity": -1}),
                protocol.encode(Cmd.REQUEST, {"op": "no_such_op", "rid": "x"}),
                protocol.encode(Cmd.HEARTBEAT, {}),
            ):
                sock.send_multipart(frames)
            sock.close()
    finally:
        ctx.term()
    tid = m.execute("add", {"a": 1, "b": 1})
    assert m.wait(tid, timeout=10) == 2
    assert m.get(tid)["result"] == 2  # the forged DONE changed nothing
    for expected in ("dropped a malformed frame", "not supported", "refused a malformed hello"):
        wait_for(lambda e=expected: e in cluster.daemon.log(), timeout=10, what=expected)
    assert cluster.daemon.alive()


def test_unknown_request_gets_a_clear_error(cluster):
    cluster.start_daemon()
    reply = raw_request(cluster, {"op": "explode"})
    assert reply == {
        "ok": False,
        "rid": "raw",
        "error": {"type": "BadInput", "message": "unknown request 'explode'"},
    }
    reply = raw_request(cluster, {"op": "get", "id": "nonsense"})
    assert reply["error"] == {
        "type": "TaskNotFound",
        "message": "no task or schedule with the id or key 'nonsense'",
    }


def test_second_daemon_on_ports_in_use(cluster):
    cluster.start_daemon()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    out = subprocess.run(
        [sys.executable, "-m", "martinet", "serve", "--db", cluster.db_url, *cluster.port_flags()],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"the client port {cluster.client_port} on 127.0.0.1 is already in use" in out.stderr
    assert "Traceback" not in out.stderr
    assert cluster.client().ping()["ok"]  # the first one is untouched


def test_bad_database_url_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    ports = [str(p) for p in free_ports(3)]
    for url, expected in (
        ("sqlite://", "names no file"),
        (
            f"sqlite:///{tmp_path}/m.db?synchronous=sometimes",
            "the only option is ?synchronous=normal|full|extra",
        ),
        (f"sqlite:///{tmp_path}/m.db?journal=off", "the only option is ?synchronous=normal|full|extra"),
        ("postgresql://nobody@127.0.0.1:1/none", "cannot open database"),
        ("oracle://x/y", "cannot"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "martinet", "serve", "--db", url,
             "--client-port", ports[0], "--worker-port", ports[1], "--status-port", ports[2]],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=30,
        )  # fmt: skip
        assert out.returncode == 1, out.stderr
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr


# ---- deeply nested JSON ---------------------------------------------------------------

DEEP = b"[" * 1000 + b"]" * 1000  # 2 KB that made json.loads raise RecursionError


def deep_frame(cmd: Cmd, head: bytes) -> list[bytes]:
    return [protocol.PREFIX + bytes([cmd]) + b"{" + head + b'"a":' + DEEP + b"}"]


@contextmanager
def paused(proc):
    """The daemon stopped while the test fills its sockets, so that one turn reads it all."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
        time.sleep(0.2)  # what was sent is on its way in
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def recv(sock: zmq.Socket, cmd: Cmd) -> dict:
    assert sock.poll(5000), f"no {cmd.name} within 5s"
    got, header = protocol.decode(sock.recv_multipart())
    assert got is cmd, (got, header)
    return header


def dealer(ctx: zmq.Context, port: int) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def test_a_deeply_nested_request_gets_a_clear_error(cluster):
    cluster.start_daemon()
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, cluster.client_port)
        sock.send_multipart(deep_frame(Cmd.REQUEST, b'"op":"get","rid":"deep-1",'))
        reply = recv(sock, Cmd.REPLY)
        assert reply["rid"] == "deep-1" and reply["ok"] is False
        assert reply["error"]["type"] == "BadInput"
        assert f"more than {protocol.MAX_DEPTH} levels deep (the limit)" in reply["error"]["message"]
    finally:
        ctx.destroy(linger=0)
    m = cluster.client(timeout=5)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    started = time.monotonic()
    with pytest.raises(martinet.BadInput, match="levels deep"):  # a refusal, not a timeout
        m.client.request("get", {"id": deep})
    assert time.monotonic() - started < 1.5  # answered, not resent (client.FIRST_TRY)
    with pytest.raises(martinet.BadInput, match=f"more than {protocol.MAX_VALUE_DEPTH} levels deep"):
        m.execute("echo", {"a": deep})  # refused by the client's own check
    args: dict = {}
    for _ in range(protocol.MAX_VALUE_DEPTH):
        args = {"a": args}
    reply = raw_request(cluster, {"op": "execute", "name": "echo", "args": args})  # and by the daemon's
    assert reply["ok"] is False and "levels deep" in reply["error"]["message"]
    assert m.list() == [] and cluster.daemon.alive()


def test_a_deep_frame_on_the_status_socket_costs_only_itself(cluster):
    """Given a task leased to a worker, when a deep frame comes in the same turn as that
    worker's result and another client's request, the frame alone is dropped."""
    daemon = cluster.start_daemon()
    m = cluster.client()
    ctx = zmq.Context()
    try:
        wsock = dealer(ctx, cluster.worker_port)
        wsock.send_multipart(
            protocol.encode(Cmd.HELLO, {"worker_id": "raw", "names": ["echo"], "capacity": 1})
        )
        recv(wsock, Cmd.WELCOME)
        tid = m.execute("echo", {"x": 1})
        (task,) = recv(wsock, Cmd.TASK)["tasks"]
        assert task["id"] == tid
        ssock, csock = dealer(ctx, cluster.status_port), dealer(ctx, cluster.client_port)
        with paused(daemon):
            ssock.send_multipart(deep_frame(Cmd.DONE, b'"worker_id":"raw",'))
            done = {"worker_id": "raw", "id": tid, "attempt": task["attempt"], "result": "fine"}
            ssock.send_multipart(protocol.encode(Cmd.DONE, done))
            ssock.send_multipart(deep_frame(Cmd.ENDED, b'"worker_id":"raw",'))
            csock.send_multipart(
                protocol.encode(Cmd.REQUEST, {"op": "execute", "rid": "good", "name": "echo"})
            )
        assert recv(ssock, Cmd.ACK)["acks"] == [[tid, task["attempt"]]]
        reply = recv(csock, Cmd.REPLY)
        assert reply["rid"] == "good" and reply["ok"] is True
    finally:
        ctx.destroy(linger=0)
    assert m.get(tid)["status"] == "succeeded" and m.get(tid)["result"] == "fine"
    assert m.get(reply["id"])["name"] == "echo"  # committed (the raw worker may hold it by now)
    log = cluster.daemon.log()
    assert log.count("levels deep (the limit)") == 2 and "Traceback" not in log


def test_a_flood_of_deep_frames_is_logged_at_a_bounded_rate(cluster):
    daemon = cluster.start_daemon()
    m = cluster.client()
    flood = 200
    ctx = zmq.Context()
    try:
        csock, ssock = dealer(ctx, cluster.client_port), dealer(ctx, cluster.status_port)
        wsock = dealer(ctx, cluster.worker_port)
        with paused(daemon):
            for i in range(flood):
                csock.send_multipart(deep_frame(Cmd.REQUEST, b'"op":"get","rid":"r%d",' % i))
                ssock.send_multipart(deep_frame(Cmd.PROGRESS, b'"worker_id":"raw",'))
                wsock.send_multipart(deep_frame(Cmd.HELLO, b'"worker_id":"raw",'))
        rids = {recv(csock, Cmd.REPLY)["rid"] for _ in range(flood)}  # each sender told why
        assert rids == {f"r{i}" for i in range(flood)}
    finally:
        ctx.destroy(linger=0)
    summary = "more malformed messages (not each logged)"
    wait_for(lambda: summary in cluster.daemon.log(), timeout=10, what="the summary line")
    assert m.ping()["ok"]
    log = cluster.daemon.log()
    # At most MALFORMED_LOGGED_PER_SECOND lines a second (the turn may span two), then a summary.
    assert log.count("dropped a malformed frame") <= 2 * MALFORMED_LOGGED_PER_SECOND
    assert "Traceback" not in log and len(log) < 2 * MALFORMED_LOGGED_PER_SECOND * 400 + 10_000
