"""Queues and fleet-wide limits, observed from inside the handlers across two workers."""

from __future__ import annotations

from pathlib import Path

import martinet


def spans(log: Path) -> list[tuple[float, float]]:
    return [tuple(map(float, line.split())) for line in log.read_text().splitlines()]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_workers_serve_only_their_queues_and_paused_queues_wait(any_cluster):
    any_cluster.start_daemon()
    any_cluster.start_worker(extra=["--queues", "images"])
    m = any_cluster.client()
    image = m.execute("add", {"a": 1, "b": 1}, queue="images")
    plain = m.execute("add", {"a": 2, "b": 2})
    assert m.wait(image, timeout=10) == 2
    assert m.show(plain)["waiting"] == "no connected worker that handles 'add' serves queue 'default'"
    m.pause_queue("images")
    held = m.execute("add", {"a": 3, "b": 3}, queue="images")
    assert m.show(held)["waiting"] == "queue 'images' is paused"
    listed = {q["name"]: q for q in m.queues()}
    assert listed["images"]["paused"] and listed["images"]["counts"]["queued"] == 1
    assert listed["default"]["served_by"] == 0 and listed["default"]["oldest_waiting_seconds"] >= 0
    m.resume_queue("images")
    assert m.wait(held, timeout=10) == 6


def test_weights_share_a_worker_between_busy_queues(any_cluster, tmp_path):
    any_cluster.start_daemon()
    m = any_cluster.client()
    m.set_queue("bulk", weight=1)
    m.set_queue("urgent", weight=3)
    ids = {m.execute("clock", {"n": i}, queue=q): q for i in range(100) for q in ("bulk", "urgent")}
    any_cluster.start_worker(concurrency=1)
    began = {tid: m.wait(tid, timeout=60) for tid in ids}  # handler start times, in µs
    first = sorted(ids, key=began.get)[:80]
    urgent = sum(1 for t in first if ids[t] == "urgent")
    ratio = urgent / (80 - urgent)
    assert 2.4 <= ratio <= 3.6, ratio  # 3:1 within 20 %


def test_a_queue_concurrency_cap_holds_across_workers(any_cluster, tmp_path):
    any_cluster.start_daemon()
    m = any_cluster.client()
    m.set_queue("narrow", concurrency=2)
    log = tmp_path / "spans"
    ids = [m.execute("span", {"log": str(log), "seconds": 0.05}, queue="narrow") for _ in range(16)]
    any_cluster.start_worker(concurrency=4)
    any_cluster.start_worker(concurrency=4)
    for tid in ids:
        m.wait(tid, timeout=30)
    assert most_at_once(spans(log)) <= 2
    m.set_queue("narrow", concurrency="none")  # cleared
    assert {q["name"]: q for q in m.queues()}["narrow"]["concurrency"] is None


def test_a_rate_is_never_exceeded_across_workers(any_cluster, tmp_path):
    cluster = any_cluster  # on every backend
    cluster.start_daemon()
    m = cluster.client()
    m.set_queue("metered", rate="5/second")
    log = tmp_path / "spans"
    ids = [m.execute("span", {"log": str(log), "seconds": 0.0}, queue="metered") for _ in range(12)]
    cluster.start_worker(concurrency=4)
    cluster.start_worker(concurrency=4)
    for tid in ids:
        m.wait(tid, timeout=30)
    starts = sorted(s for s, _ in spans(log))
    for i, s in enumerate(starts):
        assert len([t for t in starts[i:] if t < s + 1.0]) <= 5  # any one-second window
    assert starts[-1] - starts[0] >= 1.0  # 12 starts at 5/s take over two seconds


def test_a_task_name_limit_declared_by_the_decorator_holds_fleet_wide(any_cluster, tmp_path):
    cluster = any_cluster  # on every backend
    cluster.start_daemon()
    cluster.start_worker("tests.tasks_limited", concurrency=4)
    cluster.start_worker("tests.tasks_limited", concurrency=4)
    m = cluster.client()
    log = tmp_path / "spans"
    ids = [m.execute("capped", {"log": str(log)}) for _ in range(8)]
    for tid in ids:
        m.wait(tid, timeout=30)
    assert most_at_once(spans(log)) == 1


def test_random_order_does_not_keep_submission_order(any_cluster):
    cluster = any_cluster  # on every backend
    cluster.start_daemon()
    m = cluster.client()
    m.set_queue("shuffled", order="random")
    ids = [m.execute("clock", {"n": i}, queue="shuffled") for i in range(30)]
    cluster.start_worker(concurrency=1)
    began = {tid: m.wait(tid, timeout=30) for tid in ids}
    assert sorted(ids, key=began.get) != ids


def test_bad_queue_settings_are_refused(cluster):
    cluster.start_daemon()
    m = cluster.client()
    for kwargs, message in (
        ({"concurrency": -1}, "concurrency must be a whole number"),
        ({"concurrency": 0}, "concurrency must be a whole number of 1 or more ('none' clears it)"),
        ({"weight": 0}, "weight must be a whole number of 1 or more"),
        ({"rate": "fast"}, "could not read 'fast' as a rate"),
        ({"order": "lifo"}, "order must be 'fifo' or 'random'"),
        ({}, "nothing to set"),
    ):
        try:
            m.set_queue("q", **kwargs)
        except martinet.BadInput as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{kwargs} was accepted")
    try:
        m.execute("add", {}, queue="has space")
    except martinet.BadInput as exc:
        assert "is not a queue name" in str(exc)
    assert m.list() == []


def test_queue_settings_and_name_limits_survive_a_restart(cluster):
    cluster.start_daemon()
    cluster.start_worker("tests.tasks_limited")
    m = cluster.client()
    m.set_queue("images", weight=5, concurrency=3, rate="10/minute", order="random")
    m.pause_queue("images")
    cluster.daemon.kill9()
    cluster.start_daemon()
    images = {q["name"]: q for q in cluster.client().queues()}["images"]
    assert (images["weight"], images["concurrency"], images["rate"], images["order"], images["paused"]) == (
        5, 3, "10/60s", "random", True
    )  # fmt: skip


def test_idle_threads_fleet_wide_come_before_any_prefetch(cluster):
    # Given two workers of 2 threads, each able to hold 8 more tasks (the default prefetch)
    cluster.start_daemon()
    cluster.start_worker(worker_id="a")
    cluster.start_worker(worker_id="b")
    m = cluster.client()
    # When 4 long tasks arrive at once, then 8 more
    few = m.execute_many([("sleepy", {"seconds": 0.3})] * 4)
    for tid in few:
        m.wait(tid, timeout=20)
    many = m.execute_many([("sleepy", {"seconds": 0.3})] * 8)
    for tid in many:
        m.wait(tid, timeout=20)

    # Then each worker ran half: no worker's prefetch hoarded what another could start
    def by_worker(ids):
        workers = [m.show(tid)["attempts"][0]["worker"] for tid in ids]
        return {w: workers.count(w) for w in set(workers)}

    assert by_worker(few) == {"a": 2, "b": 2}
    assert by_worker(many) == {"a": 4, "b": 4}
