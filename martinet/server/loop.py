"""The event loop of `martinet serve`: the one server module that knows ZeroMQ.

It binds the three ROUTER sockets, polls them, drains what they hold, hands that to
the core (core.py), which writes it in one transaction and says what to send, and
sends it: replies, acks, events, then tasks. One thread owns everything here.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import peewee
import zmq

from martinet import protocol
from martinet.config import Settings, metrics_address
from martinet.errors import ConfigError, MartinetError, StoreError
from martinet.keys import SOCKET_ROLES, KeyPair, Keyring, is_loopback, load_pair, serve_with, sources_of
from martinet.messages import Ack
from martinet.retry import RetryPolicy
from martinet.server import presence
from martinet.server.core import Core
from martinet.server.lanes import Lanes
from martinet.server.outbox import Outbox
from martinet.server.peers import Peer, Peers
from martinet.server.state import Messages
from martinet.server.zap import ZapHandler
from martinet.store import Changes, Store, WalCheckpointer, listen_changes, open_database, redact

log = logging.getLogger("martinet.daemon")

LISTEN_RETRY = 1.0  # seconds between tries to listen again for other writers' tasks (PostgreSQL)
DRAIN_LIMIT = 2000  # messages read from one socket per turn: bounds a turn's latency
FD_ROOM = 128  # file descriptors kept for the database, the WAL, the metrics server and ZeroMQ itself
SPIN = 0.001  # seconds before a deadline when the loop stops sleeping and polls without waiting


class Daemon:
    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        port_option: str = "--{role}-port",
    ) -> None:
        self.settings = settings
        # How the caller names a port's setting in a port clash: a CLI flag, a keyword argument.
        self.port_option = port_option
        self.clock = clock
        self.epoch = secrets.token_hex(4)  # changes at each start; the database's identity does not
        self.core: Core | None = None  # made by open(), with the store
        self._checkpointer: WalCheckpointer | None = None
        # PostgreSQL: other writers' tasks, heard (store.listen); its socket and when to listen again
        self._changes: Changes | None = None
        self._changes_fd = -1
        self._listen_at: float | None = None
        self.ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self.ports: dict[str, int] = {}
        # With keys (server_secret_key): its pair, the keys it allows, and their handshakes.
        self.pair: KeyPair | None = None
        self.keyring: Keyring | None = None
        self._zap: ZapHandler | None = None
        self._reload_keys = False
        self._keys_checked = 0.0

    # What tests and callers look at, kept in the core.
    @property
    def store(self) -> Store | None:
        return None if self.core is None else self.core.store

    @property
    def peers(self) -> Peers:
        assert self.core is not None, "open() first"
        return self.core.peers

    @property
    def lanes(self) -> Lanes:
        assert self.core is not None, "open() first"
        return self.core.lanes

    @property
    def database_id(self) -> str:
        return "" if self.core is None else self.core.database_id

    # ---- life cycle ---------------------------------------------------------

    def open(self) -> None:
        """Bind the sockets and open the database; errors say what to change."""
        s = self.settings
        self.ctx = zmq.Context()
        try:
            self._secure(s)
            self.client = self._bind("client", s.client_port)
            self.worker = self._bind("worker", s.worker_port)
            self.status = self._bind("status", s.status_port)
            if self._zap is not None:
                for name, sock in (("client", self.client), ("worker", self.worker), ("status", self.status)):
                    self._zap.watch(sock, name)
                self._zap.start()
            db = open_database(s.db)
            self._changes = listen_changes(s.db)
        except BaseException:
            if self._zap is not None:
                self._zap.close()  # (its thread polls sockets of the context destroyed next)
                self._zap = None
            self.ctx.destroy(linger=0)
            raise
        if isinstance(db, peewee.SqliteDatabase):
            self._checkpointer = WalCheckpointer(db).start()
        retry = RetryPolicy(s.retry_base, s.retry_factor, s.retry_cap)
        store = Store(db, retry, s.poison_after, s.max_releases, daemon_id=self.epoch)
        self.core = Core(s, store, self.clock, self.epoch, store.database_id())
        self.core.keyring = self.keyring
        try:
            with store.atomic():
                now = self.clock()
                self.core.load_lanes(now)
                presence.register(self.core, self._address(), now)  # (SQLite: refused when another serves)
        except BaseException:
            self.close()
            raise
        address = metrics_address(s.metrics)
        if address is not None:
            self._serve_metrics(*address)
        self.poller = zmq.Poller()
        for sock in (self.client, self.worker, self.status):
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        if self._changes is not None:
            self._changes_fd = self._changes.fileno()
            self.poller.register(self._changes_fd, zmq.POLLIN)
        log.info(
            "martinet serving on %s (client %d, worker %d, status %d), database %s (id %s), epoch %s",
            s.bind,
            self.ports["client"],
            self.ports["worker"],
            self.ports["status"],
            redact(s.db),
            self.core.database_id,
            self.epoch,
        )

    def _secure(self, s: Settings) -> None:
        """Keys (CURVE), or plain text bound to loopback only, unless the operator says
        --insecure-bind; and, but on loopback without keys (this host's users are trusted
        there, and a new connection saves the handshake's round trip to another thread),
        the ZAP handler, which checks every connection (before any socket is bound: zap.py)."""
        assert self.ctx is not None
        if s.server_secret_key:
            self.pair = load_pair(s.server_secret_key)
            self.keyring = Keyring(
                {"worker": sources_of(s.worker_keys), "client": sources_of(s.client_keys),
                 "admin": sources_of(s.admin_keys)}
            )  # fmt: skip
            log.info("keys: every socket is CURVE; allowed: %s", self.keyring.summary())
        if not s.server_secret_key:
            if not is_loopback(s.bind):
                if not s.insecure_bind:
                    raise ConfigError(
                        f"martinet serve will not bind {s.bind} without keys: anyone who reaches its ports "
                        "could submit, read, change and run tasks. Give it keys (server_secret_key and "
                        "worker_keys, client_keys, admin_keys: docs/security.md), bind 127.0.0.1, or "
                        "start it with --insecure-bind on a network you trust"
                    )
                log.warning(
                    "serving %s without keys (--insecure-bind): anyone who reaches the ports may submit, "
                    "read, change and run tasks", s.bind,
                )  # fmt: skip
        if s.server_secret_key or s.insecure_bind or s.max_connections:
            self._zap = ZapHandler(self.ctx, self.keyring, max_connections(s), self._refused_at_handshake)

    def _refused_at_handshake(self, sock_name: str, reason: str) -> None:
        if self.core is not None and self.core.metrics is not None:
            self.core.metrics.refused(sock_name, reason)

    def reload_keys(self) -> None:
        """Read the allowed keys again at the next turn (SIGHUP); safe from signal handlers."""
        self._reload_keys = True
        self.stop_waiting()

    def _serve_metrics(self, host: str, port: int) -> None:
        """Metrics and health checks on their own thread (metrics.py), which reads queue
        depths on a connection of its own."""
        from martinet.server.metrics import DaemonMetrics  # prometheus_client: only when asked

        assert self.core is not None
        core = self.core
        metrics = core.metrics = DaemonMetrics(healthy_within=3 * self.settings.heartbeat_interval)
        reader = open_database(self.settings.db)
        reader.close()  # (this thread's: the server's threads connect for each scrape)
        try:
            self.ports["metrics"] = metrics.serve(host, port, Store(reader))
        except BaseException:
            self.close()
            raise

        def ready() -> str | None:
            trouble = core.db_health.trouble
            return None if trouble is None else f"the database fails: {trouble.message}"

        metrics.ready = ready
        metrics.workers.set(0)
        metrics.database_ok.set(1)

    def _address(self) -> str:
        """Where clients reach this daemon's client socket, as other hosts name it."""
        host = self.settings.bind
        if host in ("0.0.0.0", "*", "", "::"):
            host = socket.gethostname()
        return f"tcp://{host}:{self.ports['client']}"

    def _bind(self, role: str, port: int) -> zmq.Socket[bytes]:
        assert self.ctx is not None
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a gone peer raises, never vanishes
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.max_message(self.settings.max_payload))
        if self._zap is not None:
            sock.zap_domain = role.encode()  # its connections' handshakes ask the ZAP handler (zap.py)
        if self.pair is not None:
            serve_with(sock, self.pair)
        if role == "worker":
            # A turn sends after its commit, all at once: as many welcomes as hellos it read
            # from one connection (up to DRAIN_LIMIT), cancels, and a batch of tasks. The
            # default queue of 1,000 a peer would refuse the end of such a burst.
            sock.setsockopt(zmq.SNDHWM, 2 * DRAIN_LIMIT)
        try:
            if port == 0:
                port = sock.bind_to_random_port(f"tcp://{self.settings.bind}")
            else:
                sock.bind(f"tcp://{self.settings.bind}:{port}")
        except zmq.ZMQError as exc:
            sock.close(0)
            if exc.errno == errno.EADDRINUSE:
                raise MartinetError(
                    f"the {role} port {port} on {self.settings.bind} is already in use "
                    f"(is another martinet serve running?); choose another with "
                    f"{self.port_option.format(role=role)}"
                ) from None
            raise MartinetError(
                f"cannot bind the {role} socket to {self.settings.bind}:{port}: {exc}"
            ) from None
        self.ports[role] = port
        return sock

    def stop(self) -> None:
        """Ask the loop to finish its turn and exit; safe from signal handlers and threads."""
        self._stopping = True
        self.stop_waiting()

    def stop_waiting(self) -> None:
        """Wake the loop from its poll."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        if self.core is None:
            self.open()
        assert self.core is not None
        try:
            while not self._stopping:
                before = self.clock()
                deadline = self.core.next_deadline(before)
                if self._listen_at is not None:
                    deadline = min(deadline, self._listen_at)
                wait = _poll_ms(deadline - before)
                ready = dict(self.poller.poll(wait))
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                now = self.clock()
                self.core.not_listening(now - before - wait / 1000)
                if self.keyring is not None and (self._reload_keys or now >= self._keys_checked + 1.0):
                    self.keyring.refresh(force=self._reload_keys)  # (a few stats a second)
                    self._reload_keys, self._keys_checked = False, now
                if not ready and now < deadline:
                    continue  # woke early, on purpose: see _poll_ms
                try:
                    self._turn(ready, now, self._hear(ready, now))
                except Exception:  # a bug of ours: that turn is rolled back, the daemon lives on
                    log.exception("a turn of the loop failed; nothing of it was committed")
                self.core.not_listening(self.clock() - now)
        finally:
            self.close()

    def _hear(self, ready: dict[Any, int], now: float) -> list[dict[str, Any]] | None:
        """What other writers committed since the last turn (store.listen): their notes,
        or None when some may have been missed (listening again after a lost connection)."""
        if self._changes is not None:
            if self._changes_fd not in ready:
                return []
            notes = self._changes.take()
            if notes is not None:
                return notes
            self.poller.unregister(self._changes_fd)
            self._changes, self._listen_at = None, now  # (lost: listen again at once)
        if self._listen_at is None or now < self._listen_at:
            return []
        try:
            self._changes = listen_changes(self.settings.db)
        except StoreError as exc:
            log.warning("%s; trying again in %.0f s", exc, LISTEN_RETRY)
            self._listen_at = now + LISTEN_RETRY
            return []
        assert self._changes is not None  # (PostgreSQL: it listened before)
        self._changes_fd = self._changes.fileno()
        self.poller.register(self._changes_fd, zmq.POLLIN)
        self._listen_at = None
        log.info("listening again for tasks other writers commit")
        return None

    def close(self) -> None:
        if self._changes is not None:
            self._changes.close()
            self._changes = None
        if self.ctx is not None:
            for sock in (self.client, self.worker, self.status):
                sock.close(0)
            if self._zap is not None:
                self._zap.close()
            self.ctx.term()
            self.ctx = None
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self.core is not None and self.core.metrics is not None:
            self.core.metrics.close()
        if self.core is not None:
            try:
                with self.core.store.atomic():
                    presence.stopped(self.core, self.clock())
            except peewee.PeeweeException as exc:
                log.warning("could not mark this daemon stopped in its database: %s", exc)
            self.core.store.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        log.info("martinet stopped")

    # ---- one turn -------------------------------------------------------------

    def _turn(self, ready: dict[Any, int], now: float, heard: Sequence[dict[str, Any]] | None = ()) -> None:
        """Drain the sockets that hold messages, let the core write and decide, and send."""
        assert self.core is not None
        started = time.perf_counter()
        out = self.core.turn(
            self._drain(self.client, "client") if self.client in ready else [],
            self._drain(self.status, "status") if self.status in ready else [],
            self._drain(self.worker, "worker") if self.worker in ready else [],
            now,
            heard,
        )
        self._send_out(out, now)
        if self.core.metrics is not None:
            self.core.metrics.turned(time.perf_counter() - started)

    def _send_out(self, out: Outbox, now: float) -> None:
        """What a turn decided, in order: to workers, replies, acks, events, waits, tasks.
        (Tasks before replies made sequential calls with busy workers 0.86x as fast, in 4
        pairs of bench.py throughput: the client's next call waits for its reply. A lone
        task leased at once sent before its reply, tried three times on 2026-12-07, did
        not start sooner beyond the noise: docs/performance.md.)"""
        assert self.core is not None
        for ident, frames in out.always:
            self._send_raw(self.worker, ident, frames)
        for ident, message in out.worker:
            self._send_raw(self.worker, ident, message.encode())
        for ident, reply in out.replies:
            self._send_raw(self.client, ident, reply.encode())
        for ident, acks in out.acks.items():
            self._send_raw(self.status, ident, Ack(tuple(acks)).encode())
        self.core.hub.push(self._to_subscriber, out.events, now)
        self.core.hub.catch_up(self.core.store, self._to_subscriber, now)
        self.core.hub.follow(self.core.store, self._to_subscriber, now)
        for ident, reply in out.answers:
            self._send_raw(self.client, ident, reply.encode())
        self._send_tasks(out.tasks, now)

    def _send_tasks(self, batches: list[tuple[Peer, list[dict[str, Any]]]], now: float) -> None:
        if not batches:
            return
        assert self.core is not None
        for peer, rows, frames in self.core.task_messages(batches, self.clock(), now):
            if not self._send_raw(self.worker, peer.ident, frames):
                self.core.undelivered(peer, rows, now)
                continue
            if log.isEnabledFor(logging.DEBUG):
                log.debug("tasks %s sent to %s", [row["id"] for row in rows], peer.worker_id)

    def _drain(self, sock: zmq.Socket[bytes], name: str) -> Messages:
        if self.keyring is not None:
            return self._drain_keyed(sock, name)
        msgs: Messages = []
        while len(msgs) < DRAIN_LIMIT:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            msgs.append((frames[0], frames[1:]))
        return msgs

    def _drain_keyed(self, sock: zmq.Socket[bytes], name: str) -> Messages:
        """With keys: each message with the key its connection authenticated with (its
        User-Id), for the turn (State.key_of); a key no longer allowed on this socket (a
        reload removed it since the connection opened) has its messages dropped."""
        assert self.core is not None and self.keyring is not None
        keys = self.core.keys[name] = {}
        allowed = SOCKET_ROLES[name]
        msgs: Messages = []
        while len(msgs) < DRAIN_LIMIT:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            ident, key = parts[0].bytes, str(parts[-1].get("User-Id"))
            role = self.keyring.role_of(key)
            if role is None or role not in allowed:
                self.core.refused(
                    name, ident, "revoked",
                    f"dropped a message from a connection whose key {key[:8]}... is no longer allowed "
                    f"on the {name} socket (the keys were reloaded since it connected)",
                )  # fmt: skip
                continue
            keys[ident] = key
            msgs.append((ident, [part.bytes for part in parts[1:]]))
        return msgs

    def _send_raw(self, sock: zmq.Socket[bytes], ident: bytes, frames: list[bytes]) -> bool:
        try:
            sock.send_multipart([ident, *frames], zmq.NOBLOCK)
            return True
        except zmq.Again:  # its queue is full: it reads too slowly (a client resends, a worker says hello)
            log.warning("could not send %s to %r: its queue is full", protocol.describe(frames), ident[:16])
            return False
        except zmq.ZMQError as exc:  # gone (ROUTER_MANDATORY): its reconnect, or its silence, decides
            log.debug("could not send %s to %r: %s", protocol.describe(frames), ident, exc)
            return False

    def _to_subscriber(self, ident: bytes, frames: list[bytes]) -> str:
        """An EVENT message to a subscriber (events.Send)."""
        try:
            self.client.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.Again:
            return "full"
        except zmq.ZMQError as exc:
            log.debug("event subscriber %s gone: %s", ident.hex(), exc)
            return "gone"
        return "sent"


def max_connections(s: Settings) -> int:
    """The connections the daemon takes at once, on its three sockets together: the
    setting, else what its open-files limit leaves once the database and its own files
    have room (FD_ROOM)."""
    import resource  # (POSIX: the daemon's only)

    if s.max_connections:
        return s.max_connections
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, (soft if soft != resource.RLIM_INFINITY else 65536) - FD_ROOM)


def _poll_ms(wait: float) -> int:
    """How long to poll for messages, in whole milliseconds, `wait` seconds before a
    deadline. A poll timeout rounds to the millisecond, and a timer that fires a
    millisecond late is a millisecond late for every task it starts: so the loop
    sleeps until about SPIN before the deadline and polls without waiting after that.
    It never sleeps more than a second, so it notices a changed clock."""
    if wait <= SPIN:
        return 0
    return min(math.ceil((wait - SPIN) * 1000), 1000)
