"""The table of connected workers: what they run, their credit, their liveness (pure).

A worker's credit is its capacity minus the tasks the daemon has leased to it
and not yet seen end, so the daemon never sends more than a worker asked for.
Its capacity counts the tasks it runs at once (threads) and those it holds ready
for its next free thread (prefetch).

The table also keeps the daemon's picture of which of a worker's tasks have a
thread, and since when: a worker starts what it is sent in the order sent, one
task per free thread, and a task's time limit counts from its start. The daemon
enforces time limits itself (a worker may be stuck, or lie), so it must not count
the time a task waits in a prefetch; see Peers.assign and Peer.clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
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

    @property
    def credit(self) -> int:
        return max(0, self.capacity - len(self.inflight))

    @property
    def idle_threads(self) -> int:
        """How many tasks sent now would start at once, not wait in its prefetch."""
        return max(0, self.thread_count - len(self.inflight))

    @property
    def thread_count(self) -> int:
        return self.capacity if self.threads is None else min(self.threads, self.capacity)

    def clock(self, task_id: int) -> float | None:
        """Since when the task's time limit counts, as far as the daemon can tell: when it
        was sent (or due) if a thread was free then, else when one freed up for it. None
        while it waits in the prefetch (or is not this worker's)."""
        return self.clocks.get(task_id)


class Peers:
    def __init__(self) -> None:
        self._by_id: dict[str, Peer] = {}
        self._by_ident: dict[bytes, str] = {}
        self._owner: dict[int, str] = {}  # task id -> worker id
        self._turn = 0  # rotates who is offered work first

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self):
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
    ) -> Peer:
        """Register (or re-register) a worker. A repeated hello starts it afresh."""
        self.remove(worker_id)
        peer = Peer(worker_id, ident, set(names), max(0, capacity), now, queues=queues, threads=threads)
        self._by_id[worker_id] = peer
        self._by_ident[ident] = worker_id
        return peer

    def get(self, worker_id: str) -> Peer | None:
        return self._by_id.get(worker_id)

    def by_ident(self, ident: bytes) -> Peer | None:
        worker_id = self._by_ident.get(ident)
        return None if worker_id is None else self._by_id.get(worker_id)

    def seen(self, worker_id: str, now: float) -> None:
        peer = self._by_id.get(worker_id)
        if peer is not None:
            peer.last_seen = now

    def remove(self, worker_id: str) -> Peer | None:
        peer = self._by_id.pop(worker_id, None)
        if peer is not None:
            self._by_ident.pop(peer.ident, None)
            for task_id in peer.inflight:
                self._owner.pop(task_id, None)
        return peer

    def silent(self, now: float, timeout: float) -> list[Peer]:
        """Workers not heard from in `timeout` seconds (not removed here)."""
        return [p for p in self._by_id.values() if now - p.last_seen > timeout]

    def with_credit(self) -> list[Peer]:
        """Workers that can take a task, in an order that rotates between calls."""
        peers = [p for p in self._by_id.values() if p.credit > 0]
        if not peers:
            return []
        self._turn = (self._turn + 1) % len(peers)
        return peers[self._turn :] + peers[: self._turn]

    def assign(self, peer: Peer, task_id: int, now: float = 0.0) -> None:
        """The task is leased to this worker; its time limit counts from `now` (the time it
        was sent, or its due time if later) if the worker has a thread free for it, else
        from when one frees up (see release)."""
        if task_id in peer.inflight:
            return
        peer.inflight.add(task_id)
        self._owner[task_id] = peer.worker_id
        if len(peer.clocks) < peer.thread_count:
            peer.clocks[task_id] = now
        else:
            peer.prefetched[task_id] = None

    def release(self, task_id: int, now: float = 0.0) -> Peer | None:
        """The task's attempt ended: give its slot back to whoever held it. A thread it
        had goes to the task sent next (its time limit counts from `now`)."""
        worker_id = self._owner.pop(task_id, None)
        peer = self._by_id.get(worker_id) if worker_id else None
        if peer is not None:
            peer.inflight.discard(task_id)
            peer.prefetched.pop(task_id, None)
            if peer.clocks.pop(task_id, None) is not None:
                while peer.prefetched and len(peer.clocks) < peer.thread_count:
                    waiting = next(iter(peer.prefetched))
                    del peer.prefetched[waiting]
                    peer.clocks[waiting] = now
        return peer

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
