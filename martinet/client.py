"""Talking to a daemon on blocking sockets: requests and replies over a DEALER socket
(Client, carrying out exchange.Exchange's steps), and the events a daemon publishes
(EventStream, EventListener).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import zmq

from martinet import messages
from martinet.config import Settings
from martinet.errors import DaemonUnavailable, ProtocolError
from martinet.exchange import (
    Deliver,
    Discard,
    Exchange,
    Look,
    Receive,
    Resend,
    Send,
    listens,
    new_request,
    read_reply,
)
from martinet.keys import ClientKeys
from martinet.messages import Events, Reply, Request

log = logging.getLogger(__name__)


class Client(Exchange):
    """A client of one daemon, or of several on one database: `url` may list them
    ("tcp://a:8008,tcp://b:8008"). A request then goes to one of them; when it gets no
    answer there (FIRST_TRY, or its port refuses connections on this host), its copies
    go to the next one, and the calls after it too (sooner when the call's timeout is
    shorter than FIRST_TRY a daemon: it is shared out). A resend creates nothing twice
    whichever daemon reads it: request ids are decided by the shared database."""

    def __init__(self, url: str, timeout: float = Settings.timeout, keys: ClientKeys | None = None) -> None:
        super().__init__(url, timeout, keys)
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
            sock = self.dealer()
            sock.connect(self.url)
            self._local.sock = sock
            with self._lock:
                self._sockets.append(sock)
        return sock

    def dealer(self) -> zmq.Socket:
        """A new DEALER socket to a daemon, with this client's keys (not connected yet)."""
        sock = self.context().socket(zmq.DEALER)
        self.setup(sock)
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
        request = new_request(op, fields)
        return next(self.exchange([(request.rid, request.encode())], timeout=timeout, resend=resend)).unwrap()

    def exchange(
        self,
        requests: Iterable[tuple[str, list[bytes]]],
        *,
        in_flight: int = 1,
        timeout: float | None = None,
        resend: bool = True,
    ) -> Iterator[Reply]:
        """Send encoded requests, (rid, frames) pairs taken from `requests` as they are
        needed, with up to `in_flight` of them awaiting a reply; yield each reply in the
        order sent, refusals included (see Reply.refusal). The daemon reads one client's
        requests in order, so the next one waits at the daemon while it commits this one.

        After a refusal, or an error raised while making the next request, nothing more
        is sent: the replies of those already sent are yielded, then that error is raised.
        Each reply must come within `timeout` of its send; requests are sent again on a
        fresh socket when none comes for a while (see FIRST_TRY, MAX_TRY). Raises
        DaemonUnavailable, with the rid of the first request still unanswered."""
        steps = self.steps(requests, in_flight, self.timeout if timeout is None else timeout, resend)
        answer: Any = None
        while True:
            try:
                step = steps.send(answer)
            except StopIteration:
                return
            answer = None
            match step:
                case Send(frames=frames):
                    self._socket().send_multipart(frames)
                case Receive(rid, until):
                    answer = self._await_reply(self._socket(), rid, until)
                case Look(host, port):
                    answer = listens(host, port)
                case Discard():
                    self._discard_socket()
                case Resend(again):
                    sock = self._socket()
                    for _rid, frames in again:
                        sock.send_multipart(frames)
                case Deliver(reply):
                    yield reply

    def _await_reply(self, sock: zmq.Socket, rid: str, until: float) -> Reply | None:
        """The reply to `rid`, or None at `until`. A receive that waits (RCVTIMEO), not a
        poll and then a receive: a poll makes a Poller and several system calls a call."""
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            sock.setsockopt(zmq.RCVTIMEO, int(remaining * 1000) + 1)
            try:
                frames = sock.recv_multipart()
            except zmq.Again:
                continue
            reply = read_reply(frames, (rid,))
            if reply is not None:
                return reply


