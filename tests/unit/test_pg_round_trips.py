"""What a turn costs on PostgreSQL, in round trips to the server: a few a turn, not one
a statement (README, Performance). Counted at the driver, so a statement added to the
hot path, or one sent apart that could go with another, shows here."""

from __future__ import annotations

import pytest

from martinet.protocol import Cmd


class Trips:
    """Every query string the daemon's connection sends (one round trip each)."""

    def __init__(self, db) -> None:
        self.sent: list[str] = []
        conn = db.connection()
        base = conn.cursor_factory or type(conn.cursor())
        sent = self.sent

        class Counting(base):  # type: ignore[misc, valid-type]
            def execute(self, sql, params=None):
                sent.append(sql)
                return super().execute(sql, params)

            def executemany(self, sql, seq):
                seq = list(seq)
                sent.extend([sql] * len(seq))
                return super().executemany(sql, seq)

        conn.cursor_factory = Counting

    def take(self) -> list[str]:
        taken, self.sent[:] = list(self.sent), []
        return taken


@pytest.fixture
def core(db_url, make_core):
    if not db_url.startswith("postgres"):
        pytest.skip("round trips to a server: PostgreSQL")
    return make_core(db_url)


def hello(worker_id: str) -> tuple[bytes, Cmd, dict]:
    return worker_id.encode(), Cmd.HELLO, {"worker_id": worker_id, "names": ["t"], "capacity": 1}


def test_an_execute_costs_two_round_trips_and_its_dispatch_one_more(core):
    core.turn()  # the first turn's tick (leases, retention, ...) out of the way
    trips = Trips(core.store.db)
    # An execute with no worker connected: the insert (with BEGIN and its savepoint), the commit
    core.turn(client=[(Cmd.REQUEST, {"op": "execute", "rid": "r1", "name": "t", "args": {}})])
    assert len(trips.take()) == 2
    core.turn(worker=[hello("w1"), hello("w2")])
    trips.take()
    # With two idle workers: the insert, its claim (read, leased, returned at once), the commit
    core.turn(client=[(Cmd.REQUEST, {"op": "execute", "rid": "r2", "name": "t", "args": {}})])
    sent = trips.take()
    assert len(sent) == 3, sent


def test_a_turn_of_starts_and_outcomes_costs_one_round_trip_a_kind_of_change(core):
    core.turn(worker=[hello("w1"), hello("w2")])
    tasks = [core.submit("t") for _ in range(6)]
    core.turn()
    held = {t: core.store.get_task(t).worker for t in tasks[:2]}
    trips = Trips(core.store.db)
    # Both workers' starts and outcomes in one turn, and a claim for each worker
    core.turn(status=[
        (Cmd.ENDED, {"worker_id": w, "started": [[t, 1]], "ended": [{"id": t, "attempt": 1, "ok": True}]})
        for t, w in held.items()
    ])  # fmt: skip
    sent = trips.take()
    # the held rows read; their updates (the starts that came with them included); their
    # attempt rows; 2 claims; the commit, with the events (no one subscribes: their ids
    # are not read back)
    assert len(sent) == 6, sent
    assert not any("status = 'running'" in s for s in sent), "a start written on its own"
    assert not any(s.lstrip().startswith(("SAVEPOINT", "RELEASE", "BEGIN")) and ";" not in s for s in sent)
