"""The client's requests in flight, against a scripted daemon (a real ROUTER socket on
a free port, in a thread): order, resends on a fresh socket, and stopping after a refusal."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import zmq

from martinet import client as client_module
from martinet import protocol
from martinet.client import Client
from martinet.errors import BadInput, ProtocolError
from martinet.protocol import Cmd
from tests.harness import free_ports


class ScriptedDaemon:
    """Answers each request {"ok": True, "echo": rid}, except that it ignores the first
    copy of the rids in `drop`, refuses those in `refuse` and answers those in `deep` with
    a header nested a thousand levels deep; counts what it receives."""

    def __init__(
        self, drop: set[str] = frozenset(), refuse: set[str] = frozenset(), deep: set[str] = frozenset()
    ) -> None:
        self.drop, self.refuse, self.deep = set(drop), set(refuse), set(deep)
        self.seen: Counter[str] = Counter()
        (port,) = free_ports(1)
        self.url = f"tcp://127.0.0.1:{port}"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(self.url)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, *frames = self.sock.recv_multipart()
            _cmd, h = protocol.decode(frames)
            rid = h["rid"]
            self.seen[rid] += 1
            if rid in self.drop and self.seen[rid] == 1:
                continue
            if rid in self.deep:  # the rid last, as the daemon writes it
                body = b'{"ok":true,"item":' + b"[" * 1000 + b"]" * 1000 + b',"rid":"' + rid.encode() + b'"}'
                self.sock.send_multipart([ident, protocol.PREFIX + bytes([Cmd.REPLY]) + body])
                continue
            if rid in self.refuse:
                reply = {"rid": rid, "ok": False, "error": {"type": "BadInput", "message": f"no to {rid}"}}
            else:
                reply = {"rid": rid, "ok": True, "echo": rid}
            self.sock.send_multipart([ident, *protocol.encode(Cmd.REPLY, reply)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def scripted():
    daemons: list[ScriptedDaemon] = []

    def make(**kwargs) -> ScriptedDaemon:
        daemons.append(ScriptedDaemon(**kwargs))
        return daemons[-1]

    yield make
    for d in daemons:
        d.close()


def requests(*rids: str):
    for rid in rids:
        yield rid, protocol.encode(Cmd.REQUEST, {"op": "ping", "rid": rid})


def test_replies_come_in_order_and_a_lost_one_is_sent_again_with_those_after_it(scripted, monkeypatch):
    monkeypatch.setattr(client_module, "FIRST_TRY", 0.2)
    daemon = scripted(drop={"b"})
    c = Client(daemon.url, timeout=10)
    try:
        replies = list(c.exchange(requests("a", "b", "c", "d"), in_flight=2))
    finally:
        c.close()
    assert [r["echo"] for r in replies] == ["a", "b", "c", "d"]
    # b went unanswered, so b and c (in flight with it) went again on a fresh socket
    assert daemon.seen == {"a": 1, "b": 2, "c": 2, "d": 1}


def test_nothing_more_is_sent_after_a_refusal_but_replies_in_flight_are_read(scripted):
    daemon = scripted(refuse={"b"})
    c = Client(daemon.url, timeout=10)
    try:
        replies = list(c.exchange(requests("a", "b", "c", "d", "e"), in_flight=2))
    finally:
        c.close()
    assert [(r["rid"], r["ok"]) for r in replies] == [("a", True), ("b", False), ("c", True)]
    assert daemon.seen == {"a": 1, "b": 1, "c": 1}  # c was already on its way; d and e never went


def test_an_error_making_a_request_comes_after_the_replies_already_due(scripted):
    daemon = scripted()

    def made_then_broken():
        yield from requests("a", "b")
        raise BadInput("the third request cannot be made")

    c = Client(daemon.url, timeout=10)
    got = []
    try:
        with pytest.raises(BadInput, match="the third request"):
            for reply in c.exchange(made_then_broken(), in_flight=2):
                got.append(reply["echo"])
    finally:
        c.close()
    assert got == ["a", "b"] and daemon.seen == {"a": 1, "b": 1}


def test_request_raises_the_daemons_refusal_as_our_error(scripted):
    daemon = scripted(refuse={"r1"})
    c = Client(daemon.url, timeout=10)
    try:
        with pytest.raises(BadInput, match="no to r1"):
            c.request("ping", {"rid": "r1"})
        assert c.request("ping", {"rid": "r2"})["echo"] == "r2"
    finally:
        c.close()


def test_a_reply_too_deep_to_read_is_an_error_not_a_timeout(scripted):
    daemon = scripted(deep={"r1"})
    c = Client(daemon.url, timeout=10)
    try:
        with pytest.raises(ProtocolError, match="reply could not be read: .* levels deep"):
            c.request("ping", {"rid": "r1"})
        assert c.request("ping", {"rid": "r2"})["echo"] == "r2"
    finally:
        c.close()
    assert daemon.seen == {"r1": 1, "r2": 1}  # answered at once: not sent again
