"""A worker's socket for tests that drive a Worker in process: it records what is sent."""

from __future__ import annotations

from martinet import protocol
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
