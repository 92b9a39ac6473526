"""The daemon's ZAP handler: every connection's handshake asks it whether the peer may
connect to that socket (ZeroMQ's authentication protocol, RFC 27).

Each of the daemon's sockets has its own ZAP domain (its name: client, worker, status).
With keys (CURVE), a key is refused at the handshake on a socket its role may not use,
and an unknown key anywhere: nothing from it reaches the loop. An allowed connection's
messages carry its key as their User-Id; the loop checks it again at every message,
since a key removed from the keyring (a reload) leaves its open connections open.

With keys or without, the connections open at once are bounded (max_connections): each
socket's monitor says when one is accepted and when one goes, and a handshake beyond the
bound is refused, so that a peer cannot take the file descriptors the daemon needs.
A refusal is logged once per socket, peer address and reason, and counted in the metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import zmq
import zmq.utils.z85
from zmq.utils.monitor import parse_monitor_message

from martinet.keys import SOCKET_ROLES, Keyring
from martinet.logs import Once

log = logging.getLogger("martinet.daemon")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks, in the sockets' own context
EVENTS = (
    zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)  # fmt: skip


class ZapHandler:
    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        keyring: Keyring | None,
        max_connections: int,
        refused: Callable[[str, str], None],
    ) -> None:
        self.keyring = keyring  # None: no keys (plain text, NULL handshakes)
        self.max_connections = max_connections
        self.refused = refused  # (socket, reason): counted in the metrics
        self.connections = 0  # open now, on all the watched sockets (handshakes under way included)
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)  # before any socket with a ZAP domain is bound
        self._stop = threading.Event()
        self._told = Once()  # (socket, address, reason): logged once each
        self._monitors: dict[zmq.Socket[bytes], str] = {}  # a socket's monitor -> the socket's name
        self._thread = threading.Thread(target=self._run, name="martinet-zap", daemon=True)

    def watch(self, sock: zmq.Socket[bytes], name: str) -> None:
        """Count `sock`'s connections (the daemon's socket `name`), and tell of the peers it
        refuses before any ZAP request. (Before start: the thread owns the monitor then.)"""
        self._monitors[sock.get_monitor_socket(EVENTS)] = name

    def start(self) -> ZapHandler:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # (started)
            self._thread.join(5)
        for monitor in self._monitors:
            monitor.close(0)
        self._sock.close(0)

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in (self._sock, *self._monitors):
            poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _event in poller.poll(100):
                if sock is self._sock:
                    self._answer_one()
                else:
                    self._read_events(sock)

    def _answer_one(self) -> None:
        request = self._sock.recv_multipart()
        for monitor in self._monitors:  # the accept of this connection came first: count it
            self._read_events(monitor)
        try:
            reply = self.answer(request)
        except Exception:  # a bug of ours refuses that one connection, never stops the thread
            log.exception("the check of a connection failed; it is refused")
            reply = [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"internal error", b"", b""]
        self._sock.send_multipart(reply)

    def _read_events(self, monitor: zmq.Socket[bytes]) -> None:
        while True:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_ACCEPTED:
                self.connections += 1
            elif event == zmq.EVENT_DISCONNECTED:
                self.connections = max(0, self.connections - 1)
            elif self.keyring is not None:  # a handshake failed before any ZAP request
                why = ("it does not speak CURVE with this daemon's key (a peer without keys, or one given "
                       "another daemon's public key); ZeroMQ does not say its address")  # fmt: skip
                self._refuse(self._monitors[monitor], "", "plain_text", why)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """A ZAP reply to a ZAP request: 200 (with keys, the key as its User-Id), or 400 and why."""
        if len(request) < 6:  # (libzmq sends six frames at least)
            return [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"malformed request", b"", b""]
        _version, request_id, domain, address, _identity, mechanism, *credentials = request
        sock_name = domain.decode("ascii", "replace")
        where = address.decode("ascii", "replace")
        key = ""
        if self.connections > self.max_connections:
            reason, why = "connections", f"{self.connections - 1} connections are open, the most allowed " \
                f"(max_connections {self.max_connections})"  # fmt: skip
        elif self.keyring is None:
            return [b"1.0", request_id, b"200", b"OK", b"", b""]
        elif mechanism != b"CURVE" or not credentials or len(credentials[0]) != 32:
            reason, why = "plain_text", "it does not speak CURVE (a peer without keys)"
        else:
            key = zmq.utils.z85.encode(credentials[0]).decode()
            role = self.keyring.role_of(key)
            if role is None:
                reason, why = "unknown_key", f"its key {key[:8]}... is not among the allowed keys"
            elif role not in SOCKET_ROLES.get(sock_name, ()):
                name = self.keyring.names.get(key, key[:8] + "...")
                reason, why = (
                    "role",
                    f"its key {name} is a {role}'s, which may not use the {sock_name} socket",
                )
            else:
                return [b"1.0", request_id, b"200", b"OK", key.encode(), b""]
        self._refuse(sock_name, where, reason, why)
        return [b"1.0", request_id, b"400", why.encode()[:200], b"", b""]

    def _refuse(self, sock_name: str, where: str, reason: str, why: str) -> None:
        self.refused(sock_name, reason)
        if self._told.first((sock_name, where, reason)):
            log.warning(
                "refused a connection to the %s socket%s: %s",
                sock_name,
                f" from {where}" if where else "",
                why,
            )
