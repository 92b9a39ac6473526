"""Bad input gets a clear, specific error; the daemon keeps running and loses nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import zmq

import martinet
from martinet import protocol
from martinet.protocol import Cmd
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
