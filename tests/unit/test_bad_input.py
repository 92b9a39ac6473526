"""Bad input gets a clear, specific error, in process: a missing driver, an embedded daemon's
port clash, bad requests through the API, the CLI (cli.main) and raw frames (an embedded
daemon, tests/live.py), deep frames in one turn of the core (tests/core.py). Garbage on the
sockets of a real daemon, and a second one on its ports, are tests/e2e/test_bad_input.py."""

from __future__ import annotations

import logging
import sys
import time

import pytest
import zmq

import martinet
from martinet import cli, protocol
from martinet.protocol import Cmd
from martinet.server.events import MALFORMED_LOGGED_PER_SECOND
from tests.harness import free_ports


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://nobody@127.0.0.1:1/none", "psycopg2", "postgres"),
        ("postgres://nobody@127.0.0.1:1/none", "psycopg2", "postgres"),
        ("mysql://root@127.0.0.1:1/none", "pymysql", "mysql"),
        ("mariadb://root@127.0.0.1:1/none", "pymysql", "mysql"),
    ],
)
def test_a_missing_database_driver_names_the_extra_to_install(monkeypatch, url, module, extra):
    from martinet.errors import StoreError
    from martinet.store import open_database

    monkeypatch.setitem(sys.modules, module, None)  # `import psycopg2` raises ImportError
    with pytest.raises(StoreError) as info:
        open_database(url)
    assert str(info.value) == (
        f"the {url.split(':')[0]} driver ({module}) is not installed: pip install 'martinet[{extra}]'"
    )


def test_an_embedded_daemons_port_clash_names_the_python_argument(tmp_path):
    ctx = zmq.Context()
    busy = ctx.socket(zmq.ROUTER)
    busy.setsockopt(zmq.LINGER, 0)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(martinet.MartinetError) as info:
            martinet.Martinet(
                db=f"sqlite:///{tmp_path / 'm.db'}", client_port=0, worker_port=port, status_port=0
            )
    finally:
        busy.close(0)
        ctx.term()
    message = str(info.value)
    assert f"the worker port {port} on 127.0.0.1 is already in use" in message
    assert "Martinet(db=..., worker_port=N)" in message and "--worker-port" not in message


# ---- through the API, the CLI and raw requests -------------


