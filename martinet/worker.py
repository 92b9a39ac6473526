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
(outbox.py) until the worker talks to a daemon of their database again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from martinet import messages, protocol
from martinet.attempt import Start, TaskContext, failed, fit_error, is_async, past_limit, timeout_error
from martinet.attempt import error_of as _error  # noqa: F401 - martinet.worker._error still works
from martinet.attempt import run as run_attempt
from martinet.compose import check as check_compositions
from martinet.config import Settings, daemons, parse_address
from martinet.errors import JournalError, ProtocolError, TaskTimeout
from martinet.journal import UNKNOWN, Journal
from martinet.keys import ClientKeys
from martinet.logs import about
from martinet.messages import (
    Ack,
    Bye,
    Cancel,
    Heartbeat,
    Held,
    Hello,
    HelloAgain,
    Outcome,
    Progress,
    Reject,
    Started,
    Task,
    Tasks,
    Welcome,
)
from martinet.outbox import FRAME_ROOM, Outbox, Pending
from martinet.registry import AFTER, BEFORE, LIMITS, REGISTRY, check_limits, task  # noqa: F401 - martinet.worker.task still works

log = logging.getLogger(__name__)
ASYNC_POLL = 0.05  # seconds a handler thread waits for an async handler between looks (time limits)
LOOP_STOP = 1.0  # seconds a stopping worker gives its async handlers' loop to cancel what runs there

Handler = Callable[..., Any]


# What handler threads hand the loop: a start, progress, or an outcome.
_Report = Start | Progress | Outcome


# What an outcome may weigh, until the daemon's welcome says (a daemon older than these
# fields says nothing: its defaults). A result over max_payload fails its attempt; an
# error is trimmed to fit (attempt.fit_error); no outcome is sent that the daemon's sockets
# would drop (ZeroMQ drops a message over max_message, and the connection with it).
DEFAULT_MAX_PAYLOAD = Settings.max_payload
ERROR_BYTES_MIN = 16_384  # an error may take this many bytes of JSON even when max_payload is less
# Default prefetch: 4 per thread, and at least PREFETCH_MIN a worker. Short tasks need
# depth: each daemon commit then carries tens of outcomes and claims (with 1 per thread
# the daemon spent about 28 % more CPU per task, measured in-process), and a thread that
# ends a task finds the next one here while the daemon's answer to its outcomes is on
# its way. A worker of one thread with 4 held them all done before that answer came, and
# its thread waited for the daemon after every 5 tasks (issue 25: half of a drain's time).
# The daemon fills idle threads fleet-wide before any prefetch, so a short queue is never
# hoarded by one worker; for long tasks use --prefetch 0.
PREFETCH_PER_THREAD = 4
PREFETCH_MIN = 32
# With the default prefetch, the daemon may fill it deeper than that while the tasks are
# short, down to this many (per worker, or PREFETCH_DEEP_PER_THREAD a thread if more), by
# the pace of the handlers that every ENDED carries (server/peers.py, Peer.depth): tiny
# tasks then come a hundred at a time, and each daemon turn carries as many outcomes and
# claims (a drain of no-op tasks at --concurrency 1 on PostgreSQL: 1.3-1.5x with 128
# deep against 32, 1.5-1.8x with 256, measured 2026-12-07). Not deeper: a turn that
# takes 256 outcomes and claims as many keeps other requests waiting (execute_many
# batches alongside an 8-thread drain went 0.6 times as fast with 256, as fast with 128).
# Tasks of 2 ms or more keep the prefetch above.
PREFETCH_DEEP = 128
PREFETCH_DEEP_PER_THREAD = 16
PACE_WEIGHT = 0.1  # the weight of a task's time in the handlers' pace (a moving average)
# A task sent ahead of its due time (start_in, see daemon.TIMER_LEAD) is held this long
# at most, whatever start_in says: a thread waits for it meanwhile.
MAX_START_IN = 1.0
# A handler's start wakes no one: the loop looks for starts this long after a thread may
# have taken a task (_next_start_check), so a task that ends sooner says it started in
# its ENDED, and a longer one in a STARTED a moment after its start. Woken by the start
# itself, the loop took the GIL from the thread about to call the handler: a paced task's
# latency, call to handler, was 1.05 times as long at the p50 (median of 11 alternating
# pairs of 3,000 tasks at 200/s, SQLite, 2026-12-07; the p99 within the noise).
START_REPORT_WAIT = 0.002


