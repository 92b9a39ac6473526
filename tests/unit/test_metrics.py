"""`martinet serve --metrics HOST:PORT`: Prometheus metrics, /healthz and /readyz, read
as Prometheus reads them (prometheus_client's parser) from an embedded daemon with worker
threads, and checked against what the store says."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import martinet
from martinet import cli
from martinet.config import Settings, check, metrics_address
from martinet.errors import ConfigError
from martinet.server import metrics as metrics_module
from tests.harness import wait_for


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_metrics_count_what_the_daemon_did_and_show_the_queues(make_live, db_url):
    live = make_live(db_url, metrics="127.0.0.1:0")
    port = live.m.ports["metrics"]
    live.worker()
    m = live.m
    done = [m.execute("add", {"a": i, "b": 1}) for i in range(3)]
    dead = m.execute({"name": "boom", "max_attempts": 1})
    waiting = [m.execute("nobody.runs", {}, queue="later") for _ in range(2)]  # no worker: they wait
    for tid in done:
        m.wait(tid, timeout=20)
    with pytest.raises(martinet.TaskFailed):
        m.wait(dead, timeout=20)
    m.ping()  # a turn after the last end: its commit counted
    seen = scrape(port)

    def value(metric: str, **labels: str) -> float:
        return seen.get((metric, tuple(sorted(labels.items()))), 0.0)

    assert value("martinet_tasks_submitted_total", queue="default", name="add") == 3
    assert value("martinet_tasks_submitted_total", queue="later", name="nobody.runs") == 2
    assert value("martinet_attempts_ended_total", queue="default", name="add", outcome="succeeded") == 3
    assert value("martinet_attempts_ended_total", queue="default", name="boom", outcome="failed") == 1
    assert value("martinet_tasks_finished_total", queue="default", name="add", status="succeeded") == 3
    assert value("martinet_tasks_finished_total", queue="default", name="boom", status="dead") == 1
    # The queue that waits, as the store says it: two ready tasks, the oldest waiting since its submit
    assert value("martinet_queue_depth", queue="later") == 2
    first = m.get(waiting[0])
    assert (
        0 < value("martinet_queue_oldest_wait_seconds", queue="later") < time.time() - ts(first["run_at"]) + 5
    )
    assert value("martinet_dispatch_latency_seconds_count") == 4  # each leased task, once
    assert value("martinet_turn_seconds_count") > 0 and value("martinet_commit_seconds_count") > 0
    assert value("martinet_database_ok") == 1
    wait_for(lambda: scrape(port).get(("martinet_workers_connected", ())) == 1, what="the gauge at a tick")
    code, body = get(port, "/healthz")
    assert (code, body["ok"]) == (200, True) and body["why"].startswith("the loop last turned")
    assert get(port, "/readyz") == (200, {"ok": True, "why": "serving"})


def test_readyz_says_when_the_database_fails_and_healthz_when_the_loop_is_stuck(
    make_live, sqlite_url, monkeypatch
):
    live = make_live(sqlite_url, metrics="127.0.0.1:0")
    port = live.m.ports["metrics"]
    core = live.m._embedded[0].core
    monkeypatch.setattr(core.db_health, "committed", lambda now: None)  # the loop's next commit keeps it
    core.db_health.failed("disk I/O error", time.time())  # as a failed turn would say
    code, body = get(port, "/readyz")
    assert (code, body["ok"]) == (503, False) and "disk I/O error" in body["why"]
    monkeypatch.setattr(core.metrics, "turned", lambda seconds: None)  # the loop's turns no longer count
    core.metrics.turned_at -= 3600  # a loop that has not turned for an hour
    code, body = get(port, "/healthz")
    assert (code, body["ok"]) == (503, False) and "last turned 3600" in body["why"]


def test_a_schedule_s_runs_are_counted_with_their_lateness(make_live, sqlite_url):
    live = make_live(sqlite_url, metrics="127.0.0.1:0", min_interval=0.1)
    port = live.m.ports["metrics"]
    live.m.every(0.2, "add", {"a": 1, "b": 1})
    wait_for(
        lambda: scrape(port).get(("martinet_schedule_lateness_seconds_count", ()), 0) >= 2,
        what="two runs of the schedule",
    )
    seen = scrape(port)
    assert seen[("martinet_tasks_submitted_total", (("name", "add"), ("queue", "default")))] >= 2
    assert seen[("martinet_schedule_lateness_seconds_bucket", (("le", "1.0"),))] >= 2  # on time


def test_label_values_past_the_bound_are_counted_as_other(monkeypatch):
    monkeypatch.setattr(metrics_module, "MAX_LABEL_VALUES", 2)
    metrics = metrics_module.DaemonMetrics()
    for name in ("a", "b", "c", "d"):
        metrics.submitted_task("q", name)
    metrics.committed(0.001)
    samples = {
        s.labels["name"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "martinet_tasks_submitted_total"
    }
    assert samples == {"a": 1, "b": 1, "other": 2}


def test_a_rolled_back_turn_counts_nothing():
    metrics = metrics_module.DaemonMetrics()
    metrics.begin()
    metrics.submitted_task("q", "a")
    metrics.begin()  # the next turn: the last one was rolled back
    metrics.submitted_task("q", "b")
    metrics.committed(0.001)
    sample = metrics.registry.get_sample_value
    assert sample("martinet_tasks_submitted_total", {"queue": "q", "name": "a"}) is None
    assert sample("martinet_tasks_submitted_total", {"queue": "q", "name": "b"}) == 1


def test_the_metrics_address_is_checked():
    assert metrics_address("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert metrics_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert metrics_address("") is None
    for bad in ("9108", "127.0.0.1", "tcp://127.0.0.1:9108", "127.0.0.1:99999"):
        with pytest.raises(ConfigError, match="metrics"):
            check(Settings(metrics=bad))


def test_serve_takes_metrics_and_says_when_its_port_is_taken(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["serve", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--client-port", "0",
                         "--worker-port", "0", "--status-port", "0", "--metrics", f"127.0.0.1:{port}"])  # fmt: skip
    assert code == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err


def ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_a_worker_is_ready_once_welcomed_and_no_longer_when_its_daemon_is_gone(make_live, sqlite_url):
    live = make_live(sqlite_url, heartbeat_interval=0.2)  # (the welcome tells the worker so)
    worker = live.worker(health="127.0.0.1:0")
    port = worker.health_port
    wait_for(lambda: get(port, "/readyz")[0] == 200, what="the worker to be ready")
    assert "welcomed by daemon" in get(port, "/readyz")[1]["why"]
    assert get(port, "/healthz")[0] == 200
    live.m.close()  # the daemon stops: after its liveness (3 heartbeats), the worker is not ready
    wait_for(lambda: get(port, "/readyz")[0] == 503, what="the worker to say it is not ready")
    # First "nothing heard from the daemon for ...", then, once its loop has said hello again:
    wait_for(
        lambda: "reconnecting to the daemon at 127.0.0.1" in get(port, "/readyz")[1]["why"],
        what="the worker to say it is reconnecting",
    )
    assert get(port, "/readyz")[0] == 503
    assert get(port, "/healthz")[0] == 200  # it still runs: alive, not ready
    assert get(port, "/metrics")[0] == 404  # a worker serves health checks only


def test_a_worker_no_daemon_welcomed_is_not_ready(make_live, sqlite_url):
    import threading

    from martinet.worker import Worker
    from tests.harness import free_ports

    worker_port, status_port = free_ports(2)  # nothing listens there
    worker = Worker(worker_port=worker_port, status_port=status_port, health="127.0.0.1:0",
                    handlers={"add": lambda task, a, b: a + b})  # fmt: skip
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.health_port is not None, what="the health server")
        code, body = get(worker.health_port, "/readyz")
        assert code == 503 and "not welcomed by a daemon at 127.0.0.1 yet" in body["why"]
    finally:
        worker.options.grace = 0
        worker.stop()
        thread.join(10)
