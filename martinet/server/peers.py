"""The table of connected workers: what they run, their credit, their liveness (pure).

A worker's credit is its capacity minus the tasks the daemon has leased to it
and not yet seen end, so the daemon never sends more than a worker asked for.
Its capacity counts the tasks it runs at once (threads) and those it holds ready
for its next free thread (prefetch). A worker that lets it (its hello's
prefetch_max: martinet-worker's default prefetch) has its prefetch filled deeper
while its tasks are short, by the pace of its handlers (Peer.depth).

A turn of the daemon must cost the same with five workers or five thousand idle
ones, so the table keeps what a turn asks for at hand instead of scanning every
worker: those with credit, grouped by what they run and serve (a fleet has few
kinds of workers, and a claim that finds nothing for one skips its whole kind);
those holding tasks (whose leases heartbeats renew); the order in which they
were last heard from (the silent ones are at the front) and last sent a
heartbeat (the ones due are at the front).

The table also keeps the daemon's picture of which of a worker's tasks have a
thread, and since when: a worker starts what it is sent in the order sent, one
task per free thread, and a task's time limit counts from its start. The daemon
enforces time limits itself (a worker may be stuck, or lie), so it must not count
the time a task waits in a prefetch; see Peers.assign and Peer.clock. A worker
that reports its starts (STARTED: the task is running in the store, started_at
real) needs no guess; the picture is the rule for one that does not, and still
tells which workers have an idle thread.

A turn of the server changes the table as it goes (an outcome frees a slot that a claim
of the same turn takes), and its transaction may then fail: the table keeps, from
begin() on, each worker as it was before the turn first changed it, and rollback()
puts them back exactly (see Peers.begin). Liveness (when last heard from, heartbeats
sent) is what happened on the wire, not a picture of the database: it is not undone.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# What a worker runs and serves: its task names, and its queues (None: all of them).
Kind = tuple[frozenset[str], frozenset[str] | None]

# Seconds of its handlers' work a worker's prefetch holds a thread, at its pace, when it
# lets the daemon fill it deeper than its capacity (Peer.depth). Tiny tasks then come in
# batches of a hundred: each daemon turn carries that many outcomes and claims, where a
# drain of them on PostgreSQL spent a third of its time on the turns' fixed costs (round
# trips, the commit). Short enough that a worker never holds more than a blink of work
# that another could take, and tasks of 2 ms or more get the capacity as before.
PREFETCH_SECONDS = 0.05


@dataclass(eq=False)
class Peer:
    worker_id: str
    ident: bytes  # routing id on the worker socket
    names: set[str]
    capacity: int
    last_seen: float
    inflight: set[int] = field(default_factory=set)
    queues: set[str] | None = None  # the queues it serves; None: all
    threads: int | None = None  # tasks it runs at once; None: its whole capacity
    # Tasks with a thread, as far as the daemon can tell, and since when their time limit
    # counts; the others wait in its prefetch, in the order sent (a dict: ordered, O(1) removal).
    clocks: dict[int, float] = field(default_factory=dict)
    prefetched: dict[int, None] = field(default_factory=dict)
    # Tasks whose attempt the daemon ended past its time limit, still unanswered by this
    # worker: their threads may be stuck in them, so they keep their slots until it answers
    # (its answer is fenced out, and frees the slot). A stuck worker thus gets no more work.
    stuck: set[int] = field(default_factory=set)
    _kind: Kind | None = field(default=None, repr=False)
    # It says when a handler starts a task (STARTED): its leased tasks wait in its prefetch,
    # and its running ones have their real start in the store. Else the clocks are a guess.
    reports_starts: bool = False
    # The secret its welcome gave it: its status messages carry it (outcomes._from_its_worker).
    session: str = ""
    # Its process's own id (Hello.incarnation; None from older workers)
    incarnation: str | None = None
    # Its CURVE key (z85), when the daemon has keys: a worker id is bound to the key that
    # said hello with it. None without keys.
    key: str | None = None
    # How deep its prefetch may go while its tasks are short (its hello's; None: never
    # beyond its capacity), and the seconds its handlers took a task of late (its ENDED's).
    prefetch_max: int | None = None
    pace: float | None = None

    @property
    def credit(self) -> int:
        return max(0, self.depth - len(self.inflight) - len(self.stuck))

    @property
    def depth(self) -> int:
        """The tasks it may hold now: its capacity; or, with a prefetch_max and a pace,
        PREFETCH_SECONDS of work a thread, as far down as prefetch_max allows, where
        that is more than its capacity."""
        if self.prefetch_max is None or self.pace is None:
            return self.capacity
        threads = self.thread_count
        return max(
            self.capacity, threads + min(self.prefetch_max, int(threads * PREFETCH_SECONDS / self.pace))
        )

    @property
    def idle_threads(self) -> int:
        """How many tasks sent now would start at once, not wait in its prefetch."""
        return max(0, self.thread_count - len(self.inflight) - len(self.stuck))

    @property
    def thread_count(self) -> int:
        return self.capacity if self.threads is None else min(self.threads, self.capacity)

    def clock(self, task_id: int) -> float | None:
        """Since when the task's time limit counts, as far as the daemon can tell: when it
        was sent (or due) if a thread was free then, else when one freed up for it. None
        while it waits in the prefetch (or is not this worker's)."""
        return self.clocks.get(task_id)

    @property
    def kind(self) -> Kind:
        """Worked out once: it is asked at every task sent and ended (see Peers.drop_name)."""
        if self._kind is None:
            self._kind = frozenset(self.names), None if self.queues is None else frozenset(self.queues)
        return self._kind


class Peers:
    def __init__(self) -> None:
        self._by_id: dict[str, Peer] = {}
        self._by_ident: dict[bytes, str] = {}
        self._owner: dict[int, str] = {}  # task id -> worker id
        self._free: dict[Kind, OrderedDict[str, Peer]] = {}  # with credit; the longest waiting first
        self._busy: set[str] = set()  # holding tasks
        self._by_seen: OrderedDict[str, Peer] = OrderedDict()  # the longest silent first
        self._beats: OrderedDict[str, float] = OrderedDict()  # when last sent a heartbeat, oldest first
        self._turn = 0  # rotates which kind is offered work first
        # serves() answers, until a worker comes, goes or drops a name: a submit asks it for
        # every task, and scanning five thousand workers each time would cost every call.
        self._serves: dict[tuple[str, str | None], bool] = {}
        # Each worker changed since begin(), as it was before (None: not connected then).
        self._saved: dict[str, tuple[Any, ...] | None] | None = None

    # ---- a turn's changes, undone if its transaction fails -------------------------

    def begin(self) -> None:
        """A turn starts: what changes from now on can be undone (rollback) until commit."""
        self._saved = {}

    def commit(self) -> None:
        """The turn's transaction is committed: its changes stand."""
        self._saved = None

    def _keep(self, worker_id: str) -> None:
        """Called before a worker's registration or holdings change: keep it as it was."""
        saved = self._saved
        if saved is None or worker_id in saved:
            return
        peer = self._by_id.get(worker_id)
        saved[worker_id] = None if peer is None else (
            peer, set(peer.inflight), dict(peer.clocks), dict(peer.prefetched), set(peer.stuck),
            set(peer.names), peer.capacity, self._beats.get(worker_id, peer.last_seen),
        )  # fmt: skip

    def rollback(self) -> None:
        """The turn's transaction failed: every worker it changed is put back as it was
        (its tasks, slots, stuck tasks, names; a worker that said hello in the turn is
        the one before it, or none)."""
        saved, self._saved = self._saved, None
        if not saved:
            return
        for worker_id in saved:  # out with what the turn made...
            current = self._by_id.pop(worker_id, None)
            if current is not None:
                self._unindex(current)
                if self._by_ident.get(current.ident) == worker_id:
                    del self._by_ident[current.ident]
                self._busy.discard(worker_id)
                for task_id in current.inflight:
                    if self._owner.get(task_id) == worker_id:
                        del self._owner[task_id]
            self._by_seen.pop(worker_id, None)
            self._beats.pop(worker_id, None)
        for worker_id, state in saved.items():  # ...in with what was
            if state is None:
                continue
            peer, inflight, clocks, prefetched, stuck, names, capacity, beat = state
            peer.inflight, peer.clocks, peer.prefetched, peer.stuck = inflight, clocks, prefetched, stuck
            peer.names, peer.capacity, peer._kind = names, capacity, None
            self._by_id[worker_id] = peer
            self._by_ident[peer.ident] = worker_id
            for task_id in inflight:
                self._owner[task_id] = worker_id
            if inflight:
                self._busy.add(worker_id)
            self._index(peer)
            self._by_seen[worker_id] = peer
            self._beats[worker_id] = beat
        # Kept in order of when last heard from, and last sent a heartbeat (see silent()).
        self._by_seen = OrderedDict(sorted(self._by_seen.items(), key=lambda item: item[1].last_seen))
        self._beats = OrderedDict(sorted(self._beats.items(), key=lambda item: item[1]))
        self._serves.clear()

    # ---- the table ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._by_id.values()))

    def hello(
        self,
        worker_id: str,
        ident: bytes,
        names: set[str],
        capacity: int,
        now: float,
        queues: set[str] | None = None,
        threads: int | None = None,
        session: str = "",
        key: str | None = None,
        prefetch_max: int | None = None,
    ) -> Peer:
        """Register (or re-register) a worker. A repeated hello starts it afresh."""
        self._keep(worker_id)
        self.remove(worker_id)
        self._serves.clear()
        peer = Peer(
            worker_id, ident, set(names), max(0, capacity), now, queues=queues, threads=threads,
            session=session, key=key, prefetch_max=prefetch_max,
        )  # fmt: skip
        self._by_id[worker_id] = peer
        self._by_ident[ident] = worker_id
        self._by_seen[worker_id] = peer
        self._beats[worker_id] = now  # its welcome is on its way
        self._index(peer)
        return peer

    def get(self, worker_id: str) -> Peer | None:
        return self._by_id.get(worker_id)

    def by_ident(self, ident: bytes) -> Peer | None:
        worker_id = self._by_ident.get(ident)
        return None if worker_id is None else self._by_id.get(worker_id)

    def seen(self, worker_id: str, now: float) -> None:
        """Heard from `worker_id` at `now` (a time that never goes back)."""
        peer = self._by_id.get(worker_id)
        if peer is not None:
            peer.last_seen = now
            self._by_seen.move_to_end(worker_id)

    def remove(self, worker_id: str) -> Peer | None:
        self._keep(worker_id)
        peer = self._by_id.pop(worker_id, None)
        if peer is not None:
            self._serves.clear()
            self._unindex(peer)
            self._by_ident.pop(peer.ident, None)
            self._by_seen.pop(worker_id, None)
            self._beats.pop(worker_id, None)
            self._busy.discard(worker_id)
            for task_id in peer.inflight:
                self._owner.pop(task_id, None)
        return peer

    def unreachable(self, peer: Peer) -> None:
        """Its connection is gone: it takes no more tasks until it says hello again."""
        self._keep(peer.worker_id)
        self._unindex(peer)
        peer.capacity = 0

    def drop_name(self, peer: Peer, name: str) -> None:
        """The worker cannot run `name` after all (it refused such a task)."""
        self._keep(peer.worker_id)
        self._unindex(peer)
        self._serves.clear()
        peer.names.discard(name)
        peer._kind = None
        self._index(peer)

    def excuse(self, gap: float) -> None:
        """The daemon itself did not listen for `gap` seconds: nobody's silence counts for them."""
        for peer in self._by_seen.values():
            peer.last_seen += gap

    def silent(self, now: float, timeout: float) -> list[Peer]:
        """Workers not heard from in `timeout` seconds (not removed here)."""
        found = []
        for peer in self._by_seen.values():
            if now - peer.last_seen <= timeout:
                break
            found.append(peer)
        return found

    def due_heartbeats(self, now: float, interval: float, early: float = 0.0) -> list[Peer]:
        """Workers sent nothing for `interval` seconds (or `early` less): each is counted
        as sent one now."""
        due = []
        for worker_id, sent in self._beats.items():
            if sent + interval - early > now:
                break
            due.append(self._by_id[worker_id])
        for peer in due:
            self._beats.move_to_end(peer.worker_id)
            self._beats[peer.worker_id] = now
        return due

    def next_heartbeat(self, interval: float) -> float | None:
        """When the next heartbeat is due, if any worker is connected."""
        for sent in self._beats.values():
            return sent + interval
        return None

    def any_credit(self) -> bool:
        return bool(self._free)

    def paced(self, peer: Peer, pace: float) -> None:
        """Its handlers took `pace` seconds a task of late: its depth follows (a hint of
        the wire, like liveness: not undone with a turn)."""
        if peer.prefetch_max is None or pace == peer.pace:
            return
        peer.pace = pace
        if peer.credit > 0:
            self._index(peer)
        else:
            self._unindex(peer)

    def alone_with_credit(self) -> bool:
        """Whether exactly one worker has credit."""
        return len(self._free) == 1 and len(next(iter(self._free.values()))) == 1

    def kinds(self) -> list[Kind]:
        """What the workers with credit run and serve, one entry per kind, in an order
        that rotates between calls."""
        kinds = list(self._free)
        if not kinds:
            return []
        self._turn = (self._turn + 1) % len(kinds)
        return kinds[self._turn :] + kinds[: self._turn]

    def take_turns(self, kind: Kind) -> Iterator[Peer]:
        """The workers of `kind` with credit, the longest waiting first; each goes to the back
        as its turn comes. Workers that lose their credit meanwhile leave the line."""
        for _ in range(len(self._free.get(kind, ()))):
            line = self._free.get(kind)
            if not line:
                return
            worker_id = next(iter(line))
            line.move_to_end(worker_id)
            yield line[worker_id]

    def busy(self) -> list[str]:
        """The workers holding tasks."""
        return list(self._busy)

    def assign(self, peer: Peer, task_id: int, now: float = 0.0) -> None:
        """The task is leased to this worker; its time limit counts from `now` (the time it
        was sent, or its due time if later) if the worker has a thread free for it, else
        from when one frees up (see release)."""
        self.assign_all(peer, ((task_id, now),))

    def assign_all(self, peer: Peer, leased: Iterable[tuple[int, float]]) -> None:
        """Tasks leased to this worker, each with its `now` as assign's: the worker's
        threads and credit looked at once, not once a task (a claim leases a hundred)."""
        worker_id = peer.worker_id
        if self._saved is not None and worker_id not in self._saved:
            self._keep(worker_id)
        inflight, clocks, prefetched, owner = peer.inflight, peer.clocks, peer.prefetched, self._owner
        threads = peer.thread_count
        for task_id, now in leased:
            if task_id in inflight:
                continue
            inflight.add(task_id)
            owner[task_id] = worker_id
            if len(clocks) < threads:
                clocks[task_id] = now
            else:
                prefetched[task_id] = None
        if inflight:
            self._busy.add(worker_id)
            if peer.credit == 0:
                self._unindex(peer)

    def release(self, task_id: int, now: float = 0.0) -> Peer | None:
        """The task's attempt ended: give its slot back to whoever held it. A thread it
        had goes to the task sent next (its time limit counts from `now`)."""
        worker_id = self._owner.get(task_id)
        if worker_id is None:
            return None
        self.release_all((task_id,), now)
        return self._by_id.get(worker_id)

    def release_all(self, task_ids: Iterable[int], now: float = 0.0) -> None:
        """release's, for many tasks: each worker's credit and line looked at once."""
        owner, saved = self._owner, self._saved
        freed: dict[str, Peer] = {}
        for task_id in task_ids:
            worker_id = owner.get(task_id)
            if worker_id is None:
                continue
            if saved is not None and worker_id not in saved:
                self._keep(worker_id)
            del owner[task_id]
            peer = self._by_id.get(worker_id)
            if peer is not None and task_id in peer.inflight:
                peer.inflight.discard(task_id)
                peer.prefetched.pop(task_id, None)
                peer.clocks.pop(task_id, None)
                freed[worker_id] = peer
        for worker_id, peer in freed.items():
            if not peer.inflight:
                self._busy.discard(worker_id)
            self._index(peer)
            threads = peer.thread_count  # a thread freed goes to the task sent next
            while peer.prefetched and len(peer.clocks) < threads:
                waiting = next(iter(peer.prefetched))
                del peer.prefetched[waiting]
                peer.clocks[waiting] = now

    def stick(self, peer: Peer, task_id: int, now: float) -> None:
        """The daemon ended this task's attempt without its worker's word (its time limit
        passed): its slot stays taken until the worker answers for it (see unstick)."""
        self.release(task_id, now)
        self._keep(peer.worker_id)
        peer.stuck.add(task_id)
        if peer.credit == 0:
            self._unindex(peer)

    def unstick(self, worker_id: str, task_id: int) -> None:
        """The worker answered for a task it was stuck in: its slot is free again."""
        peer = self._by_id.get(worker_id)
        if peer is not None and task_id in peer.stuck:
            self._keep(worker_id)
            peer.stuck.discard(task_id)
            self._index(peer)

    def held(self) -> int:
        """How many tasks the workers hold (leased or running)."""
        return len(self._owner)

    def owner(self, task_id: int) -> Peer | None:
        worker_id = self._owner.get(task_id)
        return None if worker_id is None else self._by_id.get(worker_id)

    def handles(self, name: str, queue: str | None = None) -> list[Peer]:
        """Workers that run `name` (and serve `queue`, when given)."""
        return [
            p
            for p in self._by_id.values()
            if name in p.names and (queue is None or p.queues is None or queue in p.queues)
        ]

    def serves(self, name: str, queue: str | None = None) -> bool:
        """Whether a connected worker runs `name` (and serves `queue`, when given)."""
        known = self._serves.get((name, queue))
        if known is None:
            if len(self._serves) >= 10_000:  # many names submitted: memory stays bounded
                self._serves.clear()
            known = self._serves[(name, queue)] = any(
                name in p.names and (queue is None or p.queues is None or queue in p.queues)
                for p in self._by_id.values()
            )
        return known

    def _index(self, peer: Peer) -> None:
        """Put a worker with credit in its kind's line (at the back), once."""
        if peer.credit > 0:
            kind = peer.kind
            line = self._free.get(kind)
            if line is None:
                line = self._free[kind] = OrderedDict()
            if peer.worker_id not in line:
                line[peer.worker_id] = peer

    def _unindex(self, peer: Peer) -> None:
        kind = peer.kind
        line = self._free.get(kind)
        if line is not None and line.pop(peer.worker_id, None) is not None and not line:
            del self._free[kind]