def start_wait(start_in: float, run_at: float | None, now: float) -> float:
    """How long to hold a task sent ahead of its due time, from its arrival at `now` (this
    host's clock): start_in counts from when the daemon sent it, so the trip here would
    make it late by the trip's length (0.3-0.5 ms on one host); it starts when this host's
    clock reaches its run_at, if that comes first. A clock ahead of the daemon's starts it
    early by the daemon's, by server/timers.py's TIMER_LEAD at most (it is leased no
    sooner), never early by its own; one behind it, as start_in says. At most MAX_START_IN, whatever they say."""
    wait = min(start_in, MAX_START_IN)
    if run_at is not None:
        wait = min(wait, run_at - now)
    return max(wait, 0.0)


# TEST ONLY: MARTINET_FAULT=exit_before_send makes the worker os._exit(FAULT_EXIT)
# right after it journaled an outcome and before it sends it (tests/test_journal.py).
FAULT_EXIT_BEFORE_SEND = "exit_before_send"
FAULT_EXIT = 86


def _with_before_hooks(handler: Handler) -> Handler:
    """The handler, called once the before_task hooks ran (in its attempt: what they raise
    fails the attempt as the handler's own error would)."""

    def with_hooks(ctx: TaskContext, **args: Any) -> Any:
        for hook in BEFORE:
            hook(ctx)
        return handler(ctx, **args)

    return with_hooks


def default_prefetch(threads: int) -> int:
    """Tasks a worker of `threads` threads holds ready by default (see PREFETCH_MIN)."""
    return max(PREFETCH_PER_THREAD * threads, PREFETCH_MIN)


