"""The table of connected workers: credit, liveness, ownership (pure)."""

from __future__ import annotations

from martinet.server.peers import PREFETCH_SECONDS, Peer, Peers

T0 = 1000.0


def with_credit(peers: Peers) -> list[Peer]:
    """Every worker that can take a task, as the daemon's claims find them."""
    return [peer for kind in peers.kinds() for peer in peers.take_turns(kind)]


def make(*specs: tuple[str, int]) -> tuple[Peers, list[Peer]]:
    peers = Peers()
    made = [peers.hello(wid, wid.encode(), {"add", wid}, cap, T0) for wid, cap in specs]
    return peers, made


def test_hello_registers_a_worker():
    peers = Peers()
    peer = peers.hello("w1", b"id-1", {"add", "mul"}, 4, T0)
    assert (peer.worker_id, peer.ident, peer.names, peer.capacity, peer.last_seen) == (
        "w1",
        b"id-1",
        {"add", "mul"},
        4,
        T0,
    )
    assert peer.inflight == set() and peer.credit == 4
    assert len(peers) == 1 and list(peers) == [peer]
    assert peers.get("w1") is peer and peers.by_ident(b"id-1") is peer
    assert peers.get("w2") is None and peers.by_ident(b"nope") is None


def test_hello_copies_names_and_clamps_capacity():
    names = {"add"}
    peers = Peers()
    peer = peers.hello("w1", b"i", names, -3, T0)
    names.add("later")
    assert peer.names == {"add"}
    assert peer.capacity == 0 and peer.credit == 0
    assert with_credit(peers) == []


def test_repeated_hello_replaces_the_worker_and_its_ident():
    peers = Peers()
    old = peers.hello("w1", b"old", {"add"}, 2, T0)
    peers.assign(old, 7)
    new = peers.hello("w1", b"new", {"mul"}, 3, T0 + 5)
    assert new is not old
    assert len(peers) == 1
    assert peers.get("w1") is new
    assert peers.by_ident(b"new") is new
    assert peers.by_ident(b"old") is None
    assert new.inflight == set() and new.credit == 3 and new.names == {"mul"}
    assert peers.owner(7) is None  # a fresh start: the old leases are not its slots
    assert peers.release(7) is None


def test_credit_is_capacity_minus_inflight():
    peers, (peer,) = make(("w1", 3))
    peers.assign(peer, 1)
    peers.assign(peer, 2)
    assert peer.credit == 1
    peers.assign(peer, 2)  # the same task twice takes one slot
    assert peer.credit == 1
    peers.assign(peer, 3)
    assert peer.credit == 0
    peers.assign(peer, 4)  # over capacity never goes negative
    assert peer.credit == 0


def test_assign_release_and_owner():
    peers, (a, b) = make(("a", 2), ("b", 2))
    peers.assign(a, 10)
    peers.assign(b, 20)
    assert peers.owner(10) is a and peers.owner(20) is b
    assert peers.owner(30) is None
    assert peers.release(10) is a
    assert a.inflight == set() and a.credit == 2
    assert peers.owner(10) is None
    assert peers.release(10) is None  # twice: nothing to give back
    assert peers.release(999) is None
    assert b.inflight == {20}


def test_workers_with_credit_take_turns_by_kind():
    peers = Peers()
    a, b, c = (peers.hello(w, w.encode(), {"add"}, 1, T0) for w in "abc")
    other = peers.hello("o", b"o", {"mul"}, 1, T0, queues={"q"})
    kinds = peers.kinds()
    assert sorted(kinds, key=repr) == sorted(
        [(frozenset({"add"}), None), (frozenset({"mul"}), frozenset({"q"}))], key=repr
    )
    assert peers.kinds() == kinds[1:] + kinds[:1]  # which kind is asked first rotates
    kind = (frozenset({"add"}), None)
    assert [p.worker_id for p in peers.take_turns(kind)] == ["a", "b", "c"]
    turns = peers.take_turns(kind)
    assert next(turns) is a
    peers.assign(a, 1)  # its credit is spent: it leaves the line
    assert [p.worker_id for p in turns] == ["b", "c"]
    assert [p.worker_id for p in peers.take_turns(kind)] == ["b", "c"]
    peers.release(1)
    assert [p.worker_id for p in peers.take_turns(kind)] == ["b", "c", "a"]  # back, at the end
    peers.drop_name(other, "mul")
    assert (frozenset(), frozenset({"q"})) in peers.kinds()


