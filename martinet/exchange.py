"""What a client decides when it talks to a daemon, without touching a socket.

Every request carries a client-made id (rid). When no reply comes in time the
socket is thrown away and the same request is sent again on a fresh one (the
"lazy pirate" pattern), again and again for as long as the timeout allows; the
daemon answers a repeated rid without doing the work twice. A request that gets
no answer within the timeout raises DaemonUnavailable carrying its rid
(`request_id`): the daemon may have done it all the same (a daemon paused longer
than the timeout reads the copies waiting in its sockets when it resumes), and
sending it again with that rid does not do it twice. Nothing ever waits forever.

Those decisions (when to resend, look at a port, move on to the next daemon of a
list, give up) are made once, here (Exchange.steps), as steps of I/O that
client.Client carries out on blocking sockets and aio.AsyncClient on asyncio's.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Collection, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import zmq

from martinet import messages
from martinet.config import Settings, daemons
from martinet.errors import DaemonUnavailable, ProtocolError
from martinet.keys import ClientKeys
from martinet.messages import Reply, Request

log = logging.getLogger("martinet.client")

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
    """Whether anything listens at host:port (see listens): a bool."""

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
        self._local_port = loopback_port(self.url)  # (host, port) when the daemon is on this host
        self._reached = False  # a reply ever came: a daemon that is down may be restarting

    @property
    def url(self) -> str:
        """The daemon the calls go to now."""
        return self.urls[self._at]

    def _move_on(self) -> None:
        """The next daemon of the list, for the copies of what this one did not answer."""
        gone = self.url
        self._at = (self._at + 1) % len(self.urls)
        self._local_port = loopback_port(self.url)
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


def loopback_port(url: str) -> tuple[str, int] | None:
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


def listens(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is accepted (False only when refused: a
    connection that is slow to be accepted counts as listening)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return True
