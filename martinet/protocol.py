"""The wire format, in one place. Pure: no sockets here.

A message is one frame (after the ROUTER's identity frame):

    SIGNATURE (4 bytes), version (1 byte), command (1 byte), JSON header

One frame, not three: every frame is a separate send through ZeroMQ, and on a
busy machine each costs tens of microseconds.

Headers are JSON objects; readers ignore keys they do not know and default
the ones that are missing, so either side can add fields without breaking
the other. Anything that does not decode raises ProtocolError carrying the
raw frames, which the daemon logs and drops. Frames after the first are ignored.
"""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Any

from martinet.errors import ProtocolError

VERSION = 2  # 1 sent the prefix, the command and the header as three frames
SIGNATURE = b"MRTN"
PREFIX = SIGNATURE + bytes([VERSION])


class Cmd(IntEnum):
    # client socket
    REQUEST = 0x01  # client -> daemon: {"op": ..., "rid": ...}
    REPLY = 0x02  # daemon -> client: {"rid": ..., "ok": bool, ...}
    EVENT = 0x03  # daemon -> subscribed client: {"events": [event, ...]}, in id order
    # worker socket
    HELLO = 0x10  # worker -> daemon: id, names, capacity, version, running
    WELCOME = 0x11  # daemon -> worker: timings and epoch
    TASK = 0x12  # daemon -> worker: {"tasks": [task, ...]}, leased to it in one turn (start_in: not before)
    HEARTBEAT = 0x13  # both ways; any message also counts as one
    REJECT = 0x14  # worker -> daemon: cannot run this task here
    HELLO_AGAIN = 0x15  # daemon -> unknown peer: please say hello again
    BYE = 0x16  # worker -> daemon: leaving
    CANCEL = 0x17  # daemon -> worker: ask a running task to stop
    # status socket
    PROGRESS = 0x20  # worker -> daemon, coalesced (latest wins)
    DONE = 0x21  # worker -> daemon: one attempt succeeded {"id", "attempt", "result"}; acknowledged
    FAILED = 0x22  # worker -> daemon: one attempt failed {"id", "attempt", "error", ...}; acknowledged
    ENDED = 0x24  # worker -> daemon: {"ended": [outcome, ...]}, several DONE/FAILED headers, each with "ok"
    ACK = 0x23  # daemon -> worker: {"acks": [[id, attempt], ...]}, those outcomes are committed


_COMMANDS = {c.value: c for c in Cmd}

# The kinds of EVENT, {"events": [{"event": kind, "event_id": n, "at": iso, ...}, ...]}
# (see events.py). The end of an attempt is named by the task's new status.
EVENT_KINDS = (
    "progress",
    "succeeded",
    "failed",  # the attempt failed and another will come (at run_at)
    "dead",  # it failed with no attempts left
    "cancelled",
    "stalled",
    "released",  # the handler gave the task back (martinet.Release): it runs again later
    "interrupted",  # its worker shut down while running it: back to the queue, no attempt spent
    "malformed",  # the daemon dropped a message it could not read
)


def encode(cmd: Cmd, header: dict[str, Any] | None = None) -> list[bytes]:
    body = json.dumps(header or {}, separators=(",", ":"), default=str).encode()
    return [PREFIX + bytes([cmd]) + body]


def dumps(item: Any) -> bytes:
    """One item of a batch, encoded once when it is made (see encode_batch)."""
    return json.dumps(item, separators=(",", ":"), default=str).encode()


def encode_batch(cmd: Cmd, key: str, items: list[bytes], header: dict[str, Any] | None = None) -> list[bytes]:
    """A message whose header holds, under `key`, a list of items already encoded by dumps()."""
    head = json.dumps({**(header or {}), key: []}, separators=(",", ":"), default=str).encode()
    body = head[:-2] + b",".join(items) + b"]}"  # ...,"key":[ + items + ]}
    return [PREFIX + bytes([cmd]) + body]


def decode(frames: list[bytes]) -> tuple[Cmd, dict[str, Any]]:
    """Frames (without any identity frame) to (command, header), or ProtocolError."""
    if not frames:
        raise ProtocolError("an empty message", frames)
    frame = frames[0]
    if len(frame) < 5 or frame[:4] != SIGNATURE:
        raise ProtocolError("not a martinet message (bad signature)", frames)
    if frame[4] != VERSION:
        raise ProtocolError(
            f"protocol version {frame[4]} is not supported (this side speaks {VERSION})", frames
        )
    if len(frame) < 6 or frame[5] not in _COMMANDS:
        raise ProtocolError(f"unknown command {frame[5:6]!r}", frames)
    try:
        header = json.loads(frame[6:])
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}", frames) from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object", frames)
    return _COMMANDS[frame[5]], header


def describe(frames: list[bytes], limit: int = 80) -> str:
    """A short, safe rendering of raw frames for a log line."""
    shown = b"|".join(f[:limit] for f in frames[:4])
    return repr(shown[: limit * 2])
