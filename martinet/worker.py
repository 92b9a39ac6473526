"""The loop of `martinet-worker`: say hello, run what the daemon sends, report back.

The main thread owns both sockets. Handlers run in a pool of threads and hand
their progress and outcomes to the main thread through a queue (plus a pipe
that wakes its poll). Outcomes wait in an outbox until the daemon acknowledges
that it committed them, so a daemon restart loses none of them; with a journal
(martinet/journal.py) the outbox is on disk too, written before it is sent, so
a worker killed and started again loses none of them either.

Every outcome is for the database its task came from (the identity the daemon's
welcome gives): the outbox holds those of the database of the daemon the worker
talks to, and only those are sent or said held in a hello; the others wait aside
(`_parked`) until the worker talks to a daemon of their database again.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from martinet import protocol
from martinet.compose import check as check_compositions
from martinet.config import Settings
from martinet.errors import Fail, JournalError, ProtocolError, Release, Retry, TaskTimeout
from martinet.journal import UNKNOWN, Journal
from martinet.protocol import MAX_VALUE_DEPTH, Cmd, deeper_than
from martinet.registry import LIMITS, REGISTRY, check_limits, task  # noqa: F401 - martinet.worker.task still works
from martinet.validate import MAX_ERROR_MESSAGE, MAX_TRACEBACK, cut_end, keep_end

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


class TaskContext:
    """What a handler gets as its first argument: who it is, and a way to talk back."""

    def __init__(
        self,
        task_id: int,
        attempt: int,
        name: str,
        args: dict,
        report: Callable,
        timeout: float | None = None,
    ) -> None:
        self.id = task_id
        self.attempt = attempt
        self.name = name
        self.args = args
        self.timeout = timeout
        self.parents: dict[int, Any] = {}  # what the tasks it waited on (after=) returned
        self._report = report
        self._cancel = threading.Event()
        # Time-limit bookkeeping, shared by the handler's thread and the worker's loop.
        self._lock = threading.Lock()
        self._thread: int | None = None  # ident of the thread running the handler, while it does
        self._deadline: float | None = None  # set when the handler starts: waiting in line is free
        self._start_at: float | None = None  # (monotonic) sent ahead of its due time: not before then
        self._abandon_at: float | None = None
        self._finished = False  # its thread has its outcome: too late to abandon it
        self._abandoned = False  # its thread was replaced: it must not rejoin the pool
        self._database = UNKNOWN  # the identity of the database it came from (the daemon's welcome)
        self._started = False  # a thread took it (the daemon is told: STARTED); else it waits in line

    @property
    def cancelled(self) -> bool:
        """True once the daemon asked this task to stop; long handlers should check it."""
        return self._cancel.is_set()

    def progress(self, value: float | None = None, message: str | None = None) -> None:
        """Report progress (0.0 to 1.0) and a short message; streamed on the status socket."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = None  # the daemon keeps numbers only; anything else could not travel
        self._report(
            Cmd.PROGRESS,
            {
                "id": self.id,
                "attempt": self.attempt,
                "name": self.name,
                "progress": value,
                "message": None if message is None else cut_end(str(message), MAX_PROGRESS_MESSAGE),
            },
        )


@dataclass
class _Pending:
    """An outcome the daemon has not acknowledged yet, encoded once."""

    body: bytes
    sent_at: float = 0.0
    database: str = UNKNOWN  # the identity of the database its task came from


# What an outcome may weigh, until the daemon's welcome says (a daemon older than these
# fields says nothing: its defaults). A result over max_payload fails its attempt; an
# error is trimmed to fit (_fit_error); no outcome is sent that the daemon's sockets
# would drop (ZeroMQ drops a message over max_message, and the connection with it).
DEFAULT_MAX_PAYLOAD = Settings.max_payload
MAX_PROGRESS_MESSAGE = 1000  # characters of a progress message (the daemon keeps 1000)
ERROR_BYTES_MIN = 16_384  # an error may take this many bytes of JSON even when max_payload is less
FRAME_ROOM = 1024  # bytes of a message beside its outcomes (the command, worker id, commas)

BATCH_ITEMS = 500  # outcomes in one ENDED message at most
# Default prefetch per thread. Short tasks need depth: each daemon commit then carries
# tens of outcomes and claims (with 1 per thread the daemon spent about 28 % more CPU
# per task, measured in-process). The daemon fills idle threads fleet-wide before any
# prefetch, so a short queue is never hoarded by one worker; for long tasks use --prefetch 0.
PREFETCH_PER_THREAD = 4
BATCH_BYTES = 256 * 1024  # and about this many bytes (one larger outcome still goes alone)
# A task sent ahead of its due time (start_in, see daemon.TIMER_LEAD) is held this long
# at most, whatever start_in says: a thread waits for it meanwhile.
MAX_START_IN = 1.0

# Seconds between attempts to write a journal that could not be written (a full disk,
# say): each is one small SQLite transaction, so the worker takes tasks again about a
# second after there is room, at no cost worth counting meanwhile.
JOURNAL_RETRY = 1.0
JOURNAL_REMIND = 60.0  # seconds between log lines while the journal still cannot be written

