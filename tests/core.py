"""The server's decisions driven in process: its core (martinet/server/core.py) on a real
store, no worker processes, a clock the test sets. A real Daemon (the loop) is opened,
its sockets bound to free ports on 127.0.0.1 but with nothing connected: what a turn
would send is read from its Outbox. `server` is the core, `daemon` the loop."""

from __future__ import annotations

from typing import Any

from martinet import protocol
from martinet.config import Settings
from martinet.messages import Ack, Cancel
from martinet.present import maybe_task_info
from martinet.protocol import Cmd
from martinet.server import claims, timers
from martinet.server.loop import Daemon
from martinet.server.outbox import Outbox
from martinet.server.outcomes import on_outcomes, on_status_batch
from martinet.server.workers import hello_of, on_hello
from martinet.store import Outcome

T0 = 1_800_000_000.0


class Core:
    def __init__(self, db_url: str, **settings: Any) -> None:
        self.now = T0
        base = {"db": db_url, "client_port": 0, "worker_port": 0, "status_port": 0, "log_level": "WARNING"}
        self.daemon = Daemon(Settings(**{**base, **settings}), clock=lambda: self.now)
        self.daemon.open()
        self.server = self.daemon.core
        self.store = self.server.store
        self.cancels: list[tuple[bytes, int]] = []  # CANCELs the turns of claim() and tick() would send
        # Tasks a request leased to an idle worker as it inserted them (claims.lease_at_once):
        # sent with its turn's, so the next claim() or turn() returns them first.
        self.leased: list[tuple[Any, list[dict]]] = []

    def close(self) -> None:
        self.daemon.close()

    def request(self, op: str, **fields: Any) -> dict:
        """A client request handled as a turn would (committed), and its reply."""
        out = Outbox()
        frames = protocol.encode(Cmd.REQUEST, {"op": op, "rid": "r", **fields})
        with self.store.atomic():
            self.server.on_client(b"client", frames, out, self.now)
        self.leased += out.tasks
        (reply,) = [r.header() for _ident, r in out.replies]
        assert reply["ok"], reply
        return reply

    def refusal(self, op: str, **fields: Any) -> dict:
        """A client request the daemon refuses, handled as a turn would: its error
        ({"type": ..., "message": ...})."""
        out = Outbox()
        frames = protocol.encode(Cmd.REQUEST, {"op": op, "rid": "r", **fields})
        with self.store.atomic():
            self.server.on_client(b"client", frames, out, self.now)
        (reply,) = [r.header() for _ident, r in out.replies]
        assert not reply["ok"], reply
        return reply["error"]

    def submit(self, name: str, queue: str | None = None, **fields: Any) -> int:
        if queue is not None:
            fields["queue"] = queue
        return self.request("execute", name=name, **{"args": {}, **fields})["id"]

    def hello(self, worker_id: str, names: list[str], capacity: int = 4, **fields: Any) -> Outbox:
        """A worker's hello on the connection b"<worker_id>", handled (committed); the Outbox
        holds the welcome."""
        header = {"worker_id": worker_id, "names": names, "capacity": capacity, **fields}
        out = Outbox()
        with self.store.atomic():
            ident = worker_id.encode()
            on_hello(self.server, ident, hello_of(self.server, ident, header), out, self.now)
        return out

    def signed(self, header: dict) -> dict:
        """A status message's header as its worker sends it: with the session its welcome
        gave it (unless the header says one, or its worker is not connected)."""
        peer = self.server.peers.get(header.get("worker_id"))
        if "session" in header or peer is None:
            return header
        return {**header, "session": peer.session}

    def reconnect(
        self, worker_id: str, names: list[str], capacity: int = 4, connection: str = "again", **fields: Any
    ) -> None:
        """A hello from `worker_id` on a new connection (another ident than `hello`'s, named
        by `connection`), with the session its last welcome gave it, as a worker that
        reconnects says it."""
        peer = self.server.peers.get(worker_id)
        if peer is not None:
            fields.setdefault("session", peer.session)
        header = {"worker_id": worker_id, "names": names, "capacity": capacity, **fields}
        with self.store.atomic():
            ident = f"{worker_id}/{connection}".encode()
            on_hello(self.server, ident, hello_of(self.server, ident, header), Outbox(), self.now)

    def claim(self) -> dict[str, list[dict]]:
        """A turn's timers and claims (committed, not sent) while every worker keeps
        sending heartbeats: {worker id: rows}."""
        for peer in self.server.peers:
            self.server.peers.seen(peer.worker_id, self.now)
        out = Outbox()
        with self.store.atomic():
            timers.run(self.server, out, self.now)
            claims.claim(self.server, out, self.now)
        self.cancels += [(ident, m.task_id) for ident, m in out.worker if isinstance(m, Cancel)]
        claimed: dict[str, list[dict]] = {}
        for peer, rows in [*self._take_leased(), *out.tasks]:
            claimed.setdefault(peer.worker_id, []).extend(rows)
        return claimed

    def _take_leased(self) -> list[tuple[Any, list[dict]]]:
        taken, self.leased = self.leased, []
        return taken

    def tick(self) -> None:
        """A turn's timers, the once-an-interval ones included; no worker heard from."""
        self.server.next_tick = self.now
        out = Outbox()
        with self.store.atomic():
            timers.run(self.server, out, self.now)
        self.cancels += [(ident, m.task_id) for ident, m in out.worker if isinstance(m, Cancel)]

    def claimed_names(self) -> list[str]:
        return sorted(row["name"] for rows in self.claim().values() for row in rows)

    def succeed(self, task_id: int, attempt: int = 1) -> dict | None:
        worker = maybe_task_info(self.store.get_task(task_id))["worker"]
        out = Outbox()
        with self.store.atomic():
            on_outcomes(
                self.server, [(b"status", Outcome(task_id, attempt, worker, "succeeded"))], out, self.now
            )
        return maybe_task_info(self.store.get_task(task_id))

    def status(self, *messages: tuple[Cmd, dict]) -> Outbox:
        """Messages from workers' status sockets, read in one turn (committed)."""
        out = Outbox()
        msgs = [(b"status", protocol.encode(cmd, self.signed(header))) for cmd, header in messages]
        with self.store.atomic():
            on_status_batch(self.server, msgs, out, self.now)
        return out

    def turn(
        self,
        *,
        client: list[tuple[Cmd, dict] | list[bytes]] = (),
        worker: list[tuple[bytes, Cmd, dict] | tuple[bytes, list[bytes]]] = (),
        status: list[tuple[Cmd, dict] | list[bytes]] = (),
        fail: bool = False,
        heard: bool = True,
    ) -> list[tuple[str, bytes, Cmd, dict]]:
        """A whole turn of the core, as the loop gives it these messages (client and status
        ones from the idents b"client" and b"status"; a message is (command, header), or its
        frames as they came off the wire), and what the loop would send once it
        is over: (socket, ident, command, header), TASK messages last. With `fail`, the
        turn's commit fails (its last statement raises), as when the database goes away.
        Connected workers are heard from (heartbeats) unless `heard` is false."""
        import peewee

        core = self.server
        for peer in core.peers if heard else ():  # its workers keep sending heartbeats
            core.peers.seen(peer.worker_id, self.now)
        record = core.hub.record

        def failing(*args, **kwargs):
            raise peewee.OperationalError("disk I/O error (a test made the commit fail)")

        if fail:
            core.hub.record = failing
        try:
            out = core.turn(
                [(b"client", _frames(m)) for m in client],
                [
                    (b"status", _frames(m if isinstance(m, list) else (m[0], self.signed(m[1]))))
                    for m in status
                ],
                [(m[0], _frames(m[1:])) for m in worker],
                self.now,
            )
        finally:
            core.hub.record = record
        sent = [("worker", ident, *protocol.decode(frames)) for ident, frames in out.always]
        sent += [("worker", ident, *protocol.decode(m.encode())) for ident, m in out.worker]
        sent += [("client", ident, *protocol.decode(r.encode())) for ident, r in [*out.replies, *out.answers]]
        sent += [("status", ident, *protocol.decode(Ack(tuple(a)).encode())) for ident, a in out.acks.items()]
        tasks = core.task_messages([*self._take_leased(), *out.tasks], self.now, self.now)
        sent += [("worker", peer.ident, *protocol.decode(frames)) for peer, _rows, frames in tasks]
        return sent


def _frames(message: tuple | list[bytes]) -> list[bytes]:
    """(command, header) encoded, or (frames,) / frames as they are."""
    if isinstance(message, list):
        return message
    return message[0] if len(message) == 1 else protocol.encode(*message)
