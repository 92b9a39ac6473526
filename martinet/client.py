"""Talking to a daemon: requests and replies over a DEALER socket, with timeouts.

Every request carries a client-made id (rid). When no reply comes in time the
socket is thrown away and the same request is sent again on a fresh one (the
"lazy pirate" pattern), again and again for as long as the timeout allows; the
daemon answers a repeated rid without doing the work twice. A request that gets
no answer within the timeout raises DaemonUnavailable carrying its rid
(`request_id`): the daemon may have done it all the same (a daemon paused longer
than the timeout reads the copies waiting in its sockets when it resumes), and
sending it again with that rid does not do it twice. Nothing ever waits forever.
Those decisions are made once, without sockets (Exchange.steps): Client drives them
on blocking sockets, martinet.aio's AsyncClient on asyncio's.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from martinet import messages
from martinet.config import Settings, daemons
from martinet.errors import DaemonUnavailable, MartinetError, ProtocolError
from martinet.keys import ClientKeys
from martinet.messages import Events, Reply, Request

log = logging.getLogger(__name__)

FIRST_TRY = 2.0  # seconds before the first resend; a healthy daemon answers in well under 1 ms
# Most seconds between two resends. A copy already sent can be lost with the daemon that
# read it (killed before it committed); the next copy then goes at most this long after
# the daemon is back. Each copy reaches a paused daemon as one more connection to read
# when it resumes, so not much more often than this.
MAX_TRY = 5.0
# A call to a daemon on this host (127.0.0.1, localhost, ::1) that never answered this
# client, with no reply after PROBE_AFTER seconds, looks every PROBE_AFTER whether
# anything listens on the port (a plain TCP connect: refused at once when nothing does).
# When nothing has listened at any look for REFUSED_FOR seconds from the call's start,
# the call fails then, not at its timeout. Once a look finds the port open (a daemon
# that is slow, or starting), the whole timeout applies, resends included. A daemon that
# answered this client before is never looked at: down, it may be restarting, and the
# call waits for it (resends) up to its timeout; so is a remote one. A healthy daemon
# answers long before the first look: it costs a call nothing.
PROBE_AFTER = 0.1
REFUSED_FOR = 1.0


# The steps of an exchange (Exchange.steps): the I/O it asks of the client that drives
# it, one at a time, each with what it is answered with.


@dataclass(frozen=True, slots=True)
class Send:
    """Send request `rid` on the socket the calls use (answered with None)."""

    rid: str
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Receive:
    """The reply to request `rid`, waited for until `until` (time.monotonic()): a Reply, or None."""

    rid: str
    until: float


@dataclass(frozen=True, slots=True)
class Look:
    """Whether anything listens at host:port (see _listens): a bool."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Discard:
    """Throw away the socket request `rid` went on: its queue may hold a stale request.
    Answered with True when another caller sharing it threw it away (and moved on) already."""

    rid: str