# TEST ONLY: MARTINET_FAULT=exit_before_send makes the worker os._exit(FAULT_EXIT)
# right after it journaled an outcome and before it sends it (tests/test_journal.py).
FAULT_EXIT_BEFORE_SEND = "exit_before_send"
FAULT_EXIT = 86


@dataclass
class WorkerOptions:
    # The defaults of settings a worker shares with `martinet-worker` and the config file
    # are Settings' (config.py), where each says why it has that value.
    connect: str = Settings.connect
    worker_port: int = Settings.worker_port
    status_port: int = Settings.status_port
    concurrency: int = Settings.concurrency
    # Tasks held beyond `concurrency`, waiting for a free thread, so that a thread that
    # finishes finds its next task here instead of waiting for the daemon, and the daemon
    # writes many outcomes and claims in each commit. None: PREFETCH_PER_THREAD per
    # thread; 0: none (a worker holds only what it runs).
    prefetch: int | None = None
    worker_id: str | None = None
    heartbeat_interval: float = Settings.heartbeat_interval  # until the daemon's welcome says otherwise
    liveness: int = Settings.liveness
    grace: float = 30.0  # seconds a graceful stop waits for running handlers
    # Seconds a handler gets to unwind after its time limit before its thread is abandoned.
    timeout_grace: float = Settings.timeout_grace
    handlers: dict[str, Handler] = field(default_factory=dict)
    queues: list[str] | None = None  # the queues this worker serves; None serves every queue
    # Where the worker journals the outcomes not acknowledged yet: a path, True
    # for the default file in the state directory (what martinet-worker does), or False
    # for no journal (what a Worker made in Python does unless asked).
    journal: str | os.PathLike | bool = False


