"""What one turn of the server decides to send: the core fills it, the loop sends it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from martinet.messages import Cancel, Reply, Welcome


@dataclass
class Outbox:
    """What a turn will send once its transaction is committed (the core fills it, the
    loop sends it: replies, acks, worker messages, events, wait answers, then tasks)."""

    replies: list[tuple[bytes, Reply]] = field(default_factory=list)  # to clients (ident, reply)
    acks: dict[bytes, list[tuple[int, int]]] = field(default_factory=dict)  # status ident: [(id, attempt)]
    events: list[Any] = field(default_factory=list)  # dicts; once recorded, (event id, body)
    ended: list[int] = field(default_factory=list)  # task ids whose waiters can be answered
    tasks: list[tuple[Any, list[dict[str, Any]]]] = field(
        default_factory=list
    )  # claimed: (peer, rows) to send
    # To workers, once committed: welcomes, cancels (worker ident, message).
    worker: list[tuple[bytes, Welcome | Cancel]] = field(default_factory=list)
    # To workers whatever becomes of the transaction (heartbeats, "say hello again"): frames.
    always: list[tuple[bytes, list[bytes]]] = field(default_factory=list)
    answers: list[tuple[bytes, Reply]] = field(default_factory=list)  # waits answered: after the events
    hellos: list[bytes] = field(default_factory=list)  # idents that said hello in this turn

    def send(self, ident: bytes, message: Welcome | Cancel) -> None:
        """A message to a worker, sent once the turn is committed."""
        self.worker.append((ident, message))

    def rolled_back(self, error: dict[str, Any]) -> None:
        """The turn's transaction failed: clients learn why; nothing else it decided is sent."""
        self.replies = [
            (ident, Reply(r.rid, False, error=error, rid_first=True)) for ident, r in self.replies
        ]
        self.acks, self.events, self.ended, self.tasks, self.worker = {}, [], [], [], []
