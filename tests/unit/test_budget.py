"""A connection's budget of messages a second (server/budget.py), and what the daemon does
with one over it: a request is refused with the reason, other messages are dropped, and
the other connections are served as before."""

from __future__ import annotations

from martinet.protocol import Cmd
from martinet.server.budget import IDLE, Budgets
from tests.unit.test_failed_commit import done


def test_a_bucket_allows_a_seconds_worth_then_its_rate():
    b = Budgets(rate=10)
    assert sum(b.allow("client", b"a", 0.0) for _ in range(15)) == 10  # a second's worth at once
    assert b.allow("client", b"b", 0.0)  # another connection has its own
    assert b.allow("worker", b"a", 0.0)  # and so has the same one on another socket
    assert not b.allow("client", b"a", 0.05)
    assert b.allow("client", b"a", 0.1)  # a tenth of a second: one more
    assert sum(b.allow("client", b"a", 5.0) for _ in range(20)) == 10  # full again, never more


def test_silent_connections_are_forgotten_and_zero_means_no_limit():
    b = Budgets(rate=10)
    b.allow("client", b"a", 0.0)
    b.allow("client", b"b", IDLE)
    b.forget(IDLE + 1.0)
    assert len(b) == 1
    assert all(Budgets(rate=0).allow("client", b"a", 0.0) for _ in range(100_000))


def test_requests_over_a_connections_budget_are_refused_and_others_served(db_url, make_core):
    core = make_core(db_url, peer_rate=3)
    pings = [(Cmd.REQUEST, {"op": "ping", "rid": f"r{i}"}) for i in range(5)]
    sent = core.turn(client=pings)
    replies = {h["rid"]: h for _role, _ident, cmd, h in sent if cmd is Cmd.REPLY}
    assert {rid: r["ok"] for rid, r in replies.items()} == {
        "r0": True,
        "r1": True,
        "r2": True,
        "r3": False,
        "r4": False,
    }
    busy = [r for r in replies.values() if not r["ok"]]
    assert busy[0]["error"]["type"] == "Busy"
    assert "peer_rate" in busy[0]["error"]["message"]
    core.now += 1.0  # a second later: room again
    sent = core.turn(client=pings[:1])
    assert [h["ok"] for _role, _ident, cmd, h in sent if cmd is Cmd.REPLY] == [True]


def test_status_messages_over_budget_are_dropped_unacknowledged_and_sent_again_later(db_url, make_core):
    core = make_core(db_url, peer_rate=2)
    core.hello("w1", ["t"])
    ids = [core.submit("t") for _ in range(3)]
    assert sorted(r["id"] for r in core.claim()["w1"]) == ids
    sent = core.turn(status=[done(i) for i in ids])
    acked = [a[0] for _role, _ident, cmd, h in sent if cmd is Cmd.ACK for a in h["acks"]]
    assert acked == ids[:2]  # the third is dropped, not acknowledged: the worker sends it again
    core.now += 1.0
    sent = core.turn(status=[done(ids[2])])
    assert [a[0] for _role, _ident, cmd, h in sent if cmd is Cmd.ACK for a in h["acks"]] == ids[2:]