class Worker:
    def __init__(self, options: WorkerOptions | None = None, **kwargs: Any) -> None:
        self.options = options or WorkerOptions(**kwargs)
        o = self.options
        fresh_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self._journal: Journal | None = None
        if o.journal:
            self._journal = (
                Journal.open_default(o.worker_id, f"{o.connect}:{o.worker_port}")
                if o.journal is True
                else Journal.open(o.journal)
            )
            try:  # a restarted worker is the same worker to the daemon: its leases are its own
                self.worker_id = self._journal.claim_worker_id(o.worker_id, fresh_id)
            except JournalError:
                self._journal.close()
                raise
        else:
            self.worker_id = o.worker_id or fresh_id
        self.handlers: dict[str, Handler] = dict(o.handlers) if o.handlers else dict(REGISTRY)
        self._events: queue.Queue = queue.Queue()
        self._jobs: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        self._wake_pending = False  # a byte is in the pipe: handlers need not write another
        self._running: dict[int, TaskContext] = {}
        self._timed: dict[int, TaskContext] = {}  # those of _running with a time limit (some ended)
        # Outcomes not acknowledged yet, for the database of the daemon we talk to; those
        # for other databases wait aside, by (database, id, attempt), never sent to it.
        self._outbox: dict[tuple[int, int], _Pending] = {}
        self._parked: dict[tuple[str, int, int], _Pending] = {}
        self._parked_told: set[str] = set()  # databases whose waiting outcomes the log has named
        self._database: str | None = None  # the identity of the daemon's database (its welcome)
        self._fault = os.environ.get("MARTINET_FAULT")
        self._max_payload = DEFAULT_MAX_PAYLOAD  # read by handler threads; the welcome sets it
        self._max_message = protocol.max_message(DEFAULT_MAX_PAYLOAD)
        # While the journal cannot be written: why, since when, when to try again. The
        # worker then takes no tasks (its outcomes could not be kept) and says so.
        self._journal_trouble: str | None = None
        self._journal_since = self._journal_retry_at = self._journal_logged_at = 0.0
        if self._journal is not None:
            self._recover(self._journal)
        self._stopping = False
        self._stop_deadline = 0.0
        self._epoch: str | None = None
        self._welcomed = False
        self._last_heard = 0.0
        self._next_heartbeat = 0.0
        self._interval = o.heartbeat_interval
        self._liveness = o.liveness
        self._threads: list[threading.Thread] = []
        self._limits: dict[str, dict | None] = {}  # set with on(); wins over LIMITS
        threads = max(1, o.concurrency)
        self.capacity = threads + max(0, PREFETCH_PER_THREAD * threads if o.prefetch is None else o.prefetch)

    def on(self, name: str, fn: Handler, *, concurrency: int | None = None, rate: str | None = None) -> None:
        """Serve task `name` with `fn(task, **args)`; limits as in `@martinet.task`."""
        self._limits[name] = check_limits(name, concurrency, rate)
        self.handlers[name] = fn

    def stop(self) -> None:
        """Graceful stop: take no more tasks, finish running ones within the grace period."""
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = time.monotonic() + self.options.grace
        self._wake()

    def _recover(self, journal: Journal) -> None:
        """Take over the outcomes a previous run of this worker left unacknowledged: those
        for the database of the daemon it talked to last go in the outbox (its hello says
        it holds them; a daemon of another database does not take them, and its welcome
        puts them aside), the others wait aside. Those whose database is not known (a
        journal of an older martinet) are kept in the journal and never sent."""
        last = journal.database()
        unknown = 0
        for database, task_id, attempt, body in journal.recover():
            if database == UNKNOWN:
                unknown += 1
            elif database == last:
                self._outbox[(task_id, attempt)] = _Pending(body, database=database)
            else:
                self._parked[(database, task_id, attempt)] = _Pending(body, database=database)
        if self._outbox or self._parked:
            log.info(
                "worker %s: journal %s holds %d unacknowledged outcome(s) from a previous run; "
                "sending them to the daemon of their database",
                self.worker_id, journal.path, len(self._outbox) + len(self._parked),
            )  # fmt: skip
        if unknown:
            log.warning(
                "worker %s: journal %s holds %d outcome(s) written by an older martinet, which does "
                "not say which database they are for: they are kept there and never sent (sent to "
                "a daemon of another database, they would end its tasks with results not theirs); "
                "their tasks run again. Once no daemon waits for them, stop this worker and delete "
                "the file to drop them",
                self.worker_id, journal.path, unknown,
            )  # fmt: skip

    # ---- the loop -------------------------------------------------------------

    def run(self) -> None:
        o = self.options
        self.handlers = check_compositions(self.handlers)  # a missing step stops us here
        if not self.handlers:
            log.warning("worker %s has no handlers registered", self.worker_id)
        for _ in range(max(1, o.concurrency)):
            self._start_thread()
        self.ctx = zmq.Context()
        self._connect()
        log.info(
            "worker %s connecting to %s (worker %d, status %d) for %s",
            self.worker_id,
            o.connect,
            o.worker_port,
            o.status_port,
            ", ".join(sorted(self.handlers)),
        )
        try:
            while True:
                now = time.monotonic()
                if self._stopping:
                    self._hand_back_waiting()
                if self._stopping and (not self._running or now >= self._stop_deadline):
                    if self._running:
                        log.warning("grace period over; tasks %s go back to the queue", sorted(self._running))
                    break
                timeout = self._poll_timeout(now)
                ready = dict(self.poller.poll(int(timeout * 1000) + 1))
                if self._wake_r in ready:
                    os.read(self._wake_r, 65536)
                    with self._wake_lock:
                        self._wake_pending = False
                self._drain_events()
                if self.wsock in ready:
                    self._drain_worker_socket()
                if self.ssock in ready:
                    self._drain_status_socket()
                self._timers(time.monotonic())
            self._flush_outbox_before_exit()
            self._send(self.wsock, Cmd.BYE, {})
        finally:
            self._close_sockets()
            self.ctx.term()
            self._close_journal()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            log.info("worker %s stopped", self.worker_id)

    def _poll_timeout(self, now: float) -> float:
        """Seconds the loop may wait for a message: until the next heartbeat or the next
        time limit that comes due (a handler that starts wakes the loop to set its own),
        so that a limit is enforced on time, not up to a poll late."""
        due = self._next_heartbeat
        for task_id, ctx in list(self._timed.items()):
            if self._running.get(task_id) is not ctx:
                del self._timed[task_id]  # ended: forgotten here lazily
                continue
            for at in (ctx._deadline, ctx._abandon_at):
                if at is not None and at < due:
                    due = at
        return max(0.0, min(due - now, 0.5))

    def _close_journal(self) -> None:
        if self._journal is None:
            return
        try:
            self._journal.close()
        except JournalError as exc:
            log.warning("%s", exc)

    def _connect(self) -> None:
        o = self.options
        self.wsock = self._dealer(o.worker_port)
        self.ssock = self._dealer(o.status_port)
        self.poller = zmq.Poller()
        self.poller.register(self.wsock, zmq.POLLIN)
        self.poller.register(self.ssock, zmq.POLLIN)
        self.poller.register(self._wake_r, zmq.POLLIN)
        self._welcomed = False
        self._last_heard = time.monotonic()
        self._next_heartbeat = self._last_heard + self._interval
        self._hello()

    def _dealer(self, port: int) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.connect(f"tcp://{self.options.connect}:{port}")
        return sock

    def _close_sockets(self) -> None:
        for sock in (self.wsock, self.ssock):
            sock.close(0)

    def _hello(self) -> None:
        self._send(self.wsock, Cmd.HELLO, self._hello_header())

    def _hello_header(self) -> dict:
        # No names: no task is sent to it (stopping, or its journal cannot keep outcomes).
        names = [] if self._stopping or self._journal_trouble else sorted(self.handlers)
        limits = {n: self._limits[n] if n in self._limits else LIMITS.get(n) for n in names}
        return {
            "worker_id": self.worker_id,
            "names": names,
            "capacity": self.capacity,
            "threads": max(1, self.options.concurrency),
            "version": protocol.VERSION,
            "starts": True,  # it says when a handler starts a task (STARTED)
            "running": self._held_list(),
            # Outcomes kept for other databases: a daemon of one of them takes its own as
            # held (readopted), the others are not its tasks. Older daemons ignore this key.
            "kept": [{"id": i, "attempt": a, "database": d} for d, i, a in self._parked if d],
            "queues": None if self.options.queues is None else list(self.options.queues),
            "limits": {n: dict(lim) for n, lim in limits.items() if lim},
        }

    def _held_list(self) -> list[dict]:
        """What this worker holds, for the daemon to re-adopt: tasks running or waiting for a
        thread, and tasks whose outcome is not acknowledged yet (so that their attempt stays
        open for it, even if the daemon had given up on us)."""
        held = {c.id: (c.attempt, c._database, c._started) for c in self._running.values()}
        for (task_id, attempt), pending in self._outbox.items():
            held.setdefault(task_id, (attempt, pending.database, True))
        # With their database: a daemon of another one does not take them as its tasks.
        # "started": a handler took it (its start report may have been lost with the connection).
        return [
            {"id": i, "attempt": a, "started": started, **({"database": d} if d else {})}
            for i, (a, d, started) in held.items()
        ]

    def _send(self, sock: zmq.Socket, cmd: Cmd, header: dict) -> None:
        try:
            sock.send_multipart(protocol.encode(cmd, header), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("send of %s would block; dropped (it is resent if it matters)", cmd.name)

    def _recv_all(self, sock: zmq.Socket):
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                yield protocol.decode(frames)
            except ProtocolError as exc:
                log.warning("dropped a malformed frame from the daemon: %s", exc)

    def _drain_worker_socket(self) -> None:
        for cmd, h in self._recv_all(self.wsock):
            self._last_heard = time.monotonic()
            if cmd is Cmd.TASK:
                tasks = h.get("tasks")
                for task in tasks if isinstance(tasks, list) else ():
                    if isinstance(task, dict):
                        self._on_task(task)
            elif cmd is Cmd.WELCOME:
                self._on_welcome(h)
            elif cmd is Cmd.HELLO_AGAIN:
                log.info("daemon asked worker %s to say hello again", self.worker_id)
                self._welcomed = False  # perhaps another daemon: nothing is sent until its welcome
                self._hello()
            elif cmd is Cmd.CANCEL:
                ctx = self._running.get(h.get("id"))
                if ctx is not None:
                    log.info("task %s attempt %s asked to stop", ctx.id, ctx.attempt)
                    ctx._cancel.set()

    def _on_welcome(self, h: dict) -> None:
        self._interval = float(h.get("heartbeat_interval") or self._interval)
        self._liveness = int(h.get("liveness") or self._liveness)
        # The next heartbeat was timed with our own interval; the daemon's may be shorter.
        self._next_heartbeat = min(self._next_heartbeat, time.monotonic() + self._interval)
        epoch = h.get("epoch")
        if self._epoch is not None and epoch != self._epoch:
            log.info("daemon restarted (epoch %s -> %s)", self._epoch, epoch)
        self._epoch = epoch
        payload, message = h.get("max_payload"), h.get("max_message")
        if isinstance(payload, int) and not isinstance(payload, bool) and payload >= 1:
            self._max_payload = payload
        if isinstance(message, int) and not isinstance(message, bool) and message > 2 * FRAME_ROOM:
            self._max_message = message
        else:
            self._max_message = protocol.max_message(self._max_payload)
        database = h.get("database")
        database = database if isinstance(database, str) and database else None  # None: an older daemon
        if self._database is not None and database != self._database:
            log.info("the daemon's database is another one now (id %s -> %s)", self._database, database)
        self._database = database
        if database is not None and self._journal is not None:
            try:
                self._journal.tie(database)
            except JournalError as exc:  # it only decides what the next start says first
                log.debug("%s", exc)
        self._welcomed = True
        self._sort_outbox(database or UNKNOWN)
        self._send_outcomes(list(self._outbox.values()))  # anything unacknowledged goes again

    def _sort_outbox(self, database: str) -> None:
        """Outcomes for `database` in the outbox, the others aside (those it takes back
        were in the hello's `kept`: the daemon readopted them)."""
        for (task_id, attempt), pending in list(self._outbox.items()):
            if pending.database != database:
                self._parked[(pending.database, task_id, attempt)] = self._outbox.pop((task_id, attempt))
        back = [key for key in self._parked if key[0] == database] if database != UNKNOWN else []
        for key in back:
            self._outbox[key[1:]] = self._parked.pop(key)
        if back:
            log.info(
                "worker %s: sending %d outcome(s) kept for this daemon's database (%s)",
                self.worker_id, len(back), database,
            )  # fmt: skip
        self._tell_parked()

    def _tell_parked(self) -> None:
        """Say once for each database that outcomes for it wait aside: where, why, what to do."""
        path = self._journal.path if self._journal is not None else None
        where = f"in the journal {path}" if path else "in memory"
        drop = (
            f"stop this worker and delete {path} to drop them" if path else "they go when this worker stops"
        )
        for other, count in Counter(key[0] for key in self._parked).items():
            if other not in self._parked_told:
                self._parked_told.add(other)
                log.warning(
                    "worker %s: %d unacknowledged outcome(s) are for tasks of another database (id %s) "
                    "than this daemon's (id %s): they are kept %s, not sent here, where tasks with the "
                    "same ids are other tasks. They go to a daemon of that database when this worker "
                    "talks to one again; if that database is gone, %s",
                    self.worker_id, count, other or "unknown", self._database or "unknown", where, drop,
                )  # fmt: skip

    def _on_task(self, h: dict) -> None:
        task_id, attempt, name = h.get("id"), h.get("attempt"), h.get("name")
        args = h.get("args") if isinstance(h.get("args"), dict) else {}
        reason = None
        if name not in self.handlers:
            reason = f"worker {self.worker_id} has no handler for {name!r}"
        elif self._stopping:
            reason = f"worker {self.worker_id} is shutting down"
        elif self._journal_trouble:
            reason = f"worker {self.worker_id} cannot write its journal"
        elif len(self._running) >= self.capacity:
            reason = f"worker {self.worker_id} has no free slot"
        if reason:
            self._send(
                self.wsock, Cmd.REJECT, {"id": task_id, "attempt": attempt, "name": name, "reason": reason}
            )
            return
        timeout = h.get("timeout") if isinstance(h.get("timeout"), (int, float)) else None
        ctx = TaskContext(task_id, attempt, name, args, self._report, timeout)
        ctx._database = self._database or UNKNOWN
        start_in = h.get("start_in")
        if isinstance(start_in, (int, float)) and start_in > 0:
            ctx._start_at = time.monotonic() + min(start_in, MAX_START_IN)
        if isinstance(h.get("parents"), dict):
            ctx.parents = {int(k): v for k, v in h["parents"].items() if str(k).isdigit()}
        self._running[task_id] = ctx
        if timeout:
            self._timed[ctx.id] = ctx
        log.debug("task %s %s attempt %s leased to %s", task_id, name, attempt, self.worker_id)
        self._jobs.put(ctx)

    def _hand_back_waiting(self, reason: str | None = None) -> None:
        """Stopping (or unable to journal): tasks that no thread has started go back to
        the daemon at once."""
        reason = reason or f"worker {self.worker_id} is shutting down"
        while True:
            try:
                ctx = self._jobs.get_nowait()
            except queue.Empty:
                return
            del self._running[ctx.id]
            self._send(
                self.wsock,
                Cmd.REJECT,
                {"id": ctx.id, "attempt": ctx.attempt, "name": ctx.name, "reason": reason},
            )

    def _drain_status_socket(self) -> None:
        for cmd, h in self._recv_all(self.ssock):
            now = self._last_heard = time.monotonic()
            acks = h.get("acks") if cmd is Cmd.ACK else None
            for ack in acks if isinstance(acks, list) else ():
                if isinstance(ack, list) and len(ack) == 2:
                    pending = self._outbox.pop((ack[0], ack[1]), None)
                    if pending is not None and self._journal is not None:
                        self._journal.acked(pending.database, ack[0], ack[1], now)

    def _drain_events(self) -> None:
        """Progress goes out as it comes; the outcomes of one pass go in one ENDED message,
        once the journal has them. Starts go out ahead of the progress that follows them,
        else with the pass's ENDED message (the daemon writes a message's starts before
        its outcomes, in one turn: a thread that ended one task and took the next starts
        that one when the other ended, not before), else in one STARTED message."""
        ended = []
        parked = False
        started: list[list[int]] = []
        while True:
            try:
                cmd, header = self._events.get_nowait()
            except queue.Empty:
                break
            ctx = self._running.get(header["id"])
            if ctx is None or ctx.attempt != header["attempt"]:
                continue  # from a handler abandoned at its time limit: already reported
            if cmd is Cmd.STARTED:
                if ctx._database == (self._database or UNKNOWN):  # else its daemon is not this one
                    started.append([ctx.id, ctx.attempt])
                continue
            if cmd is Cmd.PROGRESS:
                if started:  # in order: the daemon reads a start before the progress after it
                    self._send(self.ssock, Cmd.STARTED, {"worker_id": self.worker_id, "started": started})
                    started = []
                header["worker_id"] = self.worker_id
                self._send(self.ssock, cmd, header)
                continue
            del self._running[ctx.id]
            header["ok"] = cmd is Cmd.DONE
            if ctx._database:  # the daemon of another database refuses it
                header["database"] = ctx._database
            pending = _Pending(protocol.dumps(header), database=ctx._database)
            if self._journal is not None:
                self._journal.ended(ctx._database, ctx.id, ctx.attempt, pending.body)
            if ctx._database != (self._database or UNKNOWN):  # its daemon was of another database
                self._parked[(ctx._database, ctx.id, ctx.attempt)] = pending
                parked = True
                continue
            self._outbox[(ctx.id, ctx.attempt)] = pending
            ended.append(pending)
        if parked:
            self._tell_parked()
        if started and not ended:
            self._send(self.ssock, Cmd.STARTED, {"worker_id": self.worker_id, "started": started})
        if not ended and not parked:
            return
        if self._journal is not None and self._journal_trouble is None:
            self._commit_journal(time.monotonic())  # write-ahead: on disk before it leaves
        if not ended:
            return
        if self._fault == FAULT_EXIT_BEFORE_SEND:
            log.warning("MARTINET_FAULT=%s: exiting before sending %d outcome(s)", self._fault, len(ended))
            os._exit(FAULT_EXIT)
        self._send_outcomes(ended, started)

    def _send_outcomes(self, pendings: list[_Pending], started: list[list[int]] | None = None) -> None:
        """Send outcomes in ENDED messages of bounded size, each within what the daemon's
        sockets take; they stay in the outbox until acked. The first message carries
        `started` (starts are not resent: see _held_list)."""
        now = time.monotonic()
        budget = min(BATCH_BYTES, self._max_message - FRAME_ROOM)
        batch: list[bytes] = []
        size = len(protocol.dumps(started)) + 12 if started else 0  # ',"started":' and its list
        for pending in pendings:
            if len(pending.body) > self._max_message - FRAME_ROOM:
                self._too_large(pending)
            if batch and (len(batch) >= BATCH_ITEMS or size + len(pending.body) > budget):
                self._send_batch(batch, started)
                batch, size, started = [], 0, None
            pending.sent_at = now
            batch.append(pending.body)
            size += len(pending.body) + 1
        if batch:
            self._send_batch(batch, started)

    def _too_large(self, pending: _Pending) -> None:
        """An outcome no message to the daemon could carry (a journal's, written under a
        larger limit, say): sent as the failure it is, never again as it was."""
        size = len(pending.body)
        outcome = json.loads(pending.body)
        task_id, attempt = outcome["id"], outcome["attempt"]
        error = {"type": "ValueError", "message": f"the outcome is {size} bytes as JSON, over the limit "
                 f"of {self._max_message - FRAME_ROOM} of a message to the daemon (max_payload "
                 f"{self._max_payload})"}  # fmt: skip
        log.error("task %s attempt %s: %s; sent as a failure", task_id, attempt, error["message"])
        failure = {"id": task_id, "attempt": attempt, "error": error, "ok": False}
        if pending.database:  # still for its own database only
            failure["database"] = pending.database
        pending.body = protocol.dumps(failure)
        if self._journal is not None:  # replaces it with the next commit
            self._journal.ended(pending.database, task_id, attempt, pending.body)

    def _send_batch(self, bodies: list[bytes], started: list[list[int]] | None = None) -> None:
        header: dict = {"worker_id": self.worker_id}
        if started:
            header["started"] = started
        frames = protocol.encode_batch(Cmd.ENDED, "ended", bodies, header)
        try:
            self.ssock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("send of %d outcome(s) would block; they go again later", len(bodies))

    def _timers(self, now: float) -> None:
        self._enforce_timecheck_limits(now)
        silence = self._interval * self._liveness
        if now - self._last_heard > silence:
            log.warning("no word from the daemon for %.1fs; reconnecting", now - self._last_heard)
            self._close_sockets()
            self._connect()
            return
        if now >= self._next_heartbeat:
            if self._welcomed:
                self._send(self.wsock, Cmd.HEARTBEAT, {"running": sorted(self._running)})
            else:
                self._hello()
            self._next_heartbeat = now + self._interval
            if self._welcomed:  # by a daemon of the outbox's database
                self._send_outcomes([p for p in self._outbox.values() if now - p.sent_at > silence])
            if self._journal is not None and self._journal_trouble is None:
                self._commit_journal(now)  # acks that found no outcome to ride along with
        if self._journal_trouble is not None and now >= self._journal_retry_at:
            self._commit_journal(now, force=True)

    # ---- a journal that cannot be written ---------------------------------------------

    def _commit_journal(self, now: float, force: bool = False) -> None:
        """Write what the journal buffers. A failure (a full disk, say) never stops the
        worker: it stops taking tasks until a write succeeds again (_timers tries every
        JOURNAL_RETRY seconds), and the outcomes in hand are sent without the journal.

        Sent, not held back: the journal only guards an outcome until the daemon commits
        it, a matter of milliseconds once sent; held back, it would wait in memory alone
        for as long as the disk stays full, its task's lease kept alive, its result kept
        from whoever waits for it. Sent, the worst case is the journal's absence (killed
        before the ack, the task runs again), which at-least-once allows. The journal
        keeps it buffered and writes it when it can (deleted at once if acked by then)."""
        if self._journal is None:
            return
        try:
            self._journal.commit(now, force)
        except JournalError as exc:
            self._journal_failed(str(exc), now)
            return
        if self._journal_trouble is not None:
            log.warning(
                "worker %s: journal written again after %.0fs; taking tasks again",
                self.worker_id, now - self._journal_since,
            )  # fmt: skip
            self._journal_trouble = None
            self._hello()  # its names again: the daemon sends it tasks

    def _journal_failed(self, why: str, now: float) -> None:
        self._journal_retry_at = now + JOURNAL_RETRY
        if self._journal_trouble is not None:
            if now - self._journal_logged_at >= JOURNAL_REMIND:
                self._journal_logged_at = now
                log.error(
                    "worker %s: still taking no tasks, the journal cannot be written for %.0fs: %s",
                    self.worker_id, now - self._journal_since, why,
                )  # fmt: skip
            self._journal_trouble = why
            return
        self._journal_trouble = why
        self._journal_since = self._journal_logged_at = now
        log.error(
            "worker %s: %s; taking no tasks until it can be written (trying every %gs); "
            "results in hand are sent without it, tasks not started go back to the daemon",
            self.worker_id, why, JOURNAL_RETRY,
        )  # fmt: skip
        self._hand_back_waiting(f"worker {self.worker_id} cannot write its journal")
        self._hello()  # with no names: the daemon sends it nothing more

    def _enforce_timecheck_limits(self, now: float) -> None:
        """Interrupt handlers past their time limit; abandon those that do not unwind.

        Handlers run in threads, which cannot be killed: at the limit the
        worker raises TaskTimeout inside the handler's thread (it lands at the
        handler's next Python instruction). A handler blocked in C code (a
        socket read without a timeout, say) cannot be interrupted; after
        `timeout_grace` the worker reports the timeout itself, forgets the
        attempt and starts a new thread, so its capacity stays whole.
        """
        for ctx in list(self._running.values()):
            if ctx._deadline is None or now < ctx._deadline:
                continue
            if ctx._abandon_at is None:
                ctx._abandon_at = now + self.options.timeout_grace
                ctx._cancel.set()
                with ctx._lock:
                    if ctx._thread is not None:
                        _interrupt(ctx._thread)
                log.warning(
                    "task %s attempt %s ran past its %gs time limit; interrupting",
                    ctx.id,
                    ctx.attempt,
                    ctx.timeout,
                )
            elif now >= ctx._abandon_at:
                with ctx._lock:
                    if ctx._finished:  # it returned meanwhile: its outcome is on its way
                        continue
                    ctx._abandoned = True  # its thread ends when the call returns (_pool_loop)
                log.error(
                    "task %s attempt %s did not stop at its time limit; abandoning its thread",
                    ctx.id,
                    ctx.attempt,
                )
                self._report(Cmd.FAILED, {"id": ctx.id, "attempt": ctx.attempt, "error": _timeout_error(ctx)})
                ctx._deadline = None  # reported once
                self._start_thread()

    def _flush_outbox_before_exit(self) -> None:
        """Give the daemon a bounded chance to acknowledge our last outcomes."""
        deadline = time.monotonic() + min(5.0, self._interval * self._liveness)
        while self._outbox and time.monotonic() < deadline:
            if dict(self.poller.poll(100)).get(self.ssock):
                self._drain_status_socket()
        if self._outbox:
            log.warning(
                "exiting with %d unacknowledged outcome(s); their leases will expire", len(self._outbox)
            )

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b".")
        except OSError:
            pass

    def _report(self, cmd: Cmd, header: dict) -> None:
        self._events.put((cmd, header))
        with self._wake_lock:  # one byte in the pipe wakes the loop for every event before it drains
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake()

    # ---- handler threads ------------------------------------------------------------

    def _start_thread(self) -> None:
        t = threading.Thread(
            target=self._pool_loop, name=f"martinet-handler-{len(self._threads)}", daemon=True
        )
        t.start()
        self._threads.append(t)

    def _pool_loop(self) -> None:
        while self._pool_step(self._jobs.get()):
            pass

    def _pool_step(self, ctx: TaskContext) -> bool:
        """Run one task and report its outcome; False when this thread must end."""
        try:
            cmd, header = self._execute(ctx)
        except TaskTimeout:  # the interruption landed just after the handler returned
            cmd, header = Cmd.FAILED, {"id": ctx.id, "attempt": ctx.attempt, "error": _timeout_error(ctx)}
        if cmd is Cmd.FAILED:
            header["error"] = _fit_error(header.get("error"), max(self._max_payload, ERROR_BYTES_MIN))
        with ctx._lock:
            if ctx._abandoned:
                # Replaced at its time limit (its timeout reported): the thread that took
                # its place serves the pool, so this one ends, and capacity stays as asked.
                log.info("task %s attempt %s returned after it was abandoned", ctx.id, ctx.attempt)
                return False
            ctx._finished = True
        self._report(cmd, header)
        return True

    def _execute(self, ctx: TaskContext) -> tuple[Cmd, dict]:
        base = {"id": ctx.id, "attempt": ctx.attempt}
        while ctx._start_at is not None and (early := ctx._start_at - time.monotonic()) > 0:
            if ctx._cancel.wait(early):
                log.info("task %s attempt %s cancelled before it was due", ctx.id, ctx.attempt)
                return Cmd.DONE, {**base, "result": None}  # the daemon ends it cancelled
        started = time.monotonic()
        ctx._started = True
        self._report(Cmd.STARTED, base)  # leased -> running, in the daemon's store
        log.info("task %s %s attempt %s started on %s", ctx.id, ctx.name, ctx.attempt, self.worker_id)
        try:
            with ctx._lock:
                ctx._thread = threading.get_ident()
                ctx._deadline = started + ctx.timeout if ctx.timeout else None
            if ctx._deadline is not None:
                self._wake()  # the loop times its wait by the deadlines (_poll_timeout)
            try:
                result = self.handlers[ctx.name](ctx, **ctx.args)
            finally:
                with ctx._lock:
                    ctx._thread = None
        except TaskTimeout:
            log.info("task %s attempt %s stopped at its time limit", ctx.id, ctx.attempt)
            return Cmd.FAILED, {**base, "error": _timeout_error(ctx)}
        except Retry as exc:
            log.info("task %s attempt %s asked for a retry in %ss", ctx.id, ctx.attempt, exc.in_seconds)
            return Cmd.FAILED, {**base, "error": _error(exc), "retry_in": exc.in_seconds}
        except Release as exc:
            log.info("task %s attempt %s given back: %s", ctx.id, ctx.attempt, exc)
            return Cmd.FAILED, {**base, "error": {"type": "Release", "message": str(exc)}, "release": True,
                                "retry_in": exc.in_seconds}  # fmt: skip
        except Fail as exc:
            log.info("task %s attempt %s failed for good: %s", ctx.id, ctx.attempt, exc)
            return Cmd.FAILED, {**base, "error": _error(exc), "final": True}
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is data, not a crash
            log.info("task %s attempt %s raised %s: %s", ctx.id, ctx.attempt, type(exc).__name__, exc)
            return Cmd.FAILED, {**base, "error": _error(exc)}
        try:
            text: str | None = json.dumps(result, separators=(",", ":"))  # as the wire writes it
        except (TypeError, ValueError) as exc:
            error = {"type": "TypeError", "message": f"the handler's result cannot be stored as JSON: {exc}"}
            return Cmd.FAILED, {**base, "error": error, "final": True}
        except RecursionError:
            text = None
        if text is None or deeper_than(text.encode(), MAX_VALUE_DEPTH):  # the daemon could not read it
            error = {"type": "ValueError", "message": "the handler's result nests lists and dicts more than "
                     f"{MAX_VALUE_DEPTH} levels deep (the limit)"}  # fmt: skip
            return Cmd.FAILED, {**base, "error": error, "final": True}
        if len(text) > self._max_payload:  # the daemon's limit on args, for results too
            error = {"type": "ValueError", "message": f"the handler's result is {len(text)} bytes as JSON, "
                     f"over the limit of {self._max_payload} (max_payload): store large data elsewhere "
                     "and return where it is"}  # fmt: skip
            log.info("task %s attempt %s failed: %s", ctx.id, ctx.attempt, error["message"])
            return Cmd.FAILED, {**base, "error": error}
        log.info("task %s attempt %s succeeded in %.3fs", ctx.id, ctx.attempt, time.monotonic() - started)
        return Cmd.DONE, {**base, "result": result}