def test_with_credit_excludes_full_peers():
    peers, (a, b, c) = make(("a", 1), ("b", 2), ("c", 1))
    peers.assign(a, 1)
    peers.assign(b, 2)
    for _ in range(4):
        assert {p.worker_id for p in with_credit(peers)} == {"b", "c"}
    peers.assign(b, 3)
    peers.assign(c, 4)
    assert with_credit(peers) == [] and not peers.any_credit() and peers.kinds() == []
    peers.release(3)
    assert with_credit(peers) == [b] and peers.any_credit()
    assert sorted(peers.busy()) == ["a", "b", "c"]


def test_silent_lists_workers_not_heard_from_in_time():
    peers, (a, b) = make(("a", 1), ("b", 1))
    peers.seen("b", T0 + 4)
    peers.seen("ghost", T0 + 4)  # unknown: ignored
    assert peers.silent(T0 + 3, 3.0) == []  # exactly the timeout is not yet silent
    assert peers.silent(T0 + 3.5, 3.0) == [a]
    assert peers.silent(T0 + 7.5, 3.0) == [a, b]
    assert len(peers) == 2  # silent() does not remove
    peers.excuse(2.0)  # the daemon did not listen for 2 s: that silence is not theirs
    assert peers.silent(T0 + 7.5, 3.0) == [a]


def test_heartbeats_come_due_once_an_interval_each():
    peers, (a, b) = make(("a", 1), ("b", 1))
    peers.hello("c", b"c", {"add"}, 1, T0 + 0.5)
    assert peers.next_heartbeat(1.0) == T0 + 1.0
    assert peers.due_heartbeats(T0 + 0.9, 1.0) == []
    assert [p.worker_id for p in peers.due_heartbeats(T0 + 0.9, 1.0, early=0.25)] == ["a", "b"]
    assert peers.next_heartbeat(1.0) == T0 + 1.5  # c's
    assert [p.worker_id for p in peers.due_heartbeats(T0 + 2.0, 1.0)] == ["c", "a", "b"]
    peers.remove("c")
    assert [p.worker_id for p in peers.due_heartbeats(T0 + 3.0, 1.0)] == ["a", "b"]


def test_remove_clears_the_worker_and_its_owners():
    peers, (a, b) = make(("a", 2), ("b", 2))
    peers.assign(a, 1)
    peers.assign(a, 2)
    peers.assign(b, 3)
    assert peers.remove("a") is a
    assert peers.get("a") is None and peers.by_ident(b"a") is None
    assert peers.owner(1) is None and peers.owner(2) is None
    assert peers.release(1) is None
    assert peers.owner(3) is b
    assert peers.remove("a") is None
    assert list(peers) == [b]


def test_handles_lists_workers_by_task_name():
    peers, (a, b) = make(("a", 1), ("b", 1))
    assert peers.handles("add") == [a, b]
    assert peers.handles("a") == [a]
    assert peers.handles("nobody") == []
    peers.assign(a, 1)  # being full does not matter here
    assert peers.handles("add") == [a, b]


def test_iteration_is_a_snapshot():
    peers, _ = make(("a", 1), ("b", 1))
    for peer in peers:
        peers.remove(peer.worker_id)
    assert len(peers) == 0


def test_idle_threads_leave_out_what_a_worker_holds_in_its_prefetch():
    peers = Peers()
    peer = peers.hello("w1", b"i1", {"add"}, capacity=4, now=0.0, threads=2)
    assert (peer.credit, peer.idle_threads) == (4, 2)
    for task_id in (1, 2, 3):
        peers.assign(peer, task_id)
    assert (peer.credit, peer.idle_threads) == (1, 0)
    old = peers.hello("w2", b"i2", {"add"}, capacity=3, now=0.0)  # threads unknown: all of its capacity
    assert old.idle_threads == 3


def test_time_limits_count_from_when_a_thread_takes_the_task_not_from_the_prefetch():
    # Given a worker with two threads and room for two more tasks in its prefetch
    peers = Peers()
    peer = peers.hello("w1", b"i1", {"add"}, capacity=4, now=0.0, threads=2)
    for task_id, now in ((1, 10.0), (2, 11.0), (3, 12.0), (4, 13.0)):
        peers.assign(peer, task_id, now)
    # Then the first two have a thread since they were sent; the others wait, in order
    assert [peer.clock(t) for t in (1, 2, 3, 4)] == [10.0, 11.0, None, None]
    # When a task with a thread ends, the next one sent takes its thread then
    peers.release(2, 20.0)
    assert [peer.clock(t) for t in (1, 3, 4)] == [10.0, 20.0, None]
    # A task that ends from the prefetch frees no thread
    peers.release(4, 21.0)
    assert (peer.clock(1), peer.clock(3), peer.prefetched) == (10.0, 20.0, {})
    peers.assign(peer, 5, 22.0)
    peers.release(1, 23.0)
    assert (peer.clock(3), peer.clock(5)) == (20.0, 23.0)
    # Assigning a task twice changes nothing; a task not its own has no clock
    peers.assign(peer, 5, 99.0)
    assert peer.clock(5) == 23.0 and peer.clock(1) is None and len(peer.inflight) == 2


