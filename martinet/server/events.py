"""Events: what the daemon records of each task's life, and pushes to subscribed clients.

- Recorded: a turn's events (a task's progress, the end of an attempt, a message
  the daemon dropped because it could not read it) are appended to the event
  table in the turn's own transaction, in one multi-row INSERT
  (Store.record_events). Their ids number them in commit order, so the events
  of one task come in order. They are recorded whether or not anyone listens:
  that is what lets a client catch up.
- Pushed: once the turn is committed, each live subscriber gets the turn's
  events in one EVENT message, {"events": [event, ...]}, each with its
  `event_id` and `at` (ISO 8601, UTC).
- Catch-up: a client subscribes with `since`, the last event id it saw; the
  daemon sends what came after from the table, CATCH_UP_PAGE events per
  subscriber and turn (so one subscriber far behind cannot stall the loop),
  then the subscriber is live. A subscriber whose socket queue is full
  (EAGAIN) is not dropped: it goes back to catching up from the last event it
  got. Without `since` a subscriber gets the events from now on.
- Gap: when events after `since` are no longer kept (pruned after keep_events),
  the reply to subscribe says "gap": true, and the client reports a `gap` event.
- Several daemons (PostgreSQL): a client's daemon must send it what the others
  record too. The table numbers every daemon's events in commit order (see
  Store.record_events), so while others serve ("foreign"), live subscribers are fed
  from the table after their cursor (follow) instead of from the turn's own events:
  after a turn that recorded events, when another daemon says it recorded some (a
  note, sent while someone watches on another daemon: elsewhere.py), and each tick.
- Malformed messages are recorded at most MALFORMED_PER_SECOND a second (and
  logged as often): the rest are counted, and the count goes with the next
  record ("suppressed"), so a flood of garbage fills neither the table nor the log.

The server's core owns an EventHub; the loop sends what it says to (see Send);
the wire format of an event is in _wire.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from martinet import protocol, rules
from martinet.errors import BadInput
from martinet.messages import Events
from martinet.models import STALLED
from martinet.present import iso
from martinet.store import EventRows, Store

log = logging.getLogger("martinet.daemon")

KINDS = protocol.EVENT_KINDS
# Events read from the table per subscriber and turn while it catches up: about a
# millisecond of work, so a subscriber a day behind delays dispatch by that per turn.
CATCH_UP_PAGE = 500
CATCH_UP_TURN = 2000  # and for all catching-up subscribers together
# Seconds before sending again to a subscriber whose queue was full; doubled each time it
# still is, up to FULL_BACKOFF_MAX, so a client that stopped reading costs little until
# its subscription expires (it renews none: SUBSCRIPTION_TTL).
FULL_BACKOFF = 0.05
FULL_BACKOFF_MAX = 2.0
SUBSCRIPTION_TTL = 30.0  # a client renews its subscription well within this (every 10 s)
MAX_SUBSCRIBERS = 1000  # a flood of subscribe requests cannot grow memory without bound
MALFORMED_PER_SECOND = 10  # malformed messages recorded per second at most: 864,000 rows a day
MALFORMED_LOGGED_PER_SECOND = 100  # and logged one by one (a line each is cheaper than a row)
# An event's body is kept below this: a larger result or traceback is left out
# ("truncated": true; `martinet show` has it all). Bounds the table and a turn's INSERT.
MAX_BODY = 65_536

# How the hub sends a message to a subscriber (the loop gives it its socket's send):
# "sent", "full" (its queue is full: it catches up later) or "gone".
Send = Callable[[bytes, list[bytes]], str]


@dataclass
class Subscriber:
    ident: bytes
    expires: float
    cursor: int  # the id of the last event sent to it (or the last before it subscribed)
    live: bool  # gets each turn's events as they are committed; else catching up from cursor
    not_before: float = 0.0  # catching up: not before this (its queue was full)
    backoff: float = 0.0  # the last wait after a full queue (0: the last send went through)


class _AttemptEvent(dict[str, Any]):
    """An attempt's end with the keys of _ATTEMPT_KEYS, in that order: _body writes it
    from a template, three times faster than key by key (it is most events of a drain)."""


_ATTEMPT_KEYS = ("event", "id", "name", "queue", "attempt", "status", "outcome", "result", "error",
                 "run_at", "reason")  # fmt: skip


def attempt_event(info: dict[str, Any]) -> dict[str, Any]:
    """The event of an attempt's end, from what the store said became of the task."""
    status, outcome = info["status"], info["outcome"]
    if outcome == "released" and status != STALLED:
        kind = "released"
    elif outcome == "interrupted" and status == "queued":
        kind = "interrupted"
    else:
        kind = status
    event = _AttemptEvent({"event": kind, **info})  # (made once: most of a drain's events are these)
    event.pop("dependents", None)
    if tuple(event) == _ATTEMPT_KEYS and type(event["id"]) is int and type(event["attempt"]) is int:
        return event
    return dict(event)