def _interrupt(thread_ident: int) -> None:
    """Raise TaskTimeout in another thread at its next Python instruction."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_ident), ctypes.py_object(TaskTimeout))


def _timeout_error(ctx: TaskContext) -> dict:
    return {"type": "TaskTimeout", "message": f"the handler ran past its time limit of {ctx.timeout:g}s"}


def _fit_error(error: Any, budget: int) -> dict:
    """An error as sent: its message and traceback cut as the daemon would keep them, but
    saying so, the traceback keeping its end; then cut further until its JSON takes at
    most `budget` bytes (characters outside ASCII take up to 12 each)."""
    error = dict(error) if isinstance(error, dict) else {}
    if isinstance(error.get("type"), str):
        error["type"] = cut_end(error["type"], 255)
    if isinstance(error.get("message"), str):
        error["message"] = cut_end(error["message"], MAX_ERROR_MESSAGE)
    if isinstance(error.get("traceback"), str):
        error["traceback"] = keep_end(error["traceback"], MAX_TRACEBACK)
    while len(protocol.dumps(error)) > budget:
        traceback_, message = error.get("traceback"), error.get("message")
        if isinstance(traceback_, str) and len(traceback_) > 200:
            error["traceback"] = keep_end(traceback_, len(traceback_) // 2)
        elif isinstance(message, str) and len(message) > 200:
            error["message"] = cut_end(message, len(message) // 2)
        else:  # nothing long is left to cut: keep what says what it was
            return {"type": str(error.get("type"))[:255], "message": str(message or "")[:200]}
    return error


def _error(exc: BaseException) -> dict:
    # Skip our own frame (the call into the handler): the trace starts in user code.
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    }
