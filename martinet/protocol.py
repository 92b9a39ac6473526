"""The wire format, in one place. Pure: no sockets here.

A message is one frame (after the ROUTER's identity frame):

    SIGNATURE (4 bytes), version (1 byte), command (1 byte), JSON header

One frame, not three: every frame is a separate send through ZeroMQ, and on a
busy machine each costs tens of microseconds.

Headers are JSON objects; readers ignore keys they do not know and default
the ones that are missing, so either side can add fields without breaking
the other. Anything that does not decode raises ProtocolError carrying the
raw frames, which the daemon logs and drops (a request's sender is told why);
so does a header nested deeper than MAX_DEPTH. Frames after the first are ignored.
"""

from __future__ import annotations

import json
import re
from enum import IntEnum
from itertools import accumulate
from typing import Any

from martinet.errors import ProtocolError

VERSION = 2  # 1 sent the prefix, the command and the header as three frames
SIGNATURE = b"MRTN"
PREFIX = SIGNATURE + bytes([VERSION])

# How deeply a value a user gives us may nest lists and dicts: the args of a task, its
# result (validate.check_args and the worker's check of a result hold them to it).
# Under MariaDB's limit on a JSON document (32 levels: deeper, JSON_EXTRACT takes it
# for invalid, and a search on the args' fields would pass the task by), and deep
# enough for any real document.
MAX_VALUE_DEPTH = 30
# How deeply a frame's header may nest: a value above, plus the messages that carry it
# (4 levels at most today: a TASK's {"tasks": [{"parents": {id: result}}]}), plus room.
# Far from Python's recursion limit (1000 frames, which json.loads, json.dumps and repr
# all count against): decode refuses a deeper frame before json.loads sees it, for one
# a thousand levels deep made it raise RecursionError, which no caller expected.
MAX_DEPTH = 64
# A worker's outcome (a result, an error's traceback) or progress is bounded like a
# task's args: the result's JSON by max_payload, the rest trimmed to fit (worker.py).


def max_message(max_payload: int) -> int:
    """The largest message the daemon's sockets take (ZMQ_MAXMSGSIZE): a task's args or
    result of max_payload bytes, twice for escaping, and room for the rest. A larger one
    is not delivered: ZeroMQ drops it and the connection that sent it."""
    return max_payload * 2 + 65536


class Cmd(IntEnum):
    # client socket
    REQUEST = 0x01  # client -> daemon: {"op": ..., "rid": ...}
    REPLY = 0x02  # daemon -> client: {"rid": ..., "ok": bool, ...}
    EVENT = 0x03  # daemon -> subscribed client: {"events": [event, ...]}, in id order
    # worker socket
    HELLO = 0x10  # worker -> daemon: id, names, capacity, version, running, kept (items: their database)
    WELCOME = 0x11  # daemon -> worker: timings, epoch, max_payload and max_message, database (its identity)
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
    # (and "started", as in STARTED: written first)
    ACK = 0x23  # daemon -> worker: {"acks": [[id, attempt], ...]}, those outcomes are committed
    STARTED = 0x25  # worker -> daemon: {"started": [[id, attempt], ...]}, handlers took these


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


# One encoder for every message: json.dumps with options makes a new one at each call
# (about 1 µs of every message's encoding). Its output is json.dumps's with these options.
_JSON = json.JSONEncoder(separators=(",", ":"), default=str)


def encode(cmd: Cmd, header: dict[str, Any] | None = None) -> list[bytes]:
    body = _JSON.encode(header or {}).encode()
    return [PREFIX + bytes([cmd]) + body]


def dumps(item: Any) -> bytes:
    """One item of a batch, encoded once when it is made (see encode_batch)."""
    return _JSON.encode(item).encode()


def encode_batch(cmd: Cmd, key: str, items: list[bytes], header: dict[str, Any] | None = None) -> list[bytes]:
    """A message whose header holds, under `key`, a list of items already encoded by dumps()."""
    head = _JSON.encode({**(header or {}), key: []}).encode()
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
    body = frame[6:]
    if deeper_than(body, MAX_DEPTH):
        raise ProtocolError(
            f"header nests arrays and objects more than {MAX_DEPTH} levels deep (the limit)", frames
        )
    try:
        header = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}", frames) from None
    except RecursionError:  # not after deeper_than, unless the caller's own stack is nearly full
        raise ProtocolError("header nests too deeply to be read here", frames) from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object", frames)
    return _COMMANDS[frame[5]], header


# The structure of JSON text, its strings aside: a bracket that opens an array or an
# object becomes "(", one that closes it ")", and all but quotes is dropped.
_SHAPE = bytes.maketrans(b"[{]}", b"(())")
_NOT_SHAPE = bytes(set(range(256)) - set(b'[]{}"'))
_STEP = tuple(1 if c == ord("(") else -1 if c == ord(")") else 0 for c in range(256))
PEELS = 8  # passes of deeper_than's peeling; deeper (rare) text is measured in one more pass


def deeper_than(text: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` levels deep (invalid
    text also when it has that many open at once: a parser goes in before it finds out).

    All in C (bytes methods), for it runs on every frame: under a microsecond for most
    messages (fewer brackets than the limit), and for a batch of a thousand tasks a
    fraction of what json.loads costs."""
    shape = text.translate(_SHAPE, _NOT_SHAPE)
    if len(shape) - shape.count(b'"') <= limit:
        return False  # most messages: fewer brackets than the limit
    if b'\\"' in text:  # an escaped quote (or an escaped backslash before a quote) ends no string
        shape = text.replace(b"\\\\", b"").replace(b'\\"', b"").translate(_SHAPE, _NOT_SHAPE)
    shape = shape.replace(b'""', b"")  # strings without brackets (two quotes less keep the others' sides)
    if b'"' in shape:
        shape = b"".join(shape.split(b'"')[::2])  # strings with brackets: keep what is outside
    # Peel off the innermost pairs, a level a pass: after k passes, each "(" left opens a
    # level more than k deep, so a run of limit + 1 - k of them is too deep.
    for peeled in range(PEELS):
        if b"(" * (limit + 1 - peeled) in shape:
            return True
        inner = shape.replace(b"()", b"")
        if len(inner) == len(shape):  # nothing left, or only brackets that do not match
            return False
        shape = inner
    return PEELS + max(accumulate(map(_STEP.__getitem__, shape)), default=0) > limit


_RID = re.compile(rb'"rid":"([^"\\]{1,200})"')


def recover_rid(frames: list[bytes]) -> str | None:
    """The request id of a REQUEST that did not decode, when it can be seen near the
    start, where the client writes it: so that a refusal reaches its caller."""
    if not frames or frames[0][:6] != PREFIX + bytes([Cmd.REQUEST]):
        return None
    found = _RID.search(frames[0], 6, 1024)
    return None if found is None else found.group(1).decode(errors="replace")


def describe(frames: list[bytes], limit: int = 80) -> str:
    """A short, safe rendering of raw frames for a log line."""
    shown = b"|".join(f[:limit] for f in frames[:4])
    return repr(shown[: limit * 2])