@dataclass(frozen=True, slots=True)
class Resend:
    """Send these (rid, frames) again, on a fresh socket (answered with None)."""

    requests: list[tuple[str, list[bytes]]]


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hand this reply to the caller (answered with None)."""

    reply: Reply


Step = Send | Receive | Look | Discard | Resend | Deliver


class Exchange:
    """A client's decisions, without its sockets: which daemon of its list the calls go
    to, and for each request when to send it again, look at a port, move on or give up
    (`steps`). Client and aio.AsyncClient own the sockets and drive the steps."""

    def __init__(self, url: str, timeout: float = Settings.timeout, keys: ClientKeys | None = None) -> None:
        self.urls = daemons(url)
        self.keys = keys  # CURVE: its key pair and the daemon's public key (None: plain text)
        self._at = 0  # the daemon of the list the calls go to
        self.timeout = timeout
        self._local_port = _loopback_port(self.url)  # (host, port) when the daemon is on this host
        self._reached = False  # a reply ever came: a daemon that is down may be restarting

    @property
    def url(self) -> str:
        """The daemon the calls go to now."""
        return self.urls[self._at]

    def _move_on(self) -> None:
        """The next daemon of the list, for the copies of what this one did not answer."""
        gone = self.url
        self._at = (self._at + 1) % len(self.urls)
        self._local_port = _loopback_port(self.url)
        log.warning("no answer from the martinet daemon at %s: trying %s", gone, self.url)

    def setup(self, sock: zmq.Socket) -> None:
        """Make a new DEALER socket (not connected yet) one of this client's: no linger, its keys."""
        sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            self.keys.apply(sock)

    def steps(
        self, requests: Iterable[tuple[str, list[bytes]]], in_flight: int, timeout: float, resend: bool
    ) -> Generator[Step, Any, None]:
        """The steps of an exchange of `requests` (see Client.exchange)."""
        todo = iter(requests)
        flying: deque[tuple[str, list[bytes], float]] = deque()  # (rid, frames, deadline)
        stop: BaseException | None = None
        refused = False
        started = time.monotonic()
        while True:
            while not refused and stop is None and len(flying) < in_flight:
                try:
                    request = next(todo, None)
                except Exception as exc:  # the next request could not be made: the sent ones still count
                    stop = exc
                    break
                if request is None:
                    break
                rid, frames = request
                yield Send(rid, frames)
                flying.append((rid, frames, time.monotonic() + timeout))
            if not flying:
                if stop is not None:
                    raise stop
                return
            reply = yield from self._reply_to_first(flying, resend, timeout, started)
            flying.popleft()
            refused = refused or not reply.ok
            yield Deliver(reply)

    def _reply_to_first(
        self,
        flying: deque[tuple[str, list[bytes], float]],
        resend: bool,
        timeout: float,
        started: float | None = None,
    ) -> Generator[Step, Any, Reply]:
        """The reply to the first request in flight; resends them all on a fresh socket
        after FIRST_TRY seconds without it, then after twice as long, and so on up to
        MAX_TRY seconds between resends, until its deadline. A local daemon that never
        answered this client has its port looked at (see PROBE_AFTER) from `started`."""
        rid, _frames, deadline = flying[0]
        several = len(self.urls) > 1
        # Several daemons: each gets its share of a short timeout, so the call reaches the next
        window = min(FIRST_TRY, timeout / len(self.urls)) if several else FIRST_TRY
        refused: set[str] = set()  # daemons of the list whose port refused connections
        local = self._local_port if started is not None and not self._reached else None
        look_at = time.monotonic() + PROBE_AFTER if local else math.inf
        while True:
            try_until = deadline if not resend else min(deadline, time.monotonic() + window)
            reply = yield Receive(rid, min(try_until, look_at))
            if reply is not None:
                self._reached = True
                return reply
            now = time.monotonic()
            if local and started is not None and now < try_until:  # time to look at the port
                if (yield Look(*local)):
                    look_at = math.inf  # something is there: wait as long as the timeout allows
                    continue
                if now - started < REFUSED_FOR and not several:
                    look_at = now + PROBE_AFTER
                    continue
                refused.add(self.url)
                if len(refused) == len(self.urls):
                    yield Discard(rid)
                    raise DaemonUnavailable(
                        f"nothing listens at {', '.join(self.urls)}: connections to port {local[1]} "
                        f"on {local[0]} were refused for {now - started:.1f}s "
                        "(is `martinet serve` running there?)",
                        request_id=rid,
                    )
            moved = yield Discard(rid)  # its queue may hold a stale request: start clean
            if time.monotonic() >= deadline:
                raise DaemonUnavailable(
                    f"no answer from the martinet daemon at {', '.join(self.urls)} within {timeout:g}s "
                    f"(is `martinet serve` running there?)",
                    request_id=rid,
                )
            if several:
                if not moved:
                    self._move_on()
                local = self._local_port if started is not None and self.url not in refused else None
                look_at = time.monotonic() + PROBE_AFTER if local else math.inf
            else:
                window = min(window * 2, MAX_TRY)
            log.debug("no reply to request %s yet; sending it again", rid)
            yield Resend([(again, frames) for again, frames, _deadline in flying])  # not done twice


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
        order sent, refusals included (see refusal()). The daemon reads one client's
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
                    answer = _listens(host, port)
                case Discard():
                    self._discard_socket()
                case Resend(again):
                    sock = self._socket()
                    for _rid, frames in again:
                        sock.send_multipart(frames)
                case Deliver(reply):
                    yield reply

    def _await_reply(self, sock: zmq.Socket, rid: str, until: float) -> Reply | None:
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            if not sock.poll(int(remaining * 1000) + 1):
                continue
            reply = read_reply(sock.recv_multipart(), (rid,))
            if reply is not None:
                return reply


def new_request(op: str, fields: dict[str, Any] | None = None) -> Request:
    """A request of `op` with `fields`; their "rid", if any, is its request id (else one is made)."""
    fields = dict(fields or {})
    return Request(op, fields, fields.pop("rid", None) or uuid.uuid4().hex)


def read_reply(frames: list[bytes], waiting: Collection[str]) -> Reply | None:
    """The reply in `frames` when it answers one of the request ids `waiting`, else None.
    A reply that cannot be read but names one of them is that request's refusal (a
    ProtocolError, rather than a timeout); any other malformed one is logged and dropped."""
    try:
        reply = messages.decode(frames)
    except ProtocolError as exc:
        for rid in waiting:
            if frames and f'"rid":"{rid}"'.encode() in frames[0]:  # ours: say so, rather than time out
                return Reply.refusing(rid, "ProtocolError", f"the daemon's reply could not be read: {exc}")
        log.warning("dropped a malformed reply: %s", exc)
        return None
    return reply if isinstance(reply, Reply) and reply.rid in waiting else None


def _loopback_port(url: str) -> tuple[str, int] | None:
    """(host, port) of a tcp:// URL whose host is this machine's loopback, else None."""
    m = re.fullmatch(r"tcp://(\[[^\]]+\]|[^:/]+):(\d+)", url.strip())
    if m is None:
        return None
    host = m[1].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    return (host, int(m[2])) if loopback else None


def _listens(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is accepted (False only when refused: a
    connection that is slow to be accepted counts as listening)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return True


def refusal(reply: Reply) -> MartinetError:
    """A reply that says a request failed, as our error (of the class the daemon named)."""
    return reply.refusal()


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