def raw_request(live, header: dict) -> dict:
    """Send a request straight to the daemon, bypassing the client's own checks."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(live.url)
    try:
        sock.send_multipart(protocol.encode(Cmd.REQUEST, {"rid": "raw", **header}))
        assert sock.poll(5000), "the daemon did not answer"
        cmd, reply = protocol.decode(sock.recv_multipart())
        assert cmd is Cmd.REPLY
        return reply
    finally:
        sock.close()
        ctx.term()


def test_unreadable_time(live, sh):
    m = live.m
    with pytest.raises(martinet.BadTime, match="could not read 'in twenty flurbs' as a time"):
        m.schedule("in twenty flurbs", "echo", {})
    with pytest.raises(martinet.BadSchedule, match="every blue moon"):
        m.every("every blue moon", "echo", {})
    code, _out, err = sh.run("schedule", "in twenty flurbs", "echo")
    assert code == 1
    assert err.strip() == "martinet: error: could not read 'in twenty flurbs' as a time"
    assert m.list() == []  # nothing was created


def test_args_that_are_not_a_json_object(live, sh):
    with pytest.raises(martinet.BadInput, match="args must be a JSON object"):
        live.m.execute("echo", [1, 2])
    for text, expected in (("[1, 2]", "must be a JSON object"), ("{nope", "not valid JSON")):
        code, _out, err = sh.run("execute", "echo", "--args", text)
        assert code == 1 and expected in err and "Traceback" not in err
    reply = raw_request(live, {"op": "execute", "name": "echo", "args": "a string"})
    assert reply["ok"] is False and reply["error"]["type"] == "BadInput"
    assert "args must be a JSON object" in reply["error"]["message"]


def test_empty_or_overlong_names(live, sh):
    m = live.m
    with pytest.raises(martinet.BadInput, match="non-empty"):
        m.execute("", {})
    with pytest.raises(martinet.BadInput, match="over the limit of 200"):
        m.execute("x" * 201, {})
    for name in ("", "   ", "y" * 500, 42, None):
        reply = raw_request(live, {"op": "execute", "name": name})
        assert reply["ok"] is False and reply["error"]["type"] == "BadInput", reply
    code, _out, err = sh.run("execute", "z" * 300)
    assert code == 1 and "over the limit of 200 (max_name_length)" in err
    assert m.list() == []


def test_payload_over_the_limit(make_live, sqlite_url):
    m = make_live(sqlite_url, max_payload=1000).client()  # a client of its own: the default limit
    with pytest.raises(martinet.BadInput, match="over the limit of 1000"):
        m.execute("echo", {"blob": "x" * 2000})  # passes the client's 1 MiB limit, not the daemon's
    with pytest.raises(martinet.BadInput, match="over the limit of 1048576"):
        m.execute("echo", {"blob": "x" * 1_100_000})  # refused before it leaves the client
    assert m.execute("echo", {"blob": "small"}) > 0  # the daemon is fine


def test_daemon_that_does_not_answer(capsys):
    (port,) = free_ports(1)
    m = martinet.Martinet.connect(f"tcp://127.0.0.1:{port}", timeout=0.5)
    try:
        with pytest.raises(martinet.DaemonUnavailable, match="no answer .* within 0.5s"):
            m.execute("echo", {})
    finally:
        m.close()
    assert cli.main(["list", "--url", f"tcp://127.0.0.1:{port}", "--timeout", "0.5"]) == 1
    assert "no answer from the martinet daemon" in capsys.readouterr().err


def test_unknown_request_gets_a_clear_error(live):
    reply = raw_request(live, {"op": "explode"})
    assert reply == {
        "ok": False,
        "rid": "raw",
        "error": {"type": "BadInput", "message": "unknown request 'explode'"},
    }
    reply = raw_request(live, {"op": "get", "id": "nonsense"})
    assert reply["error"] == {
        "type": "TaskNotFound",
        "message": "no task or schedule with the id or key 'nonsense'",
    }


def test_bad_database_url_is_a_clear_error(tmp_path, capsys):
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
        argv = [
            "serve",
            "--db",
            url,
            "--client-port",
            ports[0],
            "--worker-port",
            ports[1],
            "--status-port",
            ports[2],
        ]
        assert cli.main(argv) == 1, url  # `martinet serve`, refused before it binds or serves
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err


DEEP = b"[" * 1000 + b"]" * 1000  # 2 KB that made json.loads raise RecursionError


def deep_frame(cmd: Cmd, head: bytes) -> list[bytes]:
    return [protocol.PREFIX + bytes([cmd]) + b"{" + head + b'"a":' + DEEP + b"}"]


def test_a_deeply_nested_request_gets_a_clear_error(live):
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(live.url)
        sock.send_multipart(deep_frame(Cmd.REQUEST, b'"op":"get","rid":"deep-1",'))
        assert sock.poll(5000), "no REPLY within 5s"
        cmd, reply = protocol.decode(sock.recv_multipart())
        assert cmd is Cmd.REPLY and reply["rid"] == "deep-1" and reply["ok"] is False
        assert reply["error"]["type"] == "BadInput"
        assert f"more than {protocol.MAX_DEPTH} levels deep (the limit)" in reply["error"]["message"]
    finally:
        ctx.destroy(linger=0)
    m = live.client(timeout=5)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    started = time.monotonic()
    with pytest.raises(martinet.BadInput, match="levels deep"):  # a refusal, not a timeout
        m.client.request("get", {"id": deep})
    assert time.monotonic() - started < 1.5  # answered, not resent (exchange.FIRST_TRY)
    with pytest.raises(martinet.BadInput, match=f"more than {protocol.MAX_VALUE_DEPTH} levels deep"):
        m.execute("echo", {"a": deep})  # refused by the client's own check
    args: dict = {}
    for _ in range(protocol.MAX_VALUE_DEPTH):
        args = {"a": args}
    reply = raw_request(live, {"op": "execute", "name": "echo", "args": args})  # and by the daemon's
    assert reply["ok"] is False and "levels deep" in reply["error"]["message"]
    assert m.list() == [] and m.ping()["ok"]  # the daemon still serves


def sent(turn: list, cmd: Cmd) -> list[dict]:
    return [h for _socket, _ident, c, h in turn if c is cmd]


def test_a_deep_frame_on_the_status_socket_costs_only_itself(sqlite_url, make_core, caplog):
    """Given a task leased to a worker, when a deep frame comes in the same turn as that
    worker's result and another client's request, the frame alone is dropped."""
    core = make_core(sqlite_url)
    core.hello("raw", ["echo"], capacity=1)
    tid = core.submit("echo", args={"x": 1})
    ((task,),) = core.claim().values()
    assert task["id"] == tid
    done = {"worker_id": "raw", "id": tid, "attempt": task["attempt"], "result": "fine"}
    with caplog.at_level(logging.WARNING):
        out = core.turn(
            status=[deep_frame(Cmd.DONE, b'"worker_id":"raw",'), (Cmd.DONE, done),
                    deep_frame(Cmd.ENDED, b'"worker_id":"raw",')],
            client=[(Cmd.REQUEST, {"op": "execute", "rid": "good", "name": "echo"})],
        )  # fmt: skip
    assert [h["acks"] for h in sent(out, Cmd.ACK)] == [[[tid, task["attempt"]]]]
    (reply,) = sent(out, Cmd.REPLY)
    assert reply["rid"] == "good" and reply["ok"] is True
    info = core.request("get", id=tid)["item"]
    assert info["status"] == "succeeded" and info["result"] == "fine"
    assert core.request("get", id=reply["id"])["item"]["name"] == "echo"  # committed
    assert caplog.text.count("levels deep (the limit)") == 2 and "Traceback" not in caplog.text


def test_a_flood_of_deep_frames_is_logged_at_a_bounded_rate(sqlite_url, make_core, caplog):
    core = make_core(sqlite_url)
    flood = 200
    with caplog.at_level(logging.WARNING):
        out = core.turn(
            client=[deep_frame(Cmd.REQUEST, b'"op":"get","rid":"r%d",' % i) for i in range(flood)],
            status=[deep_frame(Cmd.PROGRESS, b'"worker_id":"raw",') for _ in range(flood)],
            worker=[(b"raw", deep_frame(Cmd.HELLO, b'"worker_id":"raw",')) for _ in range(flood)],
        )
        assert {h["rid"] for h in sent(out, Cmd.REPLY)} == {f"r{i}" for i in range(flood)}  # each told why
        core.now += 1.5  # the next second's turn sums up what went unlogged
        core.turn()
    assert "more malformed messages (not each logged)" in caplog.text
    assert core.request("ping")["ok"]
    log = caplog.text
    # At most MALFORMED_LOGGED_PER_SECOND lines a second (the turn may span two), then a summary.
    assert log.count("dropped a malformed frame") <= 2 * MALFORMED_LOGGED_PER_SECOND
    assert "Traceback" not in log and len(log) < 2 * MALFORMED_LOGGED_PER_SECOND * 400 + 10_000
