"""The client socket's messages: a request, its reply, and the events a subscriber gets.

A request is {"op", "rid", ...its fields}; what each op's fields mean is the
daemon's (its ops check them, validate.py holds the shared rules). A reply is
{...its fields, "ok", "rid"}, with "error": {"type", "message"} when not ok; the
error's type names one of our error classes, which the client raises again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from martinet import protocol
from martinet.errors import (
    BadInput,
    BadSchedule,
    BadTime,
    Busy,
    Forbidden,
    MartinetError,
    ProtocolError,
    StoreError,
    TaskNotFound,
)
from martinet.protocol import Cmd

# The errors a reply may name, raised again as themselves on the client's side.
ERRORS: dict[str, type[MartinetError]] = {
    cls.__name__: cls
    for cls in (BadInput, BadTime, BadSchedule, Busy, Forbidden, ProtocolError, StoreError, TaskNotFound)
}


@dataclass(frozen=True, slots=True)
class Request:
    """Client -> daemon: one operation, named by `op`, with its fields; `rid` is made by
    the client, and a repeated rid is not done twice."""

    op: str
    fields: dict[str, Any] = field(default_factory=dict)
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)

    CMD: ClassVar[Cmd] = Cmd.REQUEST

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.REQUEST, {"op": self.op, "rid": self.rid, **self.fields})

    @staticmethod
    def batch(op: str, rid: str, key: str, items: list[bytes]) -> list[bytes]:
        """A request whose `key` holds items already encoded by protocol.dumps (a batch of
        tasks is checked and encoded one task at a time, as the previous request goes out)."""
        return protocol.encode_batch(Cmd.REQUEST, key, items, {"op": op, "rid": rid})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Request:
        """BadInput (which the daemon sends back) when `op` is not a name."""
        op, rid = h.get("op"), h.get("rid")
        if not isinstance(op, str):
            raise BadInput(f"unknown request {op!r}")
        fields = {k: v for k, v in h.items() if k not in ("op", "rid")}
        return cls(op, fields, rid if isinstance(rid, str) else "")


@dataclass(frozen=True, slots=True)
class Reply:
    """Daemon -> client: the answer to request `rid`. `fields` are the op's (id, item,
    items, ...); a refusal has `error` instead, {"type", "message"}."""

    rid: str
    ok: bool = True
    fields: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    # The daemon's answers made outside an op (a wait's answer, the refusal of a request
    # it could not read or of a turn that failed) write "rid" and "ok" first, as they
    # always have: the bytes of earlier versions. Not read: a reader ignores key order.
    rid_first: bool = False

    CMD: ClassVar[Cmd] = Cmd.REPLY

    def header(self) -> dict[str, Any]:
        """As the daemon writes it: the op's fields, then "ok" (and "error"), then "rid"
        (with `rid_first`: "rid", "ok", "error", then the fields)."""
        if self.rid_first:
            header: dict[str, Any] = {"rid": self.rid, "ok": self.ok}
            if self.error is not None:
                header["error"] = self.error
            header.update(self.fields)
            return header
        header = {**self.fields, "ok": self.ok}
        if self.error is not None:
            header["error"] = self.error
        header["rid"] = self.rid
        return header

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.REPLY, self.header())

    @classmethod
    def refusing(cls, rid: str, error: MartinetError | str, message: str = "") -> Reply:
        """A refusal: of an error of ours, or of a type's name and a message."""
        kind = error if isinstance(error, str) else type(error).__name__
        return cls(rid, False, error={"type": kind, "message": message or str(error)})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Reply:
        rid = h.get("rid")
        if not isinstance(rid, str):
            raise ProtocolError("a REPLY without a request id")
        error = h.get("error")
        fields = {k: v for k, v in h.items() if k not in ("rid", "ok", "error")}
        return cls(rid, bool(h.get("ok")), fields, error if isinstance(error, dict) else None)

    def refusal(self) -> MartinetError:
        """A refusal as our error, of the class the daemon named."""
        error = self.error or {}
        cls = ERRORS.get(str(error.get("type")), MartinetError)
        return cls(error.get("message") or "the daemon refused the request")

    def unwrap(self) -> dict[str, Any]:
        """The whole header as the daemon sent it when ok, else its refusal raised."""
        if not self.ok:
            raise self.refusal()
        return self.header()


@dataclass(frozen=True, slots=True)
class Events:
    """Daemon -> a subscribed client: events in id order, each {"event": kind,
    "event_id", "at", ...} (see events.py). An older daemon sent one event as the header."""

    events: tuple[dict[str, Any], ...]

    CMD: ClassVar[Cmd] = Cmd.EVENT

    def encode(self) -> list[bytes]:
        return self.batch([protocol.dumps(e) for e in self.events])

    @staticmethod
    def batch(items: list[bytes]) -> list[bytes]:
        """An EVENT message of events already encoded (the daemon encodes each once)."""
        return protocol.encode_batch(Cmd.EVENT, "events", items)

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Events:
        given = h.get("events")
        items: list[Any] = given if isinstance(given, list) else [h]
        return cls(tuple(e for e in items if isinstance(e, dict)))
