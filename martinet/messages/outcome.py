"""The end of an attempt: what a worker reports and the store writes (one type, four kinds).

On the wire an outcome is one item of an ENDED message (older workers: a DONE or
FAILED message of its own), a JSON object whose "ok" says DONE or FAILED. Two kinds
travel in another's clothes, as they always have, so that old and new peers agree:

- a release (martinet.Release) is a FAILED item with "release": true;
- a cancel before start (the daemon's CANCEL came while the task waited for its due
  time) is a DONE item with a null result. The daemon cannot tell it from a success
  returning None, and needs not: the task was asked to stop, so the store ends it
  cancelled whichever way its attempt ended. Decoded, it is SUCCEEDED.

In code each is its own kind; the clothes are put on in `item()` and taken off in
`from_item()`, here and nowhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

from martinet import protocol
from martinet.errors import ProtocolError
from martinet.messages.fields import is_id, is_positive, is_worker_id, session_of
from martinet.protocol import Cmd
from martinet.validate import MAX_ERROR_MESSAGE, MAX_TRACEBACK, clean_tail, clean_text, finite

MAX_RETRY_IN = 366 * 86400.0  # a handler's retry or release delay is bounded to a year
MAX_REASON = 1000  # characters of a release's reason the daemon keeps


class OutcomeKind(StrEnum):
    """How an attempt ended, as its worker says. The values are the store's words."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RELEASED = "released"  # given back (martinet.Release): no attempt spent
    CANCELLED = "cancelled"  # asked to stop before it started (sent as a success with no result)


_SUCCEEDED, _CANCELLED, _RELEASED = OutcomeKind.SUCCEEDED, OutcomeKind.CANCELLED, OutcomeKind.RELEASED
OUTCOME_CMDS = (Cmd.DONE, Cmd.FAILED)  # an outcome of its own, as workers before ENDED sent it


