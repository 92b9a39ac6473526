"""Talking to a daemon: requests and replies over a DEALER socket, with timeouts.

Every request carries a client-made id (rid). When no reply comes in time the
socket is thrown away and the same request is sent again on a fresh one (the
"lazy pirate" pattern); the daemon answers a repeated rid without doing the
work twice. A request that gets no answer within the timeout raises
DaemonUnavailable; nothing ever waits forever.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from martinet import protocol
from martinet.errors import (
    BadInput,
    BadSchedule,
    BadTime,
    DaemonUnavailable,
    MartinetError,
    ProtocolError,
    StoreError,
    TaskNotFound,
)
from martinet.protocol import Cmd

log = logging.getLogger(__name__)

_ERRORS = {cls.__name__: cls for cls in (BadInput, BadTime, BadSchedule, StoreError, TaskNotFound)}
FIRST_TRY = 2.0  # seconds before the first resend; a healthy daemon answers in well under 1 ms


class Client:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._local = threading.local()
        self._ctx: zmq.Context | None = None
        self._pid = os.getpid()
        self._sockets: list[zmq.Socket] = []
        self._lock = threading.Lock()

    # ---- sockets ---------------------------------------------------------------

    def context(self) -> zmq.Context:
        with self._lock:
            if self._ctx is None or self._pid != os.getpid():  # never reuse a context across fork
                self._ctx = zmq.Context()
                self._pid = os.getpid()
                self._sockets = []
                self._local = threading.local()
            return self._ctx

    def _socket(self) -> zmq.Socket:
        sock = getattr(self._local, "sock", None)
        if sock is None or self._pid != os.getpid():
            sock = self.context().socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.url)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def _discard_socket(self) -> None:
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            sock.close(0)
            self._local.sock = None
            with self._lock:
                if sock in self._sockets:
                    self._sockets.remove(sock)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close(0)
            self._sockets = []
            if self._ctx is not None and self._pid == os.getpid():
                self._ctx.term()
            self._ctx = None
            self._local = threading.local()

    # ---- requests ----------------------------------------------------------------

    def request(
        self,
        op: str,
        fields: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        resend: bool = True,
    ) -> dict:
        """Send one request and return the reply's fields; raise our error if it failed.

        `fields` may carry "rid", the request id (made here if missing).
        """
        timeout = self.timeout if timeout is None else timeout
        fields = dict(fields or {})
        header = {"op": op, "rid": fields.pop("rid", None) or uuid.uuid4().hex, **fields}
        frames = protocol.encode(Cmd.REQUEST, header)
        deadline = time.monotonic() + timeout
        window = FIRST_TRY
        while True:
            sock = self._socket()
            sock.send_multipart(frames)
            try_until = deadline if not resend else min(deadline, time.monotonic() + window)
            reply = self._await_reply(sock, header["rid"], try_until)
            if reply is not None:
                return _unwrap(reply)
            self._discard_socket()  # its queue may hold a stale request: start clean
            if time.monotonic() >= deadline:
                raise DaemonUnavailable(
                    f"no answer from the martinet daemon at {self.url} within {timeout:g}s "
                    f"(is `martinet serve` running there?)"
                )
            window *= 2
            log.debug("no reply to %s %s yet; sending it again", op, header["rid"])

    def _await_reply(self, sock: zmq.Socket, rid: str, until: float) -> dict | None:
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            if not sock.poll(int(remaining * 1000) + 1):
                continue
            try:
                cmd, h = protocol.decode(sock.recv_multipart())
            except ProtocolError as exc:
                log.warning("dropped a malformed reply: %s", exc)
                continue
            if cmd is Cmd.REPLY and h.get("rid") == rid:
                return h


def _unwrap(reply: dict) -> dict:
    if reply.get("ok"):
        return reply
    error = reply.get("error") or {}
    cls = _ERRORS.get(error.get("type"), MartinetError)
    raise cls(error.get("message") or "the daemon refused the request")


class EventListener:
    """A thread that subscribes to the daemon's events and calls hooks with each one."""

    RENEW = 10.0  # seconds between subscription renewals (the daemon keeps one for 30)

    def __init__(self, client: Client, dispatch: Callable[[dict], None]) -> None:
        self.client = client
        self.dispatch = dispatch
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="martinet-events", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise DaemonUnavailable(f"could not subscribe to events at {self.client.url} within {timeout:g}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sock = self.client.context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.client.url)
        next_renew = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_renew:
                    sock.send_multipart(
                        protocol.encode(Cmd.REQUEST, {"op": "subscribe", "rid": uuid.uuid4().hex})
                    )
                    next_renew = now + self.RENEW
                if not sock.poll(200):
                    continue
                try:
                    cmd, h = protocol.decode(sock.recv_multipart())
                except ProtocolError as exc:
                    log.warning("dropped a malformed event: %s", exc)
                    continue
                if cmd is Cmd.REPLY:
                    self._ready.set()
                elif cmd is Cmd.EVENT:
                    try:
                        self.dispatch(h)
                    except Exception:  # a hook's bug must not stop the others
                        log.exception("an event hook raised")
        finally:
            sock.close(0)
