"""Two stores in one process, each on its own database (two embedded daemons, each in
its own thread), never mix: every query a store runs goes to its own database, never
through a global (models.bind; the shared models stay unbound)."""

from __future__ import annotations

import json
import threading

from martinet import models
from martinet.store import EventRows, Outcome, Store, open_database
from tests.store.support import LEASE, NOW

ROUNDS = 12
WAIT = 30.0  # seconds a thread waits for the other at each step, at most


def _daemon(tag: str, url: str, steps: threading.Barrier, errors: list[BaseException]) -> None:
    """A daemon's turns on its own store, step by step in lockstep with the other thread:
    submits (one, many, keyed, after another), schedules expanded, queue settings and
    limits, claims and starts, progress, outcomes, events."""
    try:
        store = Store(open_database(url))
        try:
            name, queue = f"{tag}.job", f"q{tag}"
            for n in range(ROUNDS):
                now = NOW + n * 60
                with store.atomic():
                    steps.wait(WAIT)
                    first, _ = store.submit(
                        {"name": name, "queue": queue, "max_attempts": 1, "request_id": f"{tag}-{n}"}, now
                    )
                    store.submit({"name": name, "queue": queue, "max_attempts": 2, "key": f"{tag}-k{n}"}, now)
                    store.submit({"name": name, "queue": queue, "max_attempts": 2, "after": [first]}, now)
                    steps.wait(WAIT)
                    store.submit_many([{"name": name, "queue": queue, "max_attempts": 1}] * 2, now)
                    if n == 0:
                        spec = {"name": f"{tag}.tick", "queue": queue, "kind": "interval", "spec": "60"}
                        store.add_schedule({**spec, "key": f"{tag}-every-minute"}, NOW, NOW)
                    steps.wait(WAIT)
                    store.expand_schedules(now, 3)
                    store.save_queue(queue, now, weight=n + 1)
                    store.save_task_limit(name, n + 1, (n + 1, 1.0), now)
                    steps.wait(WAIT)
                    claimed = store.claim(f"{tag}-worker", [name, f"{tag}.tick"], 4, now, LEASE, queue=queue)
                    store.start([(t["id"], t["attempt"], f"{tag}-worker") for t in claimed], now)
                    steps.wait(WAIT)
                    if claimed:
                        store.progress(
                            claimed[0]["id"], claimed[0]["attempt"], f"{tag}-worker", 0.5, tag, now
                        )
                    outcomes = [
                        Outcome(t["id"], t["attempt"], f"{tag}-worker", "succeeded", result=tag)
                        if i % 2 == 0
                        else Outcome(t["id"], t["attempt"], f"{tag}-worker", "failed", error={"type": tag})
                        for i, t in enumerate(claimed)
                    ]
                    steps.wait(WAIT)
                    store.end_attempts(outcomes, now + 1)
                    store.promote_due(now + 3600)
                    ids = [t["id"] for t in claimed]
                    body = json.dumps({"tag": tag})
                    store.record_events(
                        EventRows(ids, [name] * len(ids), ["succeeded"] * len(ids), [body] * len(ids)), now
                    )
        finally:
            store.close()
    except BaseException as exc:  # the other thread must not wait for this one in vain
        steps.abort()
        errors.append(exc)


def test_two_stores_in_two_threads_each_write_only_their_own_database(tmp_path):
    # Given the shared models bound to no database: a store that used them would fail
    assert all(model._meta.database is None for model in models.TABLES)
    urls = {tag: f"sqlite:///{tmp_path / tag}.db" for tag in ("a", "b")}
    steps = threading.Barrier(2)
    errors: list[BaseException] = []
    # When two daemons, each in its own thread on its own database, interleave their turns
    threads = [threading.Thread(target=_daemon, args=(tag, url, steps, errors)) for tag, url in urls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    # Then each database holds its own rows only, all of them
    for tag, url in urls.items():
        db = open_database(url)
        try:
            t = models.bind(db)
            tasks = list(t.Task.select())
            assert len(tasks) == ROUNDS * 5 + ROUNDS  # 5 submitted a round, and one run a minute
            assert {task.name for task in tasks} == {f"{tag}.job", f"{tag}.tick"}
            assert {task.queue for task in tasks} == {f"q{tag}"}
            assert {task.worker for task in tasks} <= {None, f"{tag}-worker"}
            assert {task.result for task in tasks} <= {None, f'"{tag}"'}
            assert {task.error_type for task in tasks} <= {None, tag}
            assert {task.progress_message for task in tasks} <= {None, tag}
            attempts = list(t.Attempt.select())
            assert attempts and {a.worker for a in attempts} == {f"{tag}-worker"}
            assert {a.task_id for a in attempts} <= {task.id for task in tasks}
            assert [s.name for s in t.Schedule.select()] == [f"{tag}.tick"]
            assert [(q.name, q.weight) for q in t.QueueSetting.select()] == [(f"q{tag}", ROUNDS)]
            assert [(lim.name, lim.concurrency) for lim in t.TaskLimit.select()] == [(f"{tag}.job", ROUNDS)]
            events = list(t.Event.select())
            assert events and {e.body for e in events} == {json.dumps({"tag": tag})}
            assert t.Dependency.select().count() == ROUNDS
        finally:
            db.close()
