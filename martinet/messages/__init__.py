"""One typed message per wire command, each read and checked in one place.

protocol.py frames a message (signature, version, command, JSON header); the
types here say what each header holds. Each is a frozen dataclass that writes
itself (`encode() -> frames`, its keys in the order peers have always written
them: the bytes on the wire are those of earlier versions) and reads itself
from a decoded header (`from_header`), checking what its reader relies on. A
header that does not hold what its command needs raises ProtocolError (a
request's op, BadInput: the daemon sends it back); added keys are ignored.

    worker socket   Hello, Welcome, Tasks (of Task), Reject, Cancel, HelloAgain,
                    Heartbeat, Bye                               (worker_socket.py)
    status socket   Outcome (of OutcomeKind) in Ended, Progress, Started, Ack
                                                                 (outcome.py)
    client socket   Request, Reply, Events                       (client_socket.py)

`decode(frames)` reads any of them. Batches that carry items encoded once
(ENDED, a batch request, EVENT) have a function that takes those bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from martinet import protocol
from martinet.messages.client_socket import ERRORS, Events, Reply, Request
from martinet.messages.outcome import (
    OUTCOME_CMDS,
    Ack,
    Ended,
    Outcome,
    OutcomeKind,
    Progress,
    Started,
    ended,
    pace_of,
)
from martinet.messages.worker_socket import (
    Bye,
    Cancel,
    Heartbeat,
    Held,
    Hello,
    HelloAgain,
    Reject,
    Task,
    Tasks,
    Welcome,
    most_held,
)
from martinet.protocol import Cmd

Message = (
    Hello | Welcome | Tasks | Reject | Cancel | HelloAgain | Heartbeat | Bye
    | Ended | Progress | Started | Ack | Request | Reply | Events
)  # fmt: skip

_READERS: dict[Cmd, Callable[[dict[str, Any]], Message]] = {
    Cmd.HELLO: Hello.from_header,
    Cmd.WELCOME: Welcome.from_header,
    Cmd.TASK: Tasks.from_header,
    Cmd.REJECT: Reject.from_header,
    Cmd.CANCEL: Cancel.from_header,
    Cmd.HELLO_AGAIN: HelloAgain.from_header,
    Cmd.HEARTBEAT: Heartbeat.from_header,
    Cmd.BYE: Bye.from_header,
    Cmd.PROGRESS: Progress.from_header,
    Cmd.STARTED: Started.from_header,
    Cmd.ACK: Ack.from_header,
    Cmd.REQUEST: Request.from_header,
    Cmd.REPLY: Reply.from_header,
    Cmd.EVENT: Events.from_header,
}


def read(cmd: Cmd, header: dict[str, Any]) -> Message:
    """A decoded header as its message (see decode)."""
    if cmd in OUTCOME_CMDS or cmd is Cmd.ENDED:
        return Ended.from_header(cmd, header)
    return _READERS[cmd](header)


def decode(frames: list[bytes]) -> Message:
    """Frames (without any identity frame) as their message, or ProtocolError (BadInput
    for a request whose op is not a name)."""
    cmd, header = protocol.decode(frames)
    return read(cmd, header)


__all__ = [
    "ERRORS",
    "Ack",
    "Bye",
    "Cancel",
    "Ended",
    "Events",
    "Heartbeat",
    "Held",
    "Hello",
    "HelloAgain",
    "Message",
    "Outcome",
    "OutcomeKind",
    "Progress",
    "Reject",
    "Reply",
    "Request",
    "Started",
    "Task",
    "Tasks",
    "Welcome",
    "decode",
    "ended",
    "most_held",
    "pace_of",
    "read",
]
