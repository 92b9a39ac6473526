"""The daemon's decisions driven in process: a real Daemon on a real store, no worker
processes, a clock the test sets. Its sockets are bound (to free ports on 127.0.0.1)
but nothing connects to them: what a turn would send is read from its Outbox."""

from __future__ import annotations

from typing import Any

from martinet import protocol
from martinet.config import Settings
from martinet.daemon import Daemon, Outbox
from martinet.present import maybe_task_info
from martinet.protocol import Cmd
from martinet.store import Outcome

T0 = 1_800_000_000.0


class Core:
    def __init__(self, db_url: str, **settings: Any) -> None:
        self.now = T0
        base = {"db": db_url, "client_port": 0, "worker_port": 0, "status_port": 0, "log_level": "WARNING"}
        self.daemon = Daemon(Settings(**{**base, **settings}), clock=lambda: self.now)
        self.daemon.open()
        self.store = self.daemon.store

    def close(self) -> None:
        self.daemon.close()

    def request(self, op: str, **fields: Any) -> dict:
        """A client request handled as a turn would (committed), and its reply."""
        out = Outbox()
        frames = protocol.encode(Cmd.REQUEST, {"op": op, "rid": "r", **fields})
        with self.store.atomic():
            self.daemon._on_client(b"client", frames, out, self.now)
        (reply,) = [r for _ident, r in out.replies]
        assert reply["ok"], reply
        return reply

    def refusal(self, op: str, **fields: Any) -> dict:
        """A client request the daemon refuses, handled as a turn would: its error
        ({"type": ..., "message": ...})."""
        out = Outbox()
        frames = protocol.encode(Cmd.REQUEST, {"op": op, "rid": "r", **fields})
        with self.store.atomic():
            self.daemon._on_client(b"client", frames, out, self.now)
        (reply,) = [r for _ident, r in out.replies]
        assert not reply["ok"], reply
        return reply["error"]

    def submit(self, name: str, queue: str | None = None, **fields: Any) -> int:
        if queue is not None:
            fields["queue"] = queue
        return self.request("execute", name=name, args={}, **fields)["id"]

    def hello(self, worker_id: str, names: list[str], capacity: int = 4, **fields: Any) -> None:
        header = {"worker_id": worker_id, "names": names, "capacity": capacity, **fields}
        with self.store.atomic():
            self.daemon._on_hello(worker_id.encode(), header, self.now)

    def reconnect(self, worker_id: str, names: list[str], capacity: int = 4, **fields: Any) -> None:
        """A hello from `worker_id` on a new connection (another ident than `hello`'s)."""
        header = {"worker_id": worker_id, "names": names, "capacity": capacity, **fields}
        with self.store.atomic():
            self.daemon._on_hello(f"{worker_id}/again".encode(), header, self.now)

    def claim(self) -> dict[str, list[dict]]:
        """A turn's timers and claims (committed, not sent) while every worker keeps
        sending heartbeats: {worker id: rows}."""
        for peer in self.daemon.peers:
            self.daemon.peers.seen(peer.worker_id, self.now)
        out = Outbox()
        with self.store.atomic():
            self.daemon._timers(out, self.now)
            self.daemon._claim(out, self.now)
        return {peer.worker_id: rows for peer, rows in out.tasks}

    def tick(self) -> None:
        """A turn's timers, the once-an-interval ones included; no worker heard from."""
        self.daemon._next_tick = self.now
        with self.store.atomic():
            self.daemon._timers(Outbox(), self.now)

    def claimed_names(self) -> list[str]:
        return sorted(row["name"] for rows in self.claim().values() for row in rows)

    def succeed(self, task_id: int, attempt: int = 1) -> dict | None:
        worker = maybe_task_info(self.store.get_task(task_id))["worker"]
        out = Outbox()
        with self.store.atomic():
            self.daemon._on_outcomes(
                [(b"status", Outcome(task_id, attempt, worker, "succeeded"))], out, self.now
            )
        return maybe_task_info(self.store.get_task(task_id))

    def status(self, *messages: tuple[Cmd, dict]) -> Outbox:
        """Messages from workers' status sockets, read in one turn (committed)."""
        out = Outbox()
        msgs = [(b"status", protocol.encode(cmd, header)) for cmd, header in messages]
        with self.store.atomic():
            self.daemon._on_status_batch(msgs, out, self.now)
        return out