def deepest_prefetch(threads: int) -> int:
    """How deep the daemon may fill the default prefetch while tasks are short (see
    PREFETCH_DEEP)."""
    return max(PREFETCH_DEEP_PER_THREAD * threads, PREFETCH_DEEP)


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
    # thread, PREFETCH_MIN at least, and deeper while tasks are short (PREFETCH_DEEP);
    # a number: that many, always; 0: none (a worker holds only what it runs).
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
    # Health checks on HOST:PORT for an orchestrator's probes (health.py): /healthz while
    # the worker's loop turns, /readyz while a daemon has welcomed it and is heard. "": none.
    health: str = ""
    # CURVE: this worker's key pair (NAME.key_secret) and the daemon's public key; both or neither.
    key_file: str = ""
    server_key: str = ""


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
        # Daemons on one database (connect "a,b"): the worker talks to one, and moves to the
        # next when it hears nothing from it for liveness heartbeats (see _timers).
        self._daemons = daemons(o.connect)
        self._keys = ClientKeys.of(o.key_file, o.server_key)
        self._at = 0
        # Reports from the handler threads to the loop, tasks from the loop to them: a task
        # passes through both (a start and an end); SimpleQueue's put and get cost a
        # twentieth of Queue's, whose locking and task counts this needs none of.
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._wake_lock = threading.Lock()
        self._wake_pending = False  # a byte is in the pipe: handlers need not write another
        self._start_check: float | None = None  # when the loop looks for starts (monotonic)
        self._running: dict[int, TaskContext] = {}
        self._timed: dict[int, TaskContext] = {}  # those of _running with a time limit (some ended)
        # Outcomes not acknowledged yet, for the database of the daemon we talk to; those
        # for other databases wait aside, by (database, id, attempt), never sent to it.
        self.outbox = Outbox(self.worker_id, self._journal)
        self._database: str | None = None  # the identity of the daemon's database (its welcome)
        self._fault = os.environ.get("MARTINET_FAULT")
        self._max_payload = DEFAULT_MAX_PAYLOAD  # read by handler threads; the welcome sets it
        self._max_message = protocol.max_message(DEFAULT_MAX_PAYLOAD)
        self.outbox.recover()
        self._stopping = False
        self._stop_deadline = 0.0
        self._epoch: str | None = None
        self._welcomed = False
        # What the daemon's welcome gave this worker: its status messages carry it, and a
        # hello on a new connection proves with it that this is the same worker. Kept in
        # the journal, so a restarted worker is known as itself at once.
        self._session: str | None = self._journal.session() if self._journal is not None else None
        # This run's own id (Hello.incarnation): the session outlives a restart, this does not.
        self._incarnation = uuid.uuid4().hex
        self._last_heard = 0.0
        self._turned_at = time.monotonic()  # the loop's last turn (/healthz)
        self._health: Any = None  # a health.HealthServer, with options.health
        self.health_port: int | None = None  # with options.health: the port it listens on
        self._next_heartbeat = 0.0
        self._interval = o.heartbeat_interval
        self._liveness = o.liveness
        self._threads: list[threading.Thread] = []
        self._loop: Any = None  # the asyncio event loop of async def handlers (_on_the_loop)
        self._loop_thread: threading.Thread | None = None
        self._callables: dict[str, Handler] = {}  # by name, as handler threads call them (_callable)
        self._loop_lock = threading.Lock()
        self._limits: dict[str, dict | None] = {}  # set with on(); wins over LIMITS
        self.threads = threads = max(1, o.concurrency)  # handler threads
        self.capacity = threads + max(0, default_prefetch(threads) if o.prefetch is None else o.prefetch)
        self.prefetch_max = deepest_prefetch(threads) if o.prefetch is None else None
        self.most = messages.most_held(self.capacity, threads, self.prefetch_max)  # (as its hello says)
        # Seconds its handlers took a task of late (a moving average, PACE_WEIGHT), for the
        # daemon's depth of its prefetch; handler threads write it, the loop reads it.
        self._pace: float | None = None

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

    # ---- the loop -------------------------------------------------------------

    def run(self) -> None:
        o = self.options
        self.handlers = check_compositions(self.handlers)  # a missing step stops us here
        if not self.handlers:
            log.warning("worker %s has no handlers registered", self.worker_id)
        if o.health:  # first: a port it cannot have stops it before anything started
            self._serve_health(o.health)
        for _ in range(self.threads):
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
                now = self._turned_at = time.monotonic()
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
                now = time.monotonic()
                if self._start_check is not None and now >= self._start_check:
                    self._start_check = self._next_start_check(now)  # (its starts just went)
                self._timers(now)
            self._flush_outbox_before_exit()
            self._send(self.wsock, Bye())
        finally:
            if self._health is not None:
                self._health.close()
            if self._loop is not None:
                self._stop_loop()
            self._close_sockets()
            self.ctx.term()
            self._close_journal()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            log.info("worker %s stopped", self.worker_id)

    def _serve_health(self, address: str) -> None:
        """/healthz: the loop turned within 3 heartbeats (it turns at least every 0.5 s);
        /readyz: a daemon welcomed this worker and was heard within its liveness."""

        def ready() -> tuple[bool, str]:
            if not self._welcomed:
                if self._epoch is not None:  # it was, and went silent: the worker said hello again
                    return False, f"reconnecting to the daemon at {self.options.connect} (no welcome since)"
                return False, f"not welcomed by a daemon at {self.options.connect} yet"
            quiet = time.monotonic() - self._last_heard
            if quiet > self._interval * self._liveness:
                return False, f"nothing heard from the daemon for {quiet:.1f}s"
            return True, f"welcomed by daemon {self._epoch}"

        from martinet.health import HEALTHY_WITHIN, HealthServer, loop_turning  # (http.server: when asked)

        healthy = loop_turning(lambda: self._turned_at, lambda: max(HEALTHY_WITHIN, 3 * self._interval))
        host, port = parse_address(address, "health")
        self._health = HealthServer({"/healthz": healthy, "/readyz": ready})
        self.health_port = self._health.start(host, port, "--health")
        log.info("health checks on http://%s:%d/healthz and /readyz", host, self.health_port)

    def _poll_timeout(self, now: float) -> float:
        """Seconds the loop may wait for a message: until the next heartbeat, the next
        look for starts, or the next time limit that comes due (a handler with a limit
        wakes the loop to set its own), so that a limit is enforced on time, not up to a
        poll late."""
        due = self._next_heartbeat
        if self._start_check is not None:
            due = min(due, self._start_check)
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
        if self._keys is not None:
            self._keys.apply(sock)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.connect(f"tcp://{self._daemons[self._at]}:{port}")
        return sock

    def _close_sockets(self) -> None:
        for sock in (self.wsock, self.ssock):
            sock.close(0)

    def _hello(self) -> None:
        self._send(self.wsock, self._hello_message())

    def _hello_message(self) -> Hello:
        # No names: no task is sent to it (stopping, or its journal cannot keep outcomes).
        names = () if self._stopping or self.outbox.trouble else tuple(sorted(self.handlers))
        limits = {n: self._limits[n] if n in self._limits else LIMITS.get(n) for n in names}
        return Hello(
            self.worker_id,
            names,
            self.capacity,
            threads=self.threads,
            running=self._held_list(),
            # Older daemons ignore "kept".
            kept=self.outbox.kept(),
            queues=None if self.options.queues is None else tuple(self.options.queues),
            limits={n: dict(lim) for n, lim in limits.items() if lim},
            session=self._session,
            prefetch_max=self.prefetch_max,
            incarnation=self._incarnation,
        )

    def _held_list(self) -> tuple[Held, ...]:
        """What this worker holds, for the daemon to re-adopt: tasks running or waiting for a
        thread, and tasks whose outcome is not acknowledged yet (so that their attempt stays
        open for it, even if the daemon had given up on us)."""
        held = {c.id: (c.attempt, c._database, c._started) for c in self._running.values()}
        for (task_id, attempt), pending in self.outbox.pending.items():
            held.setdefault(task_id, (attempt, pending.database, True))
        # With their database: a daemon of another one does not take them as its tasks.
        # "started": a handler took it (its start report may have been lost with the connection).
        return tuple(Held(i, a, started, d) for i, (a, d, started) in held.items())

    def _send(self, sock: zmq.Socket, message: messages.Message | Outcome) -> None:
        self._send_frames(sock, message.encode(), type(message).__name__)

    def _send_frames(self, sock: zmq.Socket, frames: list[bytes], what: str) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("send of %s would block; dropped (it is resent if it matters)", what)

    def _recv_all(self, sock: zmq.Socket):
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                yield messages.decode(frames)
            except ProtocolError as exc:
                log.warning("dropped a malformed frame from the daemon: %s", exc)

    def _drain_worker_socket(self) -> None:
        for message in self._recv_all(self.wsock):
            self._last_heard = time.monotonic()
            if isinstance(message, Tasks):
                if message.dropped:
                    log.warning("dropped %d task(s) without a valid id and attempt", message.dropped)
                for task in message.tasks:
                    self._on_task(task)
            elif isinstance(message, Welcome):
                self._on_welcome(message)
            elif isinstance(message, HelloAgain):
                log.info("daemon asked worker %s to say hello again", self.worker_id)
                self._welcomed = False  # perhaps another daemon: nothing is sent until its welcome
                self._hello()
            elif isinstance(message, Cancel):
                ctx = self._running.get(message.task_id)
                if ctx is not None:
                    fields = about(ctx.id, ctx.name, ctx.attempt, self.worker_id)
                    log.info("task %s attempt %s asked to stop", ctx.id, ctx.attempt, extra=fields)
                    ctx._request_cancel()

    def _on_welcome(self, welcome: Welcome) -> None:
        self._interval = welcome.heartbeat_interval or self._interval
        self._liveness = welcome.liveness or self._liveness
        # The next heartbeat was timed with our own interval; the daemon's may be shorter.
        self._next_heartbeat = min(self._next_heartbeat, time.monotonic() + self._interval)
        epoch = welcome.epoch
        if self._epoch is not None and epoch != self._epoch:
            log.info("daemon restarted (epoch %s -> %s)", self._epoch, epoch)
        self._epoch = epoch
        if welcome.max_payload is not None:
            self._max_payload = welcome.max_payload
        message = welcome.max_message
        if message is not None and message > 2 * FRAME_ROOM:
            self._max_message = message
        else:
            self._max_message = protocol.max_message(self._max_payload)
        database = welcome.database  # None: an older daemon
        if self._database is not None and database != self._database:
            log.info("the daemon's database is another one now (id %s -> %s)", self._database, database)
        self._database = database
        self._session = welcome.session
        if database is not None and self._journal is not None:
            try:
                self._journal.tie(database, welcome.session)
            except JournalError as exc:  # it only decides what the next start says first
                log.debug("%s", exc)
        self._welcomed = True
        self.outbox.sort(database)
        self._send_outcomes(list(self.outbox.pending.values()))  # anything unacknowledged goes again

    def _on_task(self, leased: Task) -> None:
        task_id, attempt, name = leased.task_id, leased.attempt, leased.name
        reason, passing = None, False  # passing: a refusal for want of a slot (Reject.passing)
        if name not in self.handlers:
            reason = f"worker {self.worker_id} has no handler for {name!r}"
        elif self._stopping:
            reason = f"worker {self.worker_id} is shutting down"
        elif self.outbox.trouble:
            reason = f"worker {self.worker_id} cannot write its journal"
        elif len(self._running) >= self.most:
            reason, passing = f"worker {self.worker_id} has no free slot", True
        if reason:
            self._send(self.wsock, Reject(task_id, attempt, name, reason, passing=passing))
            return
        ctx = TaskContext(task_id, attempt, name, leased.args, self._report, leased.timeout)
        ctx._database = self._database or UNKNOWN
        if leased.start_in is not None and leased.start_in > 0:
            # This clock first: should the thread stop between the two reads, it starts later, never sooner.
            wait = start_wait(leased.start_in, leased.run_at, time.time())
            ctx._start_at = time.monotonic() + wait
        if leased.parents is not None:
            ctx.parents = leased.parents
        self._running[task_id] = ctx
        if leased.timeout:
            self._timed[ctx.id] = ctx
        log.debug("task %s %s attempt %s leased to %s", task_id, name, attempt, self.worker_id)
        self._jobs.put(ctx)
        self._look_for_starts()

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
            self._send(self.wsock, Reject(ctx.id, ctx.attempt, ctx.name, reason))

    def _drain_status_socket(self) -> None:
        for message in self._recv_all(self.ssock):
            now = self._last_heard = time.monotonic()
            for ack in message.acks if isinstance(message, Ack) else ():
                self.outbox.acked(ack, now)

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
                report: _Report = self._events.get_nowait()
            except queue.Empty:
                break
            ctx = self._running.get(report.task_id)
            if ctx is None or ctx.attempt != report.attempt:
                continue  # from a handler abandoned at its time limit: already reported
            if isinstance(report, Start):
                if ctx._database == (self._database or UNKNOWN):  # else its daemon is not this one
                    started.append([ctx.id, ctx.attempt])
                continue
            if isinstance(report, Progress):
                if not self._welcomed:  # (the next one goes to the daemon that welcomes us)
                    log.debug("progress of task %s dropped: no daemon has welcomed this worker", ctx.id)
                    continue
                if started:  # in order: the daemon reads a start before the progress after it
                    self._send_started(started)
                    started = []
                self._send(
                    self.ssock, dataclasses.replace(report, worker_id=self.worker_id, session=self._session)
                )
                continue
            del self._running[ctx.id]
            if self._running:
                self._look_for_starts()  # its thread takes the next task waiting, if any
            # For the database its task came from (the daemon of another database refuses it).
            pending = self.outbox.add(report, self._database or UNKNOWN)
            if pending is None:
                parked = True
            else:
                ended.append(pending)
        if parked:
            self.outbox.tell_parked(self._database)
        if started and not ended:
            self._send_started(started)
        if not ended and not parked:
            return
        if self._journal is not None and self.outbox.trouble is None:
            self._commit_journal(time.monotonic())  # write-ahead: on disk before it leaves
        if not ended:
            return
        if self._fault == FAULT_EXIT_BEFORE_SEND:
            log.warning("MARTINET_FAULT=%s: exiting before sending %d outcome(s)", self._fault, len(ended))
            os._exit(FAULT_EXIT)
        self._send_outcomes(ended, started)

    def _send_outcomes(self, pendings: list[Pending], started: list[list[int]] | None = None) -> None:
        """Send outcomes in ENDED messages of bounded size (see Outbox.batches); they stay
        in the outbox until acked."""
        batches = self.outbox.batches(
            pendings, started, time.monotonic(), self._max_message, self._max_payload
        )
        for bodies, starts in batches:
            self._send_batch(bodies, starts)

    def _send_started(self, started: list[list[int]]) -> None:
        """(Not before a welcome: the next hello says which of its tasks have started.)"""
        if self._welcomed:
            self._send(self.ssock, Started(self.worker_id, tuple((i, a) for i, a in started), self._session))

    def _send_batch(self, bodies: list[bytes], started: list[list[int]] | None = None) -> None:
        """(Not before a welcome: outcomes wait in the outbox, and the welcome sends them.)"""
        if self._welcomed:
            pace = self._pace if self.prefetch_max is not None else None
            frames = messages.ended(self.worker_id, bodies, started, self._session, pace)
            self._send_frames(self.ssock, frames, f"{len(bodies)} outcome(s)")

    def _timers(self, now: float) -> None:
        self._enforce_timecheck_limits(now)
        silence = self._interval * self._liveness
        if now - self._last_heard > silence:
            gone = self._daemons[self._at]
            self._at = (self._at + 1) % len(self._daemons)
            log.warning(
                "no word from the daemon at %s for %.1fs; %s", gone, now - self._last_heard,
                "reconnecting" if len(self._daemons) == 1 else f"moving to {self._daemons[self._at]}",
            )  # fmt: skip
            self._close_sockets()
            self._connect()
            return
        if now >= self._next_heartbeat:
            if self._welcomed:
                self._send(self.wsock, Heartbeat(tuple(sorted(self._running))))
            else:
                self._hello()
            self._next_heartbeat = now + self._interval
            if self._welcomed:  # by a daemon of the outbox's database
                self._send_outcomes([p for p in self.outbox.pending.values() if now - p.sent_at > silence])
            if self._journal is not None and self.outbox.trouble is None:
                self._commit_journal(now)  # acks that found no outcome to ride along with
        if self.outbox.trouble is not None and now >= self.outbox.retry_at:
            self._commit_journal(now, force=True)

    # ---- a journal that cannot be written ---------------------------------------------

    def _commit_journal(self, now: float, force: bool = False) -> None:
        """Write what the journal buffers (see Outbox.commit): while it cannot be written,
        the worker takes no tasks (its hello gives no names) and hands back those waiting."""
        changed = self.outbox.commit(now, force)
        if changed is False:
            self._hand_back_waiting(f"worker {self.worker_id} cannot write its journal")
        if changed is not None:
            self._hello()  # with no names, or its names again

    def _enforce_timecheck_limits(self, now: float) -> None:
        """Interrupt handlers past their time limit (see attempt.past_limit); for those
        abandoned, report the timeout and start a new thread, so capacity stays whole."""
        for ctx in past_limit(list(self._running.values()), now, self.options.timeout_grace):
            self._report(failed(ctx, self.worker_id, timeout_error(ctx)))
            self._start_thread()

    def _flush_outbox_before_exit(self) -> None:
        """Give the daemon a bounded chance to acknowledge our last outcomes."""
        deadline = time.monotonic() + min(5.0, self._interval * self._liveness)
        while self.outbox.pending and time.monotonic() < deadline:
            if dict(self.poller.poll(100)).get(self.ssock):
                self._drain_status_socket()
        if self.outbox.pending:
            log.warning(
                "exiting with %d unacknowledged outcome(s); their leases will expire",
                len(self.outbox.pending),
            )

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b".")
        except OSError:
            pass

    def _look_for_starts(self) -> None:
        """A thread may take a task now: the loop looks for its start soon (START_REPORT_WAIT)."""
        if self._start_check is None:
            self._start_check = time.monotonic() + START_REPORT_WAIT

    def _next_start_check(self, now: float) -> float | None:
        """When to look for starts again, once the loop sent those that came: soon while a
        task waits and a thread is free to take it (a thread slow to run), at the due time
        of one held until then (start_in), and not while every thread is busy: the outcome
        that frees one looks again (_drain_events)."""
        waiting = [ctx for ctx in self._running.values() if not ctx._started]
        busy = sum(1 for ctx in self._running.values() if ctx._started and not ctx._finished)
        if not waiting or busy >= self.threads:
            return None
        due = min(ctx._start_at or now for ctx in waiting)
        return max(due, now) + START_REPORT_WAIT

    def _report(self, report: _Report) -> None:
        self._events.put(report)
        if type(report) is Start:  # the loop looks for it (START_REPORT_WAIT)
            return
        with self._wake_lock:  # one byte in the pipe wakes the loop for every event before it drains
            if self._wake_pending:
                return
            self._wake_pending = True
        self._wake()

    # ---- handler threads ------------------------------------------------------------

    def _on_the_loop(self, handler: Handler) -> Handler:
        """An `async def` handler, run on this worker's event loop (its own thread, started
        with the first one) while the handler thread waits for it: its time limit (a
        TaskTimeout in the waiting thread) and the worker's stop cancel the coroutine."""
        import asyncio  # (only workers with async handlers pay for it: about 30 ms)
        import concurrent.futures

        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="martinet-async-handlers", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread

        loop = self._loop

        def wait_for(ctx: TaskContext, **args: Any) -> Any:
            future = asyncio.run_coroutine_threadsafe(handler(ctx, **args), loop)
            try:
                while True:
                    try:  # in short waits: a time limit's TaskTimeout lands between them
                        return future.result(timeout=ASYNC_POLL)
                    except concurrent.futures.TimeoutError:
                        continue
            except BaseException:
                future.cancel()  # CancelledError in the coroutine, at its next await
                raise

        return wait_for

    def _stop_loop(self) -> None:
        """Stop the async handlers' loop: what still runs there is cancelled (its handler
        threads, waiting on it, end with that), then the loop is closed."""
        import asyncio
        import concurrent.futures

        async def cancel_all() -> None:
            running = asyncio.all_tasks() - {asyncio.current_task()}
            for pending in running:
                pending.cancel()
            await asyncio.gather(*running, return_exceptions=True)

        loop, thread = self._loop, self._loop_thread
        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(LOOP_STOP)
        except concurrent.futures.TimeoutError:  # a coroutine that ignores cancellation: left behind
            log.warning("async handlers still ran %ss after they were cancelled", LOOP_STOP)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(LOOP_STOP)
        if not loop.is_running():
            loop.close()

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
        began = time.perf_counter()
        try:
            outcome = self._execute(ctx)
        except TaskTimeout:  # the interruption landed just after the handler returned
            outcome = failed(ctx, self.worker_id, timeout_error(ctx))
        took, pace = time.perf_counter() - began, self._pace
        self._pace = took if pace is None else pace + PACE_WEIGHT * (took - pace)
        if not outcome.ok:
            error = fit_error(outcome.error, max(self._max_payload, ERROR_BYTES_MIN))
            outcome = outcome._replace(error=error)
        with ctx._lock:
            if ctx._abandoned:
                # Replaced at its time limit (its timeout reported): the thread that took
                # its place serves the pool, so this one ends, and capacity stays as asked.
                fields = about(ctx.id, ctx.name, ctx.attempt, self.worker_id)
                log.info(
                    "task %s attempt %s returned after it was abandoned", ctx.id, ctx.attempt, extra=fields
                )
                self._after_hooks(ctx, outcome)
                return False
            ctx._finished = True
        self._report(outcome)
        self._after_hooks(ctx, outcome)
        return True

    def _execute(self, ctx: TaskContext) -> Outcome:
        handler = self._callable(ctx.name)
        if BEFORE:
            handler = _with_before_hooks(handler)
        return run_attempt(ctx, handler, self.worker_id, self._max_payload, self._report, self._wake)

    def _callable(self, name: str) -> Handler:
        """The handler of `name` as a handler thread calls it: an `async def` one (or a
        TaskHandle of one) wrapped to run on the worker's event loop, decided once a name."""
        found = self._callables.get(name)
        if found is None:
            handler = self.handlers[name]
            found = self._callables[name] = self._on_the_loop(handler) if is_async(handler) else handler
        return found

    def _after_hooks(self, ctx: TaskContext, outcome: Outcome) -> None:
        """The after_task hooks, in the handler's thread, once its outcome is reported
        (outside its time limit: a slow hook delays no outcome and fails no attempt)."""
        for hook in AFTER:
            try:
                hook(ctx, outcome.kind.value)
            except Exception:  # noqa: BLE001 - a hook's failure is logged, the attempt's end stands
                log.exception(
                    "the after_task hook %s failed for task %s", getattr(hook, "__name__", hook), ctx.id
                )