class Outcome(NamedTuple):
    """One attempt's end. Its first eight fields are those of the store's Outcome (the
    store takes it as it is); `retry` and `database` are the worker's, for the wire.

    A NamedTuple, not a frozen dataclass like the messages: one is made for every task
    (by its worker, and again by the daemon that reads it), and a frozen dataclass of
    ten fields takes about 1.5 µs more to make (each field set through object.__setattr__)."""

    task_id: int
    attempt: int
    worker: str
    kind: OutcomeKind
    result: Any = None
    error: dict[str, Any] | None = None
    retry_in: float | None = None  # failed: the handler's own delay; released: when to run again
    final: bool = False  # failed for good (martinet.Fail): no retry
    retry: bool = False  # the handler raised martinet.Retry (its retry_in, None too, goes on the wire)
    database: str = ""  # the identity of the database its task came from ("": not known)

    @property
    def ok(self) -> bool:
        """Whether it travels as DONE."""
        return self.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.CANCELLED)

    def item(self) -> dict[str, Any]:
        """The item of an ENDED message, its keys in the order workers always wrote them."""
        task_id, attempt, _worker, kind, result, error, retry_in, final, retry, database = self
        item: dict[str, Any]
        if kind is _SUCCEEDED or kind is _CANCELLED:
            item = {
                "id": task_id,
                "attempt": attempt,
                "result": result if kind is _SUCCEEDED else None,
                "ok": True,
            }
        else:
            item = {"id": task_id, "attempt": attempt, "error": error}
            if kind is _RELEASED:
                item["release"] = True
                item["retry_in"] = retry_in
            elif retry:
                item["retry_in"] = retry_in
            if final:
                item["final"] = True
            item["ok"] = False
        if database:  # a daemon of another database refuses it
            item["database"] = database
        return item

    def body(self) -> bytes:
        """The item encoded, as an ENDED message carries it and a journal keeps it."""
        return protocol.dumps(self.item())

    def encode(self) -> list[bytes]:
        """A DONE or FAILED message of its own, from `worker` (what workers before ENDED sent)."""
        item = self.item()
        del item["ok"]
        return protocol.encode(Cmd.DONE if self.ok else Cmd.FAILED, {"worker_id": self.worker, **item})

    @classmethod
    def from_item(cls, item: Any, worker: str, max_payload: int | None = None) -> Outcome:
        """An item of an ENDED message (or a DONE or FAILED header, with "ok"), checked and
        bounded as the store takes it: text cleaned and cut, a delay made finite and kept
        within a year. With `max_payload`, a result larger than that as JSON (from a worker
        that does not check it: older, or not ours) becomes the failure a worker would have
        reported. ProtocolError when it has no valid id and attempt."""
        if not isinstance(item, dict) or not is_id(item.get("id")) or not is_id(item.get("attempt")):
            raise ProtocolError("an outcome without a valid id and attempt")
        task_id, attempt = item["id"], item["attempt"]
        database = item.get("database")
        database = database if isinstance(database, str) else ""
        if item.get("ok"):
            result = item.get("result")
            if max_payload is not None and (size := len(protocol.dumps(result))) > max_payload:
                message = (
                    f"the handler's result is {size} bytes as JSON, over the limit of "
                    f"{max_payload} (max_payload)"
                )
                too_big = {"type": "ValueError", "message": message, "traceback": None}
                return cls(task_id, attempt, worker, OutcomeKind.FAILED, error=too_big, database=database)
            # Positional: the daemon reads one for every task, and keywords cost more.
            return cls(task_id, attempt, worker, _SUCCEEDED, result, None, None, False, False, database)
        given = item.get("error")
        error: dict[str, Any] = given if isinstance(given, dict) else {}
        retry_in = finite(item.get("retry_in"))
        retry_in = None if retry_in is None else min(max(0.0, retry_in), MAX_RETRY_IN)
        if item.get("release"):
            reason = clean_text(error.get("message") or "", MAX_REASON) or "released"
            return cls(
                task_id, attempt, worker, OutcomeKind.RELEASED, error={"type": "Release", "message": reason},
                retry_in=retry_in, database=database,
            )  # fmt: skip
        error = {
            "type": clean_text(error.get("type") or "Error", 255),
            "message": clean_text(error.get("message") or "", MAX_ERROR_MESSAGE),
            "traceback": clean_tail(error.get("traceback"), MAX_TRACEBACK) or None,
        }
        return cls(
            task_id, attempt, worker, OutcomeKind.FAILED, error=error, retry_in=retry_in,
            final=bool(item.get("final")), retry="retry_in" in item, database=database,
        )  # fmt: skip

    @classmethod
    def from_body(cls, body: bytes, worker: str) -> Outcome:
        """An item as `body()` wrote it (a journal's), read back; ProtocolError if it is not one."""
        try:
            item = json.loads(body)
        except ValueError as exc:
            raise ProtocolError(f"an outcome that is not JSON: {exc}", [body]) from None
        return cls.from_item(item, worker)


def ended(
    worker_id: str,
    bodies: list[bytes],
    started: list[list[int]] | None = None,
    session: str | None = None,
    pace: float | None = None,
) -> list[bytes]:
    """An ENDED message: outcomes already encoded (`Outcome.body`), and the starts that
    came before them (the daemon writes those first). `session`: what the worker's
    welcome gave it (the daemon takes status messages only with it). `pace`: the seconds
    its handlers took a task of late (pace_of; older daemons ignore it)."""
    header: dict[str, Any] = {"worker_id": worker_id}
    if session is not None:
        header["session"] = session
    if started:
        header["started"] = started
    if pace is not None:
        header["pace"] = float(f"{pace:.3g}")
    return protocol.encode_batch(Cmd.ENDED, "ended", bodies, header)


MAX_PACE = 86_400.0  # seconds a task, as a worker's pace says at most


def pace_of(h: dict[str, Any]) -> float | None:
    """An ENDED header's pace, if it is one: the seconds, above 0, its worker's handlers
    took a task of late."""
    pace = h.get("pace")
    return float(pace) if is_positive(pace) and pace <= MAX_PACE else None