def _json(value: Any) -> str:
    """One value in JSON; the scalars an event is mostly made of without json.dumps,
    which costs several times more (a drain records thousands of events a second)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return str(value)
    if kind is float and math.isfinite(value):
        return repr(value)  # as json.dumps writes it
    if isinstance(value, str):  # a StrEnum (an attempt's status and outcome): its value
        return encode_basestring_ascii(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _body(event: dict[str, Any]) -> str:
    """An event as a JSON object (its keys are ours: plain names, no escaping needed)."""
    if type(event) is _AttemptEvent:
        e = event
        error, run_at, reason = e["error"], e["run_at"], e["reason"]  # (a success has none)
        body = (
            f'{{"event":{_json(e["event"])},"id":{e["id"]},"name":{_json(e["name"])},"queue":{_json(e["queue"])},'
            f'"attempt":{e["attempt"]},"status":{_json(e["status"])},"outcome":{_json(e["outcome"])},'
            f'"result":{_json(e["result"])},"error":{"null" if error is None else _json(error)},'
            f'"run_at":{"null" if run_at is None else _json(run_at)},'
            f'"reason":{"null" if reason is None else _json(reason)}}}'
        )
    else:
        body = "{" + ",".join([f'"{key}":{_json(value)}' for key, value in event.items()]) + "}"
    if len(body) > MAX_BODY:
        event = {**event, "result": None, "truncated": True}
        if isinstance(event.get("error"), dict):
            event["error"] = {**event["error"], "traceback": None}
        body = json.dumps(event, separators=(",", ":"), default=str)[:MAX_BODY]
        if len(body) == MAX_BODY:  # still too large: keep what says what happened
            keep = ("event", "id", "name", "queue", "attempt", "status", "outcome", "run_at")
            body = json.dumps({**{k: event.get(k) for k in keep}, "truncated": True}, default=str)
    return body


def _wire(event_id: int, at: str, body: str) -> bytes:
    """An event as clients get it: its body (a JSON object) plus its id and time."""
    return (body[:-1] + f',"event_id":{event_id},"at":"{at}"}}').encode()


def _message(items: list[bytes]) -> list[bytes]:
    return Events.batch(items)


class EventHub:
    """The daemon's subscribers and what it still has to record or send them."""

    def __init__(self) -> None:
        self.subscribers: dict[bytes, Subscriber] = {}
        self.pending: list[dict[str, Any]] = []  # made outside a handler that has an Outbox; recorded next
        self.foreign = False  # other daemons record events too: live subscribers follow the table
        self.stale = False  # the table may hold events live subscribers have not got (follow)
        self._window = -1  # the second the malformed counts are for
        self._malformed = 0  # recorded in that second
        self._suppressed = 0  # not recorded, since the last record
        self._logged = 0  # logged in that second
        self._unlogged = 0  # not logged, since the last summary

    # ---- recording, in the turn's transaction ---------------------------------------

    def record(
        self, store: Store, events: list[dict[str, Any]], now: float, ids: bool = True
    ) -> list[tuple[int, str]]:
        """Append the turn's events to the table; returns (event id, body) of each. With
        `ids` False (no one subscribes: nothing to push) [], and the store need not read
        the ids back (on PostgreSQL the events then go with the commit)."""
        if self.pending:
            events = [*self.pending, *events]
        if not events:
            return []
        if self.foreign:  # sent from the table with the others' (follow): no ids to read
            ids, self.stale = False, True
        names = [name[:255] if isinstance(name := event.get("name"), str) else None for event in events]
        bodies = [_body(event) for event in events]
        rows = EventRows(
            [event.get("id") for event in events], names, [event["event"] for event in events], bodies
        )
        numbered = store.record_events(rows, now, read_ids=ids)
        self.pending = []
        return list(zip(numbered, bodies, strict=True)) if ids else []

    # ---- subscriptions ---------------------------------------------------------------

    def subscribe(self, store: Store, ident: bytes, since: Any, now: float) -> dict[str, Any]:
        """A subscribe request: a renewal, or a new subscriber from now or from `since`."""
        rules.check_event_id(since)
        sub = self.subscribers.get(ident)
        if sub is not None:  # the same connection: what it has not got yet is on its way
            sub.expires = now + SUBSCRIPTION_TTL
            return {"ttl": SUBSCRIPTION_TTL}
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            raise BadInput(f"too many subscribers already ({MAX_SUBSCRIBERS})")
        first, last = store.event_bounds()
        last = last or 0
        reply: dict[str, Any] = {"ttl": SUBSCRIPTION_TTL, "last": last}
        if since is None:
            cursor, live = last, True
        else:
            # Pruned: the events just after `since` are gone. Beyond the newest: this is
            # not the history the client saw (a database restored or started afresh).
            gap = (first is not None and since < first - 1) or since > last
            cursor, live = min(since, last), False
            reply.update(gap=gap, first=first)
        reply["since"] = cursor
        self.subscribers[ident] = Subscriber(ident, now + SUBSCRIPTION_TTL, cursor, live)
        return reply

    def expire(self, now: float) -> None:
        for ident, sub in list(self.subscribers.items()):
            if now > sub.expires:
                del self.subscribers[ident]

    def next_turn(self) -> float | None:
        """When the loop must take a turn to go on with a catch-up, or with following the
        table (None: nobody catches up)."""
        due = math.inf
        for sub in self.subscribers.values():
            if sub.live and self.stale:
                return 0.0
            if not sub.live:
                due = min(due, sub.not_before)
        return None if due == math.inf else due

    # ---- sending, after the commit ---------------------------------------------------------

    def push(self, send: Send, recorded: list[tuple[int, str]], now: float) -> None:
        """A committed turn's events (recorded at `now`) to each live subscriber, in one
        message each; encoded only when someone listens."""
        if not recorded or not self.subscribers:
            return
        first, last = recorded[0][0], recorded[-1][0]
        wires: list[tuple[int, bytes]] | None = None
        whole: list[bytes] | None = None
        for sub in list(self.subscribers.values()):
            if not sub.live or sub.cursor >= last:
                continue
            if wires is None:
                at = iso(now)
                wires = [(event_id, _wire(event_id, at, body)) for event_id, body in recorded]
            if sub.cursor < first:
                whole = whole or _message([wire for _id, wire in wires])
                frames = whole
            else:
                frames = _message([wire for event_id, wire in wires if event_id > sub.cursor])
            self._send(send, sub, frames, last, now)

    def catch_up(self, store: Store, send: Send, now: float) -> None:
        """A page of the table to each subscriber that catches up; live once it has all."""
        budget = CATCH_UP_TURN
        for sub in list(self.subscribers.values()):
            if sub.live or now < sub.not_before:
                continue
            if budget <= 0:
                break
            limit = min(CATCH_UP_PAGE, budget)
            page = store.events_after(sub.cursor, limit)
            budget -= len(page)
            if page:
                frames = _message([_wire(event_id, iso(at), body) for event_id, at, body in page])
                if not self._send(send, sub, frames, page[-1][0], now):
                    continue
            if len(page) < limit:  # it has everything committed: what comes next is pushed
                sub.live = True
            else:  # the others' turn first
                self.subscribers[sub.ident] = self.subscribers.pop(sub.ident)

    def follow(self, store: Store, send: Send, now: float) -> None:
        """Live subscribers, when the table may hold events they have not got (stale):
        a page after the oldest of their cursors, read once, and to each what is after
        its own. A full page leaves it stale: the next turn reads on."""
        if not self.stale:
            return
        live = [sub for sub in self.subscribers.values() if sub.live]
        if not live:
            self.stale = False
            return
        page = store.events_after(min(sub.cursor for sub in live), CATCH_UP_PAGE)
        self.stale = len(page) == CATCH_UP_PAGE
        if not page:
            return
        wires = [(event_id, _wire(event_id, iso(at), body)) for event_id, at, body in page]
        for sub in live:
            items = [wire for event_id, wire in wires if event_id > sub.cursor]
            if items:
                self._send(send, sub, _message(items), wires[-1][0], now)

    def _send(self, send: Send, sub: Subscriber, frames: list[bytes], last: int, now: float) -> bool:
        how = send(sub.ident, frames)
        if how == "full":  # its queue is full: it catches up from the table once there is room
            sub.backoff = min(FULL_BACKOFF_MAX, sub.backoff * 2) if sub.backoff else FULL_BACKOFF
            sub.live, sub.not_before = False, now + sub.backoff
            return False
        if how == "gone":
            log.debug("event subscriber %s gone", sub.ident.hex())
            self.subscribers.pop(sub.ident, None)
            return False
        sub.cursor, sub.backoff = last, 0.0
        return True

    # ---- malformed messages -----------------------------------------------------------

    def malformed(self, socket: str, peer: str, why: str, size: int, now: float) -> dict[str, Any] | None:
        """The event of a dropped message, or None when this second's quota is spent
        (it is counted, and the count goes with the next one recorded)."""
        window = int(now)
        if window != self._window:
            self._window, self._malformed, self._logged = window, 0, 0
        if self._malformed >= MALFORMED_PER_SECOND:
            self._suppressed += 1
            return None
        self._malformed += 1
        event: dict[str, Any] = {
            "event": "malformed",
            "why": why[:500],
            "socket": socket,
            "peer": peer,
            "size": size,
        }
        if self._suppressed:
            event["suppressed"], self._suppressed = self._suppressed, 0
        self.pending.append(event)
        return event

    def may_log(self) -> bool:
        """Whether the malformed message just counted gets its own log line (else it is
        counted in a summary line)."""
        if self._logged >= MALFORMED_LOGGED_PER_SECOND:
            self._unlogged += 1
            return False
        self._logged += 1
        return True

    def suppressed(self, now: float) -> None:
        """Once a second at most: log how many malformed messages were not logged one by
        one, and record how many went unrecorded."""
        if int(now) == self._window:
            return
        if self._unlogged:
            log.warning("dropped %d more malformed messages (not each logged)", self._unlogged)
            self._unlogged = 0
        if self._suppressed:
            n, self._suppressed = self._suppressed, 0
            self._window, self._malformed, self._logged = int(now), 1, 0
            self.pending.append(
                {
                    "event": "malformed",
                    "why": f"{n} more malformed messages dropped (at most {MALFORMED_PER_SECOND} "
                    "a second are recorded one by one)",
                    "socket": None,
                    "peer": None,
                    "size": None,
                    "suppressed": n,
                }
            )