class EventStream:
    """A daemon's events, in order: from after `since` (an event id), or from now.

    It subscribes, renews the subscription every RENEW seconds, and subscribes
    again at once when its connection comes back (after a daemon restart, say),
    sending the id of the last event it got: the daemon replays what came after
    it, so nothing is lost within the daemon's keep_events. An event it already
    had is skipped. `last` is the id of the last event handed to `dispatch`.
    """

    RENEW = 10.0  # seconds between subscription renewals (the daemon keeps one for 30)

    def __init__(self, client: Client, since: int | None = None) -> None:
        self.client = client
        self.last = since

    def run(
        self,
        dispatch: Callable[[dict], None],
        stop: threading.Event,
        ready: Callable[[dict], None] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Hand each event to `dispatch` until `stop` is set. `ready` gets the daemon's
        first answer; raises DaemonUnavailable when none comes within `timeout`, and the
        daemon's error when it refuses the subscription. What `dispatch` raises goes up."""
        from zmq.utils.monitor import recv_monitor_message  # here: it imports asyncio (~30 ms a start)

        timeout = self.client.timeout if timeout is None else timeout
        sock = self.client.dealer()
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        sock.connect(self.client.url)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        answered, connects, rid = False, 0, ""
        first_by = time.monotonic() + timeout
        next_renew = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if not answered and now > first_by:
                    raise DaemonUnavailable(
                        f"no answer from the martinet daemon at {self.client.url} within {timeout:g}s "
                        f"(is `martinet serve` running there?)"
                    )
                if now >= next_renew:
                    request = Request("subscribe", {"since": self.last})
                    rid = request.rid
                    sock.send_multipart(request.encode())
                    next_renew = now + self.RENEW
                polled = dict(poller.poll(200))
                if monitor in polled:
                    recv_monitor_message(monitor)
                    connects += 1
                    if connects > 1:  # a new connection: the daemon may not know us (any more)
                        next_renew = 0.0
                if sock not in polled:
                    continue
                try:
                    message = messages.decode(sock.recv_multipart())
                except ProtocolError as exc:
                    log.warning("dropped a malformed message from the daemon: %s", exc)
                    continue
                if isinstance(message, Reply) and message.rid == rid:
                    if not answered:
                        header = message.unwrap()  # the daemon's refusal, as our error
                        answered = True
                        if ready is not None:
                            ready(header)
                    self._on_reply(message, dispatch)
                elif isinstance(message, Events):
                    for event in message.events:
                        if self._new(event):
                            dispatch(event)
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _on_reply(self, reply: Reply, dispatch: Callable[[dict], None]) -> None:
        if not reply.ok:
            log.warning("the daemon refused to renew the event subscription: %s", reply.error)
            return
        asked, h = self.last, reply.fields
        if isinstance(h.get("since"), int):  # a new subscription: the daemon sends what follows this
            self.last = h["since"]
        if h.get("gap"):
            log.warning(
                "events after %s are no longer kept by the daemon (oldest kept: %s, newest: %s): "
                "some were missed", asked, h.get("first"), h.get("last"),
            )  # fmt: skip
            dispatch({"event": "gap", "since": asked, "first": h.get("first"), "last": h.get("last")})

    def _new(self, event: dict) -> bool:
        event_id = event.get("event_id")
        if not isinstance(event_id, int):
            return True  # from a daemon that numbers no events
        if self.last is not None and event_id <= self.last:
            return False  # had it already
        self.last = event_id
        return True


class EventListener:
    """A thread that hands a daemon's events to `dispatch` (see EventStream)."""

    def __init__(self, client: Client, dispatch: Callable[[dict], None], since: int | None = None) -> None:
        self.stream = EventStream(client, since)
        self.dispatch = dispatch
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="martinet-events", daemon=True)

    @property
    def last(self) -> int | None:
        return self.stream.last

    def start(self, timeout: float = 5.0) -> None:
        """Start and wait for the daemon to accept the subscription; raise if it does not."""
        self._timeout = timeout
        self._thread.start()
        if not self._ready.wait(timeout + 1) and self._error is None:
            self.stop()
            raise DaemonUnavailable(
                f"could not subscribe to events at {self.stream.client.url} within {timeout:g}s"
            )
        if self._error is not None:
            self._thread.join(timeout=5)
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            self.stream.run(self._safe_dispatch, self._stop, lambda _h: self._ready.set(), self._timeout)
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    def _safe_dispatch(self, event: dict) -> None:
        try:
            self.dispatch(event)
        except Exception:  # a hook's bug must not stop the events
            log.exception("an event hook raised")
