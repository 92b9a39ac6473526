"""A worker's socket for tests that drive a Worker in process: it records what is sent."""

from __future__ import annotations

from martinet import protocol
from martinet.messages import Outcome
from martinet.protocol import Cmd


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[Cmd, dict]] = []

    def send_multipart(self, frames, flags=0) -> None:
        self.sent.append(protocol.decode(frames))

    def close(self, linger=None) -> None:
        pass

    def take(self, cmd: Cmd) -> list[dict]:
        """The headers of what was sent as `cmd`, forgotten once taken."""
        found = [h for c, h in self.sent if c is cmd]
        self.sent = [(c, h) for c, h in self.sent if c is not cmd]
        return found


def header(message) -> dict:
    """A typed message's header as it goes on the wire (martinet.messages)."""
    return protocol.decode(message.encode())[1]


def wire(message) -> tuple[Cmd, dict]:
    """A typed message as it goes on the wire: its command and header. An Outcome: DONE
    or FAILED and its item in an ENDED message, less "ok" (what a handler's end was
    reported as before typed messages)."""
    if isinstance(message, Outcome):
        item = message.item()
        del item["ok"]
        return Cmd.DONE if message.ok else Cmd.FAILED, item
    return protocol.decode(message.encode())