@dataclass(frozen=True, slots=True)
class Ended:
    """A worker's ENDED (or DONE, FAILED) message, read: its outcomes and its starts.
    Items without a valid id and attempt are left out and counted in `dropped`."""

    worker_id: str
    outcomes: tuple[Outcome, ...]
    started: tuple[tuple[int, int], ...] = ()
    dropped: int = 0
    session: str | None = None
    pace: float | None = None

    def encode(self) -> list[bytes]:
        bodies = [o.body() for o in self.outcomes]
        return ended(self.worker_id, bodies, [list(s) for s in self.started], self.session, self.pace)

    @classmethod
    def from_header(cls, cmd: Cmd, h: dict[str, Any], max_payload: int | None = None) -> Ended:
        """ProtocolError when it has no valid worker_id or no list of outcomes."""
        worker_id = h.get("worker_id")
        if cmd is Cmd.ENDED:
            items = h.get("ended")
        elif cmd in OUTCOME_CMDS:
            items = [{**h, "ok": cmd is Cmd.DONE}]
        else:
            raise ProtocolError(f"{cmd.name} is not an outcome")
        if not isinstance(worker_id, str) or not is_worker_id(worker_id) or not isinstance(items, list):
            raise ProtocolError(f"a {cmd.name} without a valid worker_id")
        outcomes, dropped = [], 0
        for item in items:
            try:
                outcomes.append(Outcome.from_item(item, worker_id, max_payload))
            except ProtocolError:
                dropped += 1
        return cls(
            worker_id, tuple(outcomes), started_items(h.get("started")), dropped, session_of(h), pace_of(h)
        )


def started_items(value: Any, limit: int = 10_000) -> tuple[tuple[int, int], ...]:
    """A list of [id, attempt] pairs (STARTED, ENDED, ACK), checked and bounded: others left out."""
    if not isinstance(value, list):
        return ()
    return tuple(
        (item[0], item[1])
        for item in value[:limit]
        if isinstance(item, list) and len(item) == 2 and is_id(item[0]) and is_id(item[1])
    )


@dataclass(frozen=True, slots=True)
class Started:
    """Worker -> daemon: handlers took these attempts (leased -> running)."""

    worker_id: str
    started: tuple[tuple[int, int], ...]
    session: str | None = None

    CMD: ClassVar[Cmd] = Cmd.STARTED

    def encode(self) -> list[bytes]:
        header: dict[str, Any] = {"worker_id": self.worker_id, "started": [list(s) for s in self.started]}
        if self.session is not None:
            header["session"] = self.session
        return protocol.encode(Cmd.STARTED, header)

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Started:
        worker_id = h.get("worker_id")
        if not is_worker_id(worker_id) or not isinstance(h.get("started"), list):
            raise ProtocolError("a STARTED without a valid worker_id")
        return cls(worker_id, started_items(h["started"]), session_of(h))


@dataclass(frozen=True, slots=True)
class Ack:
    """Daemon -> worker: these outcomes, (id, attempt), are committed."""

    acks: tuple[tuple[int, int], ...]

    CMD: ClassVar[Cmd] = Cmd.ACK

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.ACK, {"acks": [list(a) for a in self.acks]})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Ack:
        acks = h.get("acks")
        if not isinstance(acks, list):
            raise ProtocolError("an ACK without a list of acks")
        return cls(started_items(acks, len(acks)))


@dataclass(frozen=True, slots=True)
class Progress:
    """Worker -> daemon: how far a running attempt is (coalesced: the latest wins)."""

    task_id: int
    attempt: int
    name: str | None
    progress: float | None
    message: str | None
    worker_id: str = ""
    session: str | None = None

    CMD: ClassVar[Cmd] = Cmd.PROGRESS
    MAX_MESSAGE: ClassVar[int] = 1000  # characters of a progress message the daemon keeps

    def encode(self) -> list[bytes]:
        header = {"id": self.task_id, "attempt": self.attempt, "name": self.name, "progress": self.progress,
                  "message": self.message, "worker_id": self.worker_id}  # fmt: skip
        if self.session is not None:
            header["session"] = self.session
        return protocol.encode(Cmd.PROGRESS, header)

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Progress:
        """Checked and bounded as the daemon stores it: a finite number, a cleaned message."""
        worker_id = h.get("worker_id")
        if not is_worker_id(worker_id):
            raise ProtocolError("a PROGRESS without a valid worker_id")
        if not is_id(h.get("id")) or not is_id(h.get("attempt")):
            raise ProtocolError("a PROGRESS without a valid id and attempt")
        name = h.get("name")
        return cls(
            h["id"], h["attempt"], name if isinstance(name, str) else None, finite(h.get("progress")),
            clean_text(h.get("message"), cls.MAX_MESSAGE), worker_id, session_of(h),
        )  # fmt: skip
