"""Prometheus metrics and health checks of `martinet serve --metrics HOST:PORT`.

An HTTP server on a thread of its own (health.py):

- /metrics: prometheus_client's exposition of the metrics below;
- /healthz: 200 while the loop turns (it turned within HEALTHY_WITHIN), else 503;
- /readyz: 200 while the sockets are bound and the database answers (the last turn's
  commit did not fail), else 503; each with a short JSON body saying why.

The loop's cost is a few dictionary lookups and a lock a sample, and only with
--metrics: what a turn counts is staged and counted once the turn is committed (a
rolled back turn counts nothing). What needs the database (queue depths, the oldest
wait) is read when Prometheus scrapes, on the server thread's own connection, never
in the loop. Label values are task names and queues, which users choose: past
MAX_LABEL_VALUES of either, new ones are counted as "other", so that a flood of
names cannot grow the series without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from martinet.health import HEALTHY_WITHIN, HealthServer, loop_turning
from martinet.states import TERMINAL
from martinet.store import Store

log = logging.getLogger("martinet.daemon")

MAX_LABEL_VALUES = 500  # task names (and queues) with series of their own; the rest: "other"
SHORT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)  # a turn, a commit
LONG = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class DaemonMetrics:
    """What the daemon counts and measures, and the server that shows it."""

    def __init__(self, healthy_within: float = HEALTHY_WITHIN) -> None:
        self.healthy_within = max(HEALTHY_WITHIN, healthy_within)  # the loop turns at least each tick
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.submitted = Counter(
            "martinet_tasks_submitted", "Tasks this daemon accepted (execute, execute_many, schedules' runs)",
            ["queue", "name"], registry=r,
        )  # fmt: skip
        self.attempts = Counter(
            "martinet_attempts_ended", "Attempts this daemon ended, by outcome (succeeded, failed, "
            "timed_out, lost, released, interrupted, cancelled)", ["queue", "name", "outcome"], registry=r,
        )  # fmt: skip
        self.finished = Counter(
            "martinet_tasks_finished", "Tasks that reached an end through this daemon (succeeded, dead, cancelled)",
            ["queue", "name", "status"], registry=r,
        )  # fmt: skip
        self.workers = Gauge("martinet_workers_connected", "Workers connected to this daemon", registry=r)
        self.held = Gauge(
            "martinet_tasks_held", "Tasks leased to or running on this daemon's workers", registry=r
        )
        self.turn = Histogram("martinet_turn_seconds", "A turn of the loop: read, write, commit, send",
                              buckets=SHORT, registry=r)  # fmt: skip
        self.commit = Histogram("martinet_commit_seconds", "A turn's commit", buckets=SHORT, registry=r)
        self.dispatch = Histogram(
            "martinet_dispatch_latency_seconds", "From a task's due time to its lease to a worker",
            buckets=LONG, registry=r,
        )  # fmt: skip
        self.lateness = Histogram(
            "martinet_schedule_lateness_seconds", "From a schedule's due time to the creation of its run",
            buckets=LONG, registry=r,
        )  # fmt: skip
        self.database_ok = Gauge(
            "martinet_database_ok", "1 while the daemon's commits succeed, else 0", registry=r
        )
        self.refusals = Counter(
            "martinet_refused", "Connections and messages refused for who sent them, by socket and reason "
            "(unknown_key, role, id_taken, session, ...)", ["socket", "reason"], registry=r,
        )  # fmt: skip
        self._labels: dict[str, set[str]] = {"queue": set(), "name": set()}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._counts: dict[tuple[Any, tuple[str, ...]], int] = {}  # staged: (counter, labels) -> count
        self._observed: list[tuple[Histogram, float]] = []  # staged: (histogram, value)
        self.turned_at = time.monotonic()  # the loop's last turn (healthz)
        self.ready: Callable[[], str | None] = lambda: "the daemon is starting"  # why not ready, or None
        self._server: HealthServer | None = None

    # ---- what a turn counts, staged until its commit -------------------------------------

    def submitted_task(self, queue: str, name: str, count: int = 1) -> None:
        key = (self.submitted, (queue, name))
        self._counts[key] = self._counts.get(key, 0) + count

    def ended(self, events: Iterable[dict[str, Any]]) -> None:
        """A turn's events: attempts that ended, and tasks that reached their end."""
        counts = self._counts
        for event in events:
            queue, name = event.get("queue"), event.get("name")
            if not isinstance(queue, str) or not isinstance(name, str):
                continue  # not a task's (a malformed message's)
            outcome = event.get("outcome")
            if isinstance(outcome, str):
                key = (self.attempts, (queue, name, outcome))
                counts[key] = counts.get(key, 0) + 1
            status = event.get("status")
            if status in TERMINAL:
                key = (self.finished, (queue, name, status))
                counts[key] = counts.get(key, 0) + 1

    def refused(self, socket: str, reason: str) -> None:
        """Counted at once, not staged: a refusal writes nothing (any thread may call it)."""
        self.refusals.labels(socket, reason).inc()

    def dispatched(self, waits: Iterable[float]) -> None:
        self._observed.extend((self.dispatch, wait) for wait in waits)

    def scheduled(self, lateness: Iterable[float]) -> None:
        self._observed.extend((self.lateness, late) for late in lateness)

    def begin(self) -> None:
        """A turn begins: what the last one staged and did not commit is dropped."""
        self._counts, self._observed = {}, []

    def turned(self, seconds: float) -> None:
        """A turn of the loop ended (read, written, committed, sent) after `seconds`."""
        self.turn.observe(seconds)
        self.turned_at = time.monotonic()

    def committed(self, commit_seconds: float) -> None:
        """The turn is committed: what it staged counts (once a label set, not once a task)."""
        self.commit.observe(commit_seconds)
        self.database_ok.set(1)
        for (metric, labels), count in self._counts.items():
            self._child(metric, labels).inc(count)
        for histogram, value in self._observed:
            histogram.observe(max(0.0, value))
        self._counts, self._observed = {}, []

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            queue, name = labels[0], labels[1]
            bounded = (self._bounded("queue", queue), self._bounded("name", name), *labels[2:])
            child = self._children[key] = metric.labels(*bounded)
        return child

    def _bounded(self, kind: str, value: str) -> str:
        seen = self._labels[kind]
        if value in seen:
            return value
        if len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(value)
        return value

    # ---- the server ------------------------------------------------------------------------

    def serve(self, host: str, port: int, store: Store) -> int:
        """Start the HTTP server on its thread; returns its port (chosen when `port` is 0)."""
        self.registry.register(_Queues(store))

        def ready() -> tuple[bool, str]:
            why = self.ready()
            return why is None, why or "serving"

        healthy = loop_turning(lambda: self.turned_at, lambda: self.healthy_within)
        self._server = HealthServer({"/healthz": healthy, "/readyz": ready}, make_wsgi_app(self.registry))
        bound = self._server.start(host, port, "--metrics", "metrics")
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class _Queues(Collector):
    """Each queue's ready tasks and how long the oldest has waited, read at scrape time on
    the server thread's connection (closed after each scrape: scrapes are seconds apart)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.Lock()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "martinet_queue_depth", "Ready (queued) tasks in each queue", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "martinet_queue_oldest_wait_seconds", "How long the longest-waiting ready task of each queue has waited",
            labels=["queue"],
        )  # fmt: skip
        with self.lock:
            try:
                rows = self.store.queue_depths()
            finally:
                self.store.close()
        now = time.time()
        for queue, count, first in rows:
            depth.add_metric([queue], count)
            oldest.add_metric([queue], max(0.0, now - first))
        yield depth
        yield oldest
