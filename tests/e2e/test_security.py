"""Who may connect, and who a peer is: a real daemon over real sockets, with CURVE keys and
without. Strangers, wrong keys, keys used in another role, plain-text peers and revoked
keys are refused at the handshake (or at their next message); a worker is who its
connection proves it is, never what its message says: a forged outcome, a hello that
takes a connected worker's id, a hello that sets fleet-wide limits change nothing. The
daemon serves the others all along."""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import pytest
import zmq

import martinet
from martinet import protocol
from martinet.errors import DaemonUnavailable, Forbidden
from martinet.keys import ClientKeys, load_pair, new_pair
from martinet.protocol import Cmd
from tests.harness import free_ports, wait_for


class Keys:
    """Key pairs for every role, in role folders as an operator lays them out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for folder in ("daemon", "workers", "clients", "admins", "elsewhere"):
            (root / folder).mkdir(parents=True)
        new_pair("daemon", root / "daemon")
        for name, folder in (("worker", "workers"), ("worker2", "workers"), ("client", "clients"),
                             ("admin", "admins"), ("stranger", "elsewhere")):  # fmt: skip
            public, secret = new_pair(name, root / "private")
            public.rename(root / folder / public.name)  # the daemon's side holds public keys only

    def secret(self, name: str) -> str:
        return str(self.root / "private" / f"{name}.key_secret")

    @property
    def server(self) -> str:
        return str(self.root / "daemon" / "daemon.key")

    def as_(self, name: str) -> dict[str, str]:
        """What a client connects with to act as `name`."""
        return {"key_file": self.secret(name), "server_key": self.server}

    def daemon_flags(self) -> list[str]:
        r = self.root
        return [
            "--server-secret-key", str(r / "daemon" / "daemon.key_secret"),
            "--worker-keys", str(r / "workers"), "--client-keys", str(r / "clients"),
            "--admin-keys", str(r / "admins"),
        ]  # fmt: skip

    def worker_flags(self, name: str = "worker") -> list[str]:
        return ["--key-file", self.secret(name), "--server-key", self.server]

    def client_keys(self, name: str) -> ClientKeys:
        return ClientKeys(
            load_pair(self.secret(name)), load_pair(str(self.root / "daemon" / "daemon.key_secret")).public
        )


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys")


def start(cluster, keys: Keys | None, **daemon) -> martinet.Martinet:
    """The daemon (with keys: every socket CURVE; the test's client an admin) and a worker."""
    if keys is not None:
        cluster.keys = keys.as_("admin")
    cluster.start_daemon(extra=[*(keys.daemon_flags() if keys else []), *daemon.get("extra", [])])
    cluster.start_worker(extra=keys.worker_flags() if keys else [])
    return cluster.client()


def refused(cluster, **keys: str) -> bool:
    """A ping from a client with these keys (none: plain text) gets no answer (a refused
    connection never answers: the timeout only bounds the look)."""
    m = martinet.Martinet.connect(cluster.url, timeout=0.5, **keys)
    try:
        m.ping()
    except DaemonUnavailable:
        return True
    finally:
        m.close()
    return False


class Raw:
    """A peer that speaks the wire by hand: a DEALER on one of the daemon's ports."""

    def __init__(self, port: int, keys: ClientKeys | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self.sock)
        self.sock.connect(f"tcp://127.0.0.1:{port}")

    def send(self, cmd: Cmd, header: dict) -> None:
        self.sock.send_multipart(protocol.encode(cmd, header))

    def receive(self, timeout_ms: int) -> tuple[Cmd, dict] | None:
        if not self.sock.poll(timeout_ms):
            return None
        return protocol.decode(self.sock.recv_multipart())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# ---- who a peer is, with keys and without -------------------------------------------------


@pytest.mark.parametrize("with_keys", [False, True], ids=["plain", "curve"])
def test_forged_outcomes_stolen_ids_and_declared_limits_change_nothing(cluster, tmp_path, keys, with_keys):
    """A peer that may reach the worker and status sockets (without keys, anyone; with keys,
    another worker's key) cannot end a task it does not hold, take a connected worker's id,
    or set fleet-wide limits. The worker that holds the task ends it as its own."""
    m = start(cluster, keys if with_keys else None)
    marker = tmp_path / "started"
    tid = m.execute("sleepy", {"seconds": 3.0, "marker": str(marker)})
    wait_for(marker.exists, timeout=10, what="the task to start")
    holder = m.show(tid)["worker"]  # a worker id is no secret
    peer_keys = keys.client_keys("worker2") if with_keys else None
    status, work = Raw(cluster.status_port, peer_keys), Raw(cluster.worker_port, peer_keys)

    def logged(text: str) -> None:
        wait_for(lambda: text in cluster.daemon.log(), timeout=10, what=text)

    try:
        # A forged outcome and progress for the holder's task, with its id, and with a made-up session
        for session in ({}, {"session": "0" * 32}):
            item = {"id": tid, "attempt": 1, "ok": True, "result": "forged"}
            status.send(Cmd.ENDED, {"worker_id": holder, "ended": [item], **session})
            status.send(
                Cmd.PROGRESS, {"worker_id": holder, "id": tid, "attempt": 1, "progress": 0.99, **session}
            )
        logged("refused a ENDED without the session its worker's welcome gave it")
        logged("refused a ENDED with a session no connected worker holds")
        # A hello under the holder's id, declaring fleet-wide limits
        limits = {"sleepy": {"concurrency": 1}, "add": {"rate": [1, 60.0]}}
        work.send(
            Cmd.HELLO, {"worker_id": holder, "names": ["sleepy", "add"], "capacity": 4, "limits": limits}
        )
        logged(f"refused a hello for worker {holder}")
        assert work.receive(200) is None  # no welcome: the id is taken, and the hello proves nothing
        shown = m.show(tid)
        assert shown["status"] == "running" and shown["progress"] != 0.99
        assert m.task_limits() == []
        (listed,) = m.workers()
        assert listed["id"] == holder and listed["held"] == [tid]
        # The holder ends it as its own, once
        assert m.wait(tid, timeout=10) == "slept"
        assert [(a["worker"], a["outcome"]) for a in m.show(tid)["attempts"]] == [(holder, "succeeded")]
    finally:
        status.close()
        work.close()
    assert "declares limits for sleepy" not in cluster.daemon.log()  # (a refused hello is not read further)


@pytest.mark.parametrize("with_keys", [False, True], ids=["plain", "curve"])
def test_a_hello_declaring_limits_is_welcomed_but_its_limits_are_not_applied(cluster, keys, with_keys):
    if with_keys:
        cluster.keys = keys.as_("admin")
    cluster.start_daemon(extra=keys.daemon_flags() if with_keys else [])
    m = cluster.client()
    m.set_task_limit("add", concurrency=5)
    work = Raw(cluster.worker_port, keys.client_keys("worker2") if with_keys else None)
    try:
        limits = {"add": {"concurrency": 1}, "echo": {"rate": [1, 60.0]}}
        work.send(
            Cmd.HELLO, {"worker_id": "w-limits", "names": ["add", "echo"], "capacity": 2, "limits": limits}
        )
        answer = work.receive(5000)
        assert answer is not None and answer[0] is Cmd.WELCOME
        assert m.task_limits() == [{"name": "add", "concurrency": 5, "rate": None, "running": 0}]
    finally:
        work.close()
    assert "worker w-limits declares limits for add in its code (concurrency 1)" in cluster.daemon.log()


# ---- who may connect: keys and roles ----------------------------------------------------


def test_allowed_keys_run_tasks_end_to_end_and_roles_hold(any_cluster, keys):
    """On every backend: a worker and clients with allowed keys; a client's key submits and
    reads but may not revoke or change queues; an admin's may."""
    cluster = any_cluster
    admin = start(cluster, keys)
    client = cluster.client(**keys.as_("client"))
    assert client.wait(client.execute("add", {"a": 2, "b": 40}), timeout=10) == 42
    later = client.schedule("in 1 hour", "add", {"a": 1, "b": 1})
    assert client.get(later)["status"] == "scheduled"
    for call in (lambda: client.revoke(later), lambda: client.set_queue("default", concurrency=1),
                 lambda: client.set_task_limit("add", concurrency=1), lambda: client.prune("1 day")):  # fmt: skip
        with pytest.raises(Forbidden, match="is an admin's request"):
            call()
    assert client.get(later)["status"] == "scheduled" and admin.task_limits() == []
    admin.revoke(later)
    assert admin.get(later)["status"] == "cancelled"
    assert "keys: every socket is CURVE; allowed: 2 worker key(s), 1 client key(s), 1 admin key(s)" in (
        cluster.daemon.log()
    )


def test_strangers_wrong_roles_and_plain_text_peers_are_refused_and_the_daemon_serves_on(
    cluster, tmp_path, keys
):
    (metrics_port,) = free_ports(1)
    admin = start(cluster, keys, extra=["--metrics", f"127.0.0.1:{metrics_port}"])
    before = admin.count()
    assert refused(cluster)  # plain text against a CURVE daemon
    assert refused(cluster, **keys.as_("stranger"))  # a key nobody allowed
    assert refused(cluster, **keys.as_("worker"))  # a worker's key may not submit
    wrong_server = {**keys.as_("admin"), "server_key": str(keys.root / "elsewhere" / "stranger.key")}
    assert refused(cluster, **wrong_server)  # a client that trusts another daemon's key
    # A client's key saying hello as a worker: refused at the handshake, never welcomed
    work = Raw(cluster.worker_port, keys.client_keys("client"))
    try:
        work.send(Cmd.HELLO, {"worker_id": "intruder", "names": ["add"], "capacity": 4})
        refusal = "is a client's, which may not use the worker socket"
        wait_for(lambda: refusal in cluster.daemon.log(), timeout=10, what="the handshake's refusal")
        assert work.receive(0) is None  # refused at its handshake: no welcome ever comes
    finally:
        work.close()
    assert [w["id"] for w in admin.workers()] != ["intruder"] and len(admin.workers()) == 1
    # Nothing stored, and the daemon still serves the allowed ones
    assert admin.count() == before
    assert admin.wait(admin.execute("add", {"a": 1, "b": 1}), timeout=10) == 2
    log = cluster.daemon.log()
    assert "refused a connection to the client socket: it does not speak CURVE with this daemon's key" in log
    assert "refused a connection to the client socket from 127.0.0.1: its key" in log
    assert "is a worker's, which may not use the client socket" in log
    assert "is a client's, which may not use the worker socket" in log
    assert log.count("not among the allowed keys") == 1  # once per peer address and reason
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for socket_name, reason in (("client", "plain_text"), ("client", "unknown_key"), ("client", "role"),
                                ("worker", "role")):  # fmt: skip
        assert f'martinet_refused_total{{reason="{reason}",socket="{socket_name}"}}' in text, (
            socket_name,
            reason,
        )


def test_a_key_removed_is_refused_after_a_reload_and_one_added_is_taken_without_a_restart(
    cluster, tmp_path, keys
):
    start(cluster, keys)
    client = cluster.client(timeout=1.0, **keys.as_("client"))
    assert client.wait(client.execute("add", {"a": 1, "b": 2}), timeout=10) == 3
    # When the client's key is removed and the daemon told (SIGHUP)
    (keys.root / "clients" / "client.key").rename(keys.root / "elsewhere" / "client.key")
    cluster.daemon.popen.send_signal(signal.SIGHUP)
    # Then its open connection's requests are dropped, and a new one is refused
    wait_for(lambda: refused(cluster, **keys.as_("client")), timeout=10, what="the removed key to be refused")
    with pytest.raises(DaemonUnavailable):
        client.ping()
    # When a key is added, with no signal: the daemon sees the change by itself
    (keys.root / "elsewhere" / "stranger.key").rename(keys.root / "clients" / "stranger.key")
    wait_for(
        lambda: not refused(cluster, **keys.as_("stranger")), timeout=10, what="the added key to be taken"
    )
    log = cluster.daemon.log()
    assert "keys reloaded: 2 worker key(s), 0 client key(s), 1 admin key(s)" in log
    assert "no longer allowed on the client socket" in log


def test_a_secret_key_others_may_read_is_refused(cluster, tmp_path, keys):
    secret = keys.root / "daemon" / "daemon.key_secret"
    os.chmod(secret, 0o644)
    daemon = cluster.start_daemon(extra=keys.daemon_flags(), wait=False)
    assert daemon.popen.wait(20) == 1
    assert f"secret key file {secret} can be read by anyone on this host (mode 644)" in daemon.log()


# ---- without keys: loopback only -----------------------------------------------------------


def test_without_keys_the_daemon_binds_loopback_only_unless_told(cluster, tmp_path):
    daemon = cluster.start_daemon(extra=["--bind", "0.0.0.0"], wait=False)
    assert daemon.popen.wait(20) == 1
    assert "martinet serve will not bind 0.0.0.0 without keys" in daemon.log()
    cluster.start_daemon(extra=["--bind", "0.0.0.0", "--insecure-bind"])
    assert "serving 0.0.0.0 without keys (--insecure-bind)" in cluster.daemon.log()
    assert cluster.client().ping()["database"] is None  # (no failure)


def test_keys_new_writes_a_private_secret_and_refuses_to_replace_it(tmp_path, capsys):
    from martinet import cli

    assert cli.main(["keys", "new", "ci", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    public = load_pair(str(tmp_path / "ci.key_secret")).public.decode()
    assert public in out and public in (tmp_path / "ci.key").read_text()
    assert (tmp_path / "ci.key_secret").stat().st_mode & 0o777 == 0o600
    assert "secret-key" not in (tmp_path / "ci.key").read_text()
    assert cli.main(["keys", "new", "ci", "--dir", str(tmp_path)]) == 1
    assert "ci.key exists already" in capsys.readouterr().err


def test_a_flooding_connection_is_told_to_slow_down_and_the_others_are_served(cluster):
    cluster.start_daemon(env={"MARTINET_PEER_RATE": "100"})
    flood = Raw(cluster.client_port)
    try:
        for i in range(500):
            flood.send(Cmd.REQUEST, {"op": "ping", "rid": f"f{i}"})
        replies = []
        while (answer := flood.receive(2000)) is not None and len(replies) < 500:
            replies.append(answer[1])
        busy = [r for r in replies if not r["ok"]]
        assert len(replies) == 500 and 200 <= len(busy) <= 400  # a second's worth, then its rate
        assert busy[0]["error"]["type"] == "Busy"
        assert cluster.client().ping()["workers"] == 0  # another connection: served
    finally:
        flood.close()
    assert "refused messages over 100 a second from one connection" in cluster.daemon.log()


@pytest.mark.parametrize("with_keys", [False, True], ids=["plain", "curve"])
def test_connections_beyond_max_connections_are_refused_until_some_go(cluster, keys, with_keys):
    """Three sockets' worth of connections at most (here 6): the daemon's own file
    descriptors stay its own, with keys or without."""
    if with_keys:
        cluster.keys = keys.as_("admin")
    env = {"MARTINET_MAX_CONNECTIONS": "6"}  # (set: bounded on loopback without keys too)
    cluster.start_daemon(env=env, extra=keys.daemon_flags() if with_keys else [])
    held = [cluster.client(timeout=2.0) for _ in range(6)]
    for m in held:
        m.ping()  # six connections open
    assert refused(cluster, **cluster.keys)  # a seventh is refused at its handshake
    held[0].close()
    held[1].close()  # two go: there is room again
    wait_for(lambda: not refused(cluster, **cluster.keys), timeout=10, what="room for a connection")
    assert "refused a connection to the client socket from 127.0.0.1: 6 connections are open" in (
        cluster.daemon.log()
    )


def test_the_cli_takes_its_keys_from_flags_or_the_environment(cluster, keys, capsys, monkeypatch):
    from martinet import cli

    start(cluster, keys)
    flags = ["--url", cluster.url, "--timeout", "2"]
    assert cli.main(["ping", *flags, "--key-file", keys.secret("admin"), "--server-key", keys.server]) == 0
    assert "1 worker(s) connected" in capsys.readouterr().out
    assert cli.main(["ping", *flags]) == 1  # no keys: no answer
    assert "no answer from the martinet daemon" in capsys.readouterr().err
    monkeypatch.setenv("MARTINET_KEY_FILE", keys.secret("client"))
    monkeypatch.setenv("MARTINET_SERVER_KEY", keys.server)
    assert cli.main(["queues", "pause", "default", *flags]) == 1  # a client's key: not an admin's request
    assert "pause_queue is an admin's request" in capsys.readouterr().err
    assert cli.main(["limits", *flags]) == 0
