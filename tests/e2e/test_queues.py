"""Queue settings and task-name limits outlast a daemon killed with kill -9. (What the daemon
decides with them, across workers, is tested in process: tests/unit/test_queues.py.)"""

from __future__ import annotations


def test_queue_settings_and_name_limits_survive_a_restart(cluster):
    cluster.start_daemon()
    cluster.start_worker("tests.tasks_limited")
    m = cluster.client()
    m.set_queue("images", weight=5, concurrency=3, rate="10/minute", order="random")
    m.pause_queue("images")
    m.set_task_limit("capped", concurrency=2, rate="5/second")
    cluster.daemon.kill9()
    cluster.start_daemon()
    images = {q["name"]: q for q in cluster.client().queues()}["images"]
    assert (images["weight"], images["concurrency"], images["rate"], images["order"], images["paused"]) == (
        5, 3, "10/60s", "random", True
    )  # fmt: skip
    assert cluster.client().task_limits() == [
        {"name": "capped", "concurrency": 2, "rate": "5/1s", "running": 0}
    ]
