"""The server's core: a turn. It takes what the sockets held (raw frames, per socket)
and `now`, writes it in one transaction with the turn's claims (group commit), and
returns an Outbox: what to send once committed. No sockets: the loop (loop.py) reads
and sends.

The state (state.py) changes as the turn goes, since a claim takes the slot an
outcome of the same turn freed; if the commit fails, the turn undoes those changes
exactly (Peers and Lanes keep what each change replaced, see their rollback), so that
an outcome its worker sends again frees its slot once, not twice.

The decisions live beside this module: workers.py (hello, reject, bye, a lost
worker), outcomes.py (the status socket), claims.py, timers.py (due tasks, ticks,
time limits, waits), ops.py and queue_ops.py (client requests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import peewee

from martinet import protocol
from martinet.dbhealth import describe
from martinet.errors import BadInput, Forbidden, MartinetError
from martinet.keys import ADMIN_OPS
from martinet.messages import HelloAgain, Reply, Request
from martinet.protocol import Cmd
from martinet.server import claims, elsewhere, ops, outcomes, timers, workers
from martinet.server.outbox import Outbox
from martinet.server.state import DB_ERRORS, Messages, State, error
from martinet.server.state import Request as Call
from martinet.store import TakeAgain

log = logging.getLogger("martinet.daemon")


class Core(State):
    """The state, and the turn that changes it."""

    def turn(
        self,
        client: Messages,
        status: Messages,
        worker: Messages,
        now: float,
        heard: Sequence[dict[str, Any]] | None = (),
    ) -> Outbox:
        """Read what arrived, write it and the turn's claims in one transaction (group
        commit), and say what to send: replies, acks, events, and tasks. `heard`: what
        other writers committed (elsewhere.py; None: some of it may have been missed)."""
        refusals: list[tuple[bytes, Reply]] = []
        if self.budgets.rate:
            client, status, worker = (self._within_budget(name, msgs, now, refusals) for name, msgs in (
                ("client", client), ("status", status), ("worker", worker)))  # fmt: skip
        if self.notes_lost:  # a turn that held notes was rolled back: look at everything
            heard, self.notes_lost = None, False
        try:
            out = self._written(client, status, worker, now, heard, refusals)
        except TakeAgain as exc:
            # Whose error it was is unknown (a write sent with a later statement, store/pg.py;
            # a request that failed where no savepoint was made, SqlKit.skipping_savepoints):
            # the turn is taken again with each write's error its own, so that a bad one
            # costs only itself.
            log.log(
                logging.DEBUG if exc.expected else logging.WARNING,
                "%s; taking the turn again, each write on its own", exc,
            )  # fmt: skip
            with self.store.writes_at_once():
                out = self._written(client, status, worker, now, heard, refusals)
        self.answer_waiters(out)
        return out

    def _written(
        self,
        client: Messages,
        status: Messages,
        worker: Messages,
        now: float,
        heard: Sequence[dict[str, Any]] | None,
        refusals: list[tuple[bytes, Reply]],
    ) -> Outbox:
        """The turn's transaction: what arrived and what it decides, written and committed
        (or rolled back, its state changes undone); what to send once it is over."""
        out = Outbox()
        out.replies.extend(refusals)
        troubled = self.db_health.trouble is not None
        changes = self.store.changes() if troubled else None
        saved = self._begin()
        self.hearing = heard is None or bool(heard)
        try:
            with self.store.atomic(), self.store.skipping_savepoints():
                for ident, frames in client:
                    self.on_client(ident, frames, out, now)
                if status:
                    outcomes.on_status_batch(self, status, out, now)
                for ident, frames in worker:
                    if self.heartbeat_of_known(ident, frames, now):
                        continue
                    with self.isolated(f"a message on the worker socket from {ident!r}"):
                        workers.on_worker(self, ident, frames, out, now)
                if heard is None or heard:
                    elsewhere.on_notes(self, heard, out, now)
                timers.run(self, out, now)
                claims.claim(self, out, now)
                recorded = bool(out.events or self.hub.pending)
                turn_events = [*self.hub.pending, *out.events] if recorded else []
                self.finished.stage(turn_events)
                if self.metrics is not None:
                    self.metrics.ended(turn_events)
                out.events = self.hub.record(self.store, out.events, now, ids=bool(self.hub.subscribers))
                elsewhere.tell(self, out, recorded, now)
                committing = time.perf_counter()
        except TakeAgain:
            self._undo(saved)  # (the transaction is rolled back): taken again by turn()
            raise
        except DB_ERRORS as exc:
            self._rollback(saved, exc, out, now)
            self.notes_lost = heard is None or bool(heard)
        except BaseException:  # a bug of ours (the loop logs it): nothing of the turn stands
            self._undo(saved)
            self.notes_lost = heard is None or bool(heard)
            raise
        else:
            self.finished.commit(now)
            if self.metrics is not None:
                self.metrics.committed(time.perf_counter() - committing)
            self.peers.commit()
            self.lanes.commit()
            # SQLite counts the rows changed: an empty commit proves nothing about a full disk.
            # Elsewhere any commit ends the trouble (no cheap count there).
            if troubled and (changes is None or self.store.changes() != changes):
                self.db_health.committed(now)
        return out

    def _begin(self) -> tuple[Any, ...]:
        """What a failed turn puts back: the tables keep their own (begin), the rest here."""
        self.peers.begin()
        self.lanes.begin()
        self._turn_waits = []
        self.made_ready = set()
        self.finished.drop()
        if self.metrics is not None:
            self.metrics.begin()
        return (self.next_tick, self.overdue_after, self.next_wakeup, len(self.ended_elsewhere))

    def _rollback(self, saved: tuple[Any, ...], exc: Exception, out: Outbox, now: float) -> None:
        """The turn's transaction failed: its state changes are undone exactly, clients
        learn why, and workers will send again what was not acknowledged. A worker that
        said hello in the turn is asked to say it again (its welcome was not sent)."""
        why = describe(exc, self.store.db)
        self.db_health.failed(why, now)
        if self.metrics is not None:
            self.metrics.database_ok.set(0)
        self.reconnect()
        out.rolled_back(
            error("StoreError", f"the daemon's database failed, so this request was not carried out: {why}")
        )
        self._undo(saved)
        again = HelloAgain(self.epoch).encode()
        out.always.extend((ident, again) for ident in dict.fromkeys(out.hellos))

    def _undo(self, saved: tuple[Any, ...]) -> None:
        """The state a rolled back turn changed, as it was before the turn."""
        self.peers.rollback()
        self.lanes.rollback()
        self.next_tick, self.overdue_after, self.next_wakeup, ended = saved
        del self.ended_elsewhere[ended:]
        for task_id, wait in self._turn_waits:  # its client was told the request failed
            waits = self.waiters.get(task_id, [])
            if wait in waits:
                waits.remove(wait)
            if not waits:
                self.waiters.pop(task_id, None)
        self.hub.pending = []  # events made in the turn that was rolled back
        self.wakeup_dirty = self.dispatch_pending = True
        self.rate_wakeup = None

    def _within_budget(
        self, sock_name: str, msgs: Messages, now: float, refusals: list[tuple[bytes, Reply]]
    ) -> Messages:
        """The messages within their connection's budget (budget.py); a request over it is
        refused with the reason, anything else dropped (outcomes are sent again)."""
        allow, rate = self.budgets.allow, self.settings.peer_rate
        kept: Messages = []
        for ident, frames in msgs:
            if allow(sock_name, ident, now):
                kept.append((ident, frames))
                continue
            self.refused(
                sock_name, ident, "rate", f"refused messages over {rate} a second from one connection"
            )
            if sock_name == "client" and (rid := protocol.recover_rid(frames)) is not None:
                why = f"over {rate} requests a second from one connection (the daemon's peer_rate): slow down"
                refusals.append((ident, Reply(rid, False, error=error("Busy", why), rid_first=True)))
        return kept

    def _admin_only(self, op: str, ident: bytes) -> None:
        """Forbidden unless the connection's key is an admin's (with keys)."""
        assert self.keyring is not None
        key = self.key_of("client", ident)
        if self.keyring.role_of(key) != "admin":
            name = self.keyring.names.get(key or "", "this connection's")
            self.refused("client", ident, "admin_only", f"refused {op}: the key {name} is not an admin's")
            raise Forbidden(
                f"{op} is an admin's request, and the key {name} is a client's: "
                "connect with a key listed in the daemon's admin_keys"
            )

    def on_client(self, ident: bytes, frames: list[bytes], out: Outbox, now: float) -> None:
        cmd, header = self.decode("client", ident, frames, out)
        if cmd is None:
            return
        if cmd is not Cmd.REQUEST:
            log.warning("dropped a %s command on the client socket from %r", cmd.name, ident)
            return
        # Echoed as it came: a rid that is not a string (not our client's) is its sender's
        # business, and was always sent back as it was (messages.Request reads it as "").
        rid = header.get("rid")
        op = header.get("op")
        reply: dict[str, Any] | None
        try:
            request = Request.from_header(header)  # BadInput when op is not a name
            handler = ops.OPS.get(request.op)
            if handler is None:
                raise BadInput(f"unknown request {op!r}")
            if self.keyring is not None and request.op in ADMIN_OPS:
                self._admin_only(request.op, ident)
            if len(frames[0]) > self.limits.max_payload:
                raise BadInput(
                    f"request is {len(frames[0])} bytes, over the limit of "
                    f"{self.limits.max_payload} (max_payload)"
                )
            with self.store.atomic():  # a savepoint: one bad request spoils no other
                reply = handler(Call(self, request.fields, now, out, ident, rid))
        except MartinetError as exc:
            out.replies.append((ident, Reply.refusing(rid, exc)))
            return
        except (peewee.IntegrityError, peewee.DataError) as exc:
            out.replies.append((ident, Reply.refusing(rid, "BadInput", f"the database refused it: {exc}")))
            return
        except (peewee.OperationalError, peewee.InterfaceError):
            out.replies.append((ident, Reply(rid)))  # answered with the turn's error (turn)
            raise  # the database itself is in trouble: the whole turn fails
        except Exception:  # a bug of ours must cost one request, never the daemon
            log.exception("request %r from %r failed unexpectedly", op, ident)
            why = "the daemon could not handle this request; see its log"
            out.replies.append((ident, Reply.refusing(rid, "InternalError", why)))
            return
        if reply is not None:
            out.replies.append((ident, Reply(rid, True, reply)))
