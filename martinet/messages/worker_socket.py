"""The worker socket's messages: hello and welcome, tasks and their refusal, cancel, bye.

Each reads itself from a decoded header (`from_header`, which checks what the
reader relies on and raises ProtocolError otherwise) and writes itself
(`encode`), its keys in the order peers have always written them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from martinet import protocol
from martinet.errors import ProtocolError
from martinet.messages.fields import incarnation_of, is_id, is_number, is_positive, is_worker_id, session_of
from martinet.protocol import Cmd
from martinet.validate import clean_text

MAX_HELD = 10_000  # attempts a hello may say it holds (running, kept): a bound on what is read
MAX_NAMES = 10_000  # task names a hello may give
MAX_CAPACITY = 10_000  # tasks a worker may hold at once, as its hello says
MAX_REASON = 500  # characters of a refusal's reason the daemon keeps


@dataclass(frozen=True, slots=True)
class Held:
    """An attempt a worker holds: running, waiting for a thread, or its outcome not yet
    acknowledged (hello's "running"); or kept for another database (hello's "kept")."""

    task_id: int
    attempt: int
    started: bool | None = None  # a handler took it (None: not said, as in "kept")
    database: str = ""  # the identity of its task's database ("": not known)

    def item(self) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.task_id, "attempt": self.attempt}
        if self.started is not None:
            item["started"] = self.started
        if self.database:
            item["database"] = self.database
        return item

    @classmethod
    def read_all(cls, value: Any, limit: int = MAX_HELD) -> tuple[Held, ...]:
        """A hello's list of {id, attempt, ...}, bounded; items without a valid id and
        attempt are left out. A database that is not a string is kept as its text (it is
        another database than any daemon's, and says so)."""
        items = value[:limit] if isinstance(value, list) else []
        return tuple(
            cls(r["id"], r["attempt"], r.get("started") if isinstance(r.get("started"), bool) else None,
                "" if r.get("database") is None else str(r["database"]))
            for r in items
            if isinstance(r, dict) and is_id(r.get("id")) and is_id(r.get("attempt"))
        )  # fmt: skip


def most_held(capacity: int, threads: int | None, prefetch_max: int | None) -> int:
    """The tasks a worker may hold at most: its capacity, or its threads and its deepest
    prefetch (prefetch_max: the daemon fills it that deep while its tasks are short)."""
    if prefetch_max is None:
        return capacity
    return max(capacity, min(threads or capacity, capacity) + prefetch_max)


@dataclass(frozen=True, slots=True)
class Hello:
    """Worker -> daemon: who it is, what it runs, and what it still holds."""

    worker_id: str
    names: tuple[str, ...]
    capacity: int
    threads: int | None = None  # of the capacity, how many run at once (the rest: prefetch)
    version: int = protocol.VERSION
    starts: bool = True  # it says when a handler starts a task (STARTED)
    running: tuple[Held, ...] = ()
    kept: tuple[Held, ...] = ()  # outcomes kept for other databases (older daemons ignore it)
    queues: tuple[str, ...] | None = None  # None: every queue
    # By name, as its code declares them: the daemon compares, never applies (a worker
    # cannot set fleet-wide limits; see server/workers.py).
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The session its last welcome gave it: proof that a hello on a new connection
    # comes from the worker that held the id (a reconnect), not from a stranger.
    session: str | None = None
    # Its prefetch may go this deep while its tasks are short (server/peers.py, Peer.depth;
    # the pace of its handlers comes with its outcomes). None: its capacity, always.
    # Older daemons ignore it, and fill its capacity.
    prefetch_max: int | None = None
    # This process's own id, new at each start (its session outlives it, in its journal):
    # a hello on a new connection with the incarnation of the old one comes from the same
    # process, which reports all it received, so a task sent on the old connection that it
    # does not report never reached it (server/workers.py). Older daemons ignore it.
    incarnation: str | None = None

    CMD: ClassVar[Cmd] = Cmd.HELLO

    def encode(self) -> list[bytes]:
        header = {
                "worker_id": self.worker_id,
                "names": list(self.names),
                "capacity": self.capacity,
                "threads": self.threads,
                "version": self.version,
                "starts": self.starts,
                "running": [h.item() for h in self.running],
                "kept": [h.item() for h in self.kept],
                "queues": None if self.queues is None else list(self.queues),
                "limits": self.limits,
        }  # fmt: skip
        if self.session is not None:
            header["session"] = self.session
        if self.prefetch_max is not None:
            header["prefetch_max"] = self.prefetch_max
        if self.incarnation is not None:
            header["incarnation"] = self.incarnation
        return protocol.encode(Cmd.HELLO, header)

    @property
    def most(self) -> int:
        return most_held(self.capacity, self.threads, self.prefetch_max)

    @classmethod
    def from_header(cls, h: dict[str, Any], max_name_length: int = 200) -> Hello:
        worker_id, names, capacity = h.get("worker_id"), h.get("names"), h.get("capacity")
        if (
            not is_worker_id(worker_id)
            or not isinstance(names, list)
            or len(names) > MAX_NAMES
            or not all(isinstance(n, str) and n.isprintable() and len(n) <= max_name_length for n in names)
            or not is_id(capacity)
            or not 0 < capacity <= MAX_CAPACITY
        ):
            raise ProtocolError(f"a hello without a valid worker_id, names and capacity: {str(h)[:200]}")
        queues = h.get("queues")
        threads = h.get("threads")
        limits = h.get("limits")
        prefetch_max = h.get("prefetch_max")
        return cls(
            worker_id,
            tuple(names),
            capacity,
            threads=threads if is_id(threads) and threads >= 1 else None,
            version=h["version"] if is_id(h.get("version")) else 0,
            starts=h.get("starts") is True,
            running=Held.read_all(h.get("running")),
            kept=Held.read_all(h.get("kept")),
            queues=tuple(q for q in queues if isinstance(q, str)) if isinstance(queues, list) else None,
            limits=limits if isinstance(limits, dict) else {},
            session=session_of(h),
            prefetch_max=prefetch_max if is_id(prefetch_max) and prefetch_max <= MAX_CAPACITY else None,
            incarnation=incarnation_of(h),
        )


@dataclass(frozen=True, slots=True)
class Welcome:
    """Daemon -> worker: its timings, its epoch (new at each start), its database's
    identity (a worker's journal ties outcomes to it) and what an outcome may weigh."""

    epoch: str | None
    database: str | None  # None: a daemon older than identities
    heartbeat_interval: float | None = None
    liveness: int | None = None
    lease: float | None = None
    version: int = protocol.VERSION
    max_payload: int | None = None  # None: not said (an older daemon): the worker's default
    max_message: int | None = None
    # A secret for this worker's connection: its status messages carry it, and only they
    # may report its tasks' starts, progress and ends (a worker id is public: `show`).
    session: str | None = None

    CMD: ClassVar[Cmd] = Cmd.WELCOME

    def encode(self) -> list[bytes]:
        header = {
                "epoch": self.epoch,
                "database": self.database,
                "heartbeat_interval": self.heartbeat_interval,
                "liveness": self.liveness,
                "lease": self.lease,
                "version": self.version,
                "max_payload": self.max_payload,
                "max_message": self.max_message,
        }  # fmt: skip
        if self.session is not None:
            header["session"] = self.session
        return protocol.encode(Cmd.WELCOME, header)

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Welcome:
        """Tolerant: what is missing or not of its type is None (the worker keeps its own)."""
        database = h.get("database")
        interval, liveness = h.get("heartbeat_interval"), h.get("liveness")
        return cls(
            epoch=None if h.get("epoch") is None else str(h["epoch"]),
            database=database if isinstance(database, str) and database else None,
            heartbeat_interval=float(interval) if is_positive(interval) else None,
            liveness=int(liveness) if is_positive(liveness) else None,
            lease=float(h["lease"]) if is_positive(h.get("lease")) else None,
            version=h["version"] if is_id(h.get("version")) else 0,
            max_payload=h["max_payload"] if is_id(h.get("max_payload")) and h["max_payload"] >= 1 else None,
            max_message=h["max_message"] if is_id(h.get("max_message")) else None,
            session=session_of(h),
        )


class Task(NamedTuple):
    """One task leased to a worker: an item of a TASK message. A NamedTuple, for one is
    made for every task (see Outcome)."""

    task_id: int
    attempt: int
    name: str
    args: dict[str, Any]
    queue: str | None = None
    timeout: float | None = None  # seconds an attempt may run
    parents: dict[int, Any] | None = None  # what the tasks it waited on returned, by id
    start_in: float | None = None  # seconds from now: sent ahead of its due time, not before then
    # With start_in: its due time by the daemon's clock (epoch seconds). start_in counts
    # from when the daemon sent it, so the trip to the worker makes it late; a worker whose
    # clock agrees starts it then (worker._on_task).
    run_at: float | None = None

    def item(self) -> dict[str, Any]:
        """Its keys in the order of the claim's columns (what the daemon always sent)."""
        task_id, attempt, name, args, queue, timeout, parents, start_in, run_at = (
            self  # (faster than each field)
        )
        item: dict[str, Any] = {
            "id": task_id, "name": name, "queue": queue, "args": args, "attempt": attempt, "timeout": timeout,
        }  # fmt: skip
        if parents is not None:
            item["parents"] = {str(k): v for k, v in parents.items()}
        if start_in is not None:
            item["start_in"] = start_in
        if run_at is not None:
            item["run_at"] = run_at
        return item

    @classmethod
    def from_item(cls, item: Any) -> Task:
        """ProtocolError when it has no valid id and attempt; a name that is not a string
        is read as "" (the worker refuses it: no handler has that name)."""
        get = item.get if type(item) is dict else None
        if get is None or not is_id(task_id := get("id")) or not is_id(attempt := get("attempt")):
            raise ProtocolError(f"a task without a valid id and attempt: {str(item)[:200]}")
        name, args, queue, timeout = get("name"), get("args"), get("queue"), get("timeout")
        parents, start_in, run_at = get("parents"), get("start_in"), get("run_at")
        return cls(
            task_id,
            attempt,
            name if type(name) is str else "",
            args if type(args) is dict else {},
            queue if type(queue) is str else None,
            None if timeout is None or not is_number(timeout) else timeout,
            None if parents is None or type(parents) is not dict
            else {int(k): v for k, v in parents.items() if str(k).isdigit()},
            None if start_in is None or not is_number(start_in) else start_in,
            None if run_at is None or not is_number(run_at) else run_at,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Tasks:
    """Daemon -> worker: the tasks leased to it in one turn. Items that cannot be read
    are left out and counted in `dropped` (their leases expire)."""

    tasks: tuple[Task, ...]
    dropped: int = 0

    CMD: ClassVar[Cmd] = Cmd.TASK

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.TASK, {"tasks": [t.item() for t in self.tasks]})

    @staticmethod
    def of_rows(rows: list[dict[str, Any]], sent_at: float) -> list[bytes]:
        """A TASK message of a claim's rows as they leave at `sent_at` (the daemon's fast
        path: it sends one item for every task it leases, and a Task made of each row and
        its item made again cost about 0.9 µs a task more). Each row is a dict of id,
        name, queue, args, attempt and timeout, in that order (Store.claim's columns),
        then run_at while it is ahead and parents: it becomes its item in place, as
        Task.item writes it (start_in says when to start, from when it was sent, and run_at
        stays, after it, while it is ahead). tests/unit/test_server_core.py checks that both
        write the same bytes."""
        for row in rows:
            run_at = row.pop("run_at", None)
            if run_at is not None and run_at > sent_at:
                row["start_in"] = run_at - sent_at
                row["run_at"] = run_at
        return protocol.encode(Cmd.TASK, {"tasks": rows})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Tasks:
        items = h.get("tasks")
        tasks, dropped = [], 0
        for item in items if isinstance(items, list) else ():
            try:
                tasks.append(Task.from_item(item))
            except ProtocolError:
                dropped += 1
        return cls(tuple(tasks), dropped)


@dataclass(frozen=True, slots=True)
class Reject:
    """Worker -> daemon: it cannot run this task (no handler, stopping, no free slot).
    `passing`: not now, for want of a free slot; the worker still takes tasks of that
    name. Otherwise (no handler, stopping, a journal it cannot write) the daemon sends it
    no more of them, as it did with every REJECT before the field."""

    task_id: int
    attempt: int
    name: str | None
    reason: str
    passing: bool = False

    CMD: ClassVar[Cmd] = Cmd.REJECT

    def encode(self) -> list[bytes]:
        header: dict[str, Any] = {"id": self.task_id, "attempt": self.attempt, "name": self.name,
                                  "reason": self.reason}  # fmt: skip
        if self.passing:
            header["passing"] = True
        return protocol.encode(Cmd.REJECT, header)

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Reject:
        if not is_id(h.get("id")) or not is_id(h.get("attempt")):
            raise ProtocolError("a REJECT without a valid id and attempt")
        name = h.get("name")
        return cls(
            h["id"], h["attempt"], name if isinstance(name, str) and name else None,
            clean_text(h.get("reason", ""), MAX_REASON) or "", h.get("passing") is True,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Cancel:
    """Daemon -> worker: ask a running (or waiting) task to stop."""

    task_id: int

    CMD: ClassVar[Cmd] = Cmd.CANCEL

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.CANCEL, {"id": self.task_id})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Cancel:
        if not is_id(h.get("id")):
            raise ProtocolError("a CANCEL without a valid id")
        return cls(h["id"])


@dataclass(frozen=True, slots=True)
class HelloAgain:
    """Daemon -> a peer it does not know: say hello again."""

    epoch: str | None = None

    CMD: ClassVar[Cmd] = Cmd.HELLO_AGAIN

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.HELLO_AGAIN, {"epoch": self.epoch})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> HelloAgain:
        return cls(None if h.get("epoch") is None else str(h["epoch"]))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Both ways (any message also counts as one). A worker's says what it runs."""

    running: tuple[int, ...] | None = None  # None: the daemon's, an empty header

    CMD: ClassVar[Cmd] = Cmd.HEARTBEAT

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.HEARTBEAT, {} if self.running is None else {"running": list(self.running)})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Heartbeat:
        running = h.get("running")
        return cls(tuple(i for i in running if is_id(i)) if isinstance(running, list) else None)


@dataclass(frozen=True, slots=True)
class Bye:
    """Worker -> daemon: leaving (what it ran goes back to the queue, no attempt spent)."""

    CMD: ClassVar[Cmd] = Cmd.BYE

    def encode(self) -> list[bytes]:
        return protocol.encode(Cmd.BYE, {})

    @classmethod
    def from_header(cls, h: dict[str, Any]) -> Bye:
        return cls()
