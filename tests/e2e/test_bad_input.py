"""Garbage on a real daemon's ports, and a second daemon on them: it keeps running and loses
nothing. (Bad requests, frames and settings, in process: tests/unit/test_bad_input.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import zmq

from martinet import protocol
from martinet.protocol import Cmd
from tests.harness import ROOT, wait_for


def test_garbage_on_every_port(cluster):
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client()
    ports = (cluster.client_port, cluster.worker_port, cluster.status_port)
    for port in ports:  # raw bytes that are not even ZMTP
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                s.sendall(os.urandom(4096))
                s.sendall(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")
            except (ConnectionResetError, BrokenPipeError):
                pass  # ZeroMQ closed the connection at the first bad byte: what it should do
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