def test_a_turns_leases_and_ends_together_leave_what_one_by_one_would():
    """assign_all and release_all (a claim's hundred tasks, a turn's outcomes) change the
    table as assign and release would, task by task: slots, clocks, the line of workers
    with credit, and what a failed turn puts back."""

    def state(peers: Peers, *made: Peer) -> list:
        return [[sorted(p.inflight), dict(p.clocks), list(p.prefetched), p.credit] for p in made] + [
            [p.worker_id for p in with_credit(peers)],
            sorted(peers.busy()),
            peers.held(),
        ]

    def run(batched: bool) -> tuple[list, list, list]:
        peers = Peers()
        a = peers.hello("a", b"a", {"add"}, capacity=4, now=0.0, threads=2)
        b = peers.hello("b", b"b", {"add"}, capacity=2, now=0.0, threads=1)
        leases = {a: [(1, 10.0), (2, 11.0), (3, 12.0), (1, 99.0)], b: [(7, 13.0), (8, 14.0)]}
        for peer, leased in leases.items():
            if batched:
                peers.assign_all(peer, leased)
            else:
                for task_id, now in leased:
                    peers.assign(peer, task_id, now)
        leased_state = state(peers, a, b)
        peers.begin()
        ended = [2, 3, 7, 8, 42]  # (42: no one's)
        if batched:
            peers.release_all(ended, 20.0)
        else:
            for task_id in ended:
                peers.release(task_id, 20.0)
        ended_state = state(peers, a, b)
        peers.rollback()
        return leased_state, ended_state, state(peers, a, b)

    one_by_one, together = run(batched=False), run(batched=True)
    assert together == one_by_one
    leased, ended, rolled_back = together
    assert leased[0] == [[1, 2, 3], {1: 10.0, 2: 11.0}, [3], 1]  # a: two threads, one waits
    assert leased[1][3] == 0 and leased[2] == ["a"]  # b is full: out of the line
    assert ended[0] == [[1], {1: 10.0}, [], 3] and ended[1] == [[], {}, [], 2]
    assert ended[2:] == [["a", "b"], ["a"], 1]
    assert rolled_back == leased


def test_a_worker_of_unknown_threads_runs_its_whole_capacity_at_once():
    peers = Peers()
    peer = peers.hello("w1", b"i1", {"add"}, capacity=2, now=0.0)
    for task_id in (1, 2):
        peers.assign(peer, task_id, 5.0)
    assert (peer.clock(1), peer.clock(2), peer.prefetched) == (5.0, 5.0, {})


def test_a_worker_that_lets_it_is_filled_deeper_while_its_tasks_are_short():
    """A worker's hello may say how deep its prefetch may go (prefetch_max): its outcomes
    then bring the pace of its handlers, and the daemon keeps PREFETCH_SECONDS of work a
    thread in it, as deep as prefetch_max allows, never less than its capacity."""
    peers = Peers()
    paced = peers.hello("w1", b"w1", {"add"}, 33, T0, threads=1, prefetch_max=256)
    fixed = peers.hello("w2", b"w2", {"add"}, 33, T0, threads=1)
    assert (paced.depth, fixed.depth) == (33, 33)  # no pace heard yet: its capacity
    for task_id in range(33):
        peers.assign(paced, task_id)
        peers.assign(fixed, 100 + task_id)
    assert with_credit(peers) == []
    peers.paced(paced, PREFETCH_SECONDS / 100)  # 100 tasks' worth a thread
    peers.paced(fixed, PREFETCH_SECONDS / 100)  # (it did not ask for it: nothing changes)
    assert (paced.depth, paced.credit, fixed.depth) == (101, 68, 33)
    assert with_credit(peers) == [paced]
    peers.paced(paced, PREFETCH_SECONDS / 10_000)  # tiny tasks: as deep as it said at most
    assert paced.depth == 257
    peers.paced(paced, 2.0)  # long ones: its capacity again, and no credit while it holds 33
    assert (paced.depth, paced.credit) == (33, 0)
    assert with_credit(peers) == []
    eight = peers.hello("w3", b"w3", {"add"}, 40, T0, threads=8, prefetch_max=256)
    peers.paced(eight, PREFETCH_SECONDS / 10)  # ten tasks' worth for each of its threads
    assert eight.depth == 8 + 80
