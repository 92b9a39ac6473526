"""Benchmarks: real daemon and worker processes on 127.0.0.1, durable tasks only.

    python scripts/bench.py                 # every scenario, 3 repeats each
    python scripts/bench.py --quick         # all but scale, search and prune (a million rows each), and idle (web included)
    python scripts/bench.py timers --repeat 5
    python scripts/bench.py scale --pending 1000000 --schedules 10000

Prints a table (median, min, max over the repeats) and one JSON line per
scenario, so runs can be compared, then the medians against the targets (and the
drain as a share of the lower floor, when throughput and floor both ran). Scenarios:

  users       as users run martinet and as ../shared/peers measures every peer, all
              defaults (prefetch, journal, log level INFO): --users-tasks N tasks
              submitted one execute at a time (enqueue_per_s), then 2 workers started at
              --concurrency 1 (c1) and at their default: drain from worker start to the
              last handler start, and the steady rate from first start to last; then
              tasks paced at 200/s into 2 idle c1 workers (latency p50/p99, ms). Also
              the enqueue as a share of raw pyzmq round trips measured in the same run
              (enqueue_of_round_trips_pct), what a call costs in CPU, the client's
              process and the daemon's (enqueue_client_cpu_us, enqueue_daemon_cpu_us),
              and --users-clients (8) client processes calling execute together,
              against one on the same daemon (clients8_x), beside what raw pyzmq
              round trips give from as many processes against one (zmq_clients8_x).
              SQLite, and PostgreSQL too with --postgres (pg_); there also
              martinet.enqueue_in one call at a time on an autocommitted connection
              (pg_enqueue_in_per_s), and both enqueues as a share of a bare INSERT
              autocommitted one at a time (pg_insert_commit_per_s), which is all a
              PostgreSQL queue's own enqueue does

  throughput  one client calling execute in a loop (each waits for "accepted"); a bulk
              execute_many of N no-op tasks; the drain rate of those N with 2 workers running
  latency     2,000 tasks paced at 200/s into idle workers: execute call to handler start
  store       the daemon's store in one process, no sockets: turns of 20 tasks (as in a
              drain) and of 1 (as in a sequential call), each checked, submitted, claimed,
              ended and committed; µs a task by phase. Little noise: for before and after.
              PostgreSQL too with --postgres (pg_store_)
  floor       raw pyzmq to 2 processes with credit, and raw SQLite (and PostgreSQL, with
              --postgres) insert+update in batches
  backends    throughput and latency again on PostgreSQL (--postgres URL; its martinet
              tables are dropped first); skipped without one
  daemons     a drain of --tasks tasks on PostgreSQL through 1, 2 and 3 daemons on one
              database, one c1 worker each, and through 1 daemon with 2 (--postgres)
  shaping     the same over two weighted queues, one with a concurrency cap: what limits cost
  timers      1,000 delayed tasks due at random times 2-12 s ahead: lateness of
              the handler start against the due time, p50/p99/max (ms)
  scale       PENDING delayed tasks (hours ahead), SCHEDULES schedules and DUE tasks due
              now in the database: start to first dispatch, the drain rate of the due
              tasks (and of as many in an empty database), timer lateness, and the
              daemon's peak RSS
  search      PENDING tasks of ten names and six states made over 30 days (in --db, an
              empty database, else a fresh SQLite file): one search request's time for
              common filters and a payload filter, before and after an expression index
              (run it with --repeat 1: each repeat builds the million rows again)
  prune       PENDING succeeded tasks finished 40 days ago: the drain of --tasks with
              retention off, then while the daemon prunes them (keep_finished "7 days"),
              the cost in %, and how long pruning them all took (--repeat 1 as for search)
  idle        one worker (--concurrency 1) alone, then with --idle N (5,000) idle workers
              connected (raw sockets in one helper process, each saying hello and sending a
              heartbeat a second): serving another task name ("other"), then the same names
              as the real one ("same": they take tasks too, and answer within a second).
              Sequential execute calls for --idle-window seconds: p50/p99 of a call (ms),
              calls/s, the daemon's CPU % and CPU ms a call (net: less its CPU with no
              calls, "quiet", which heartbeats cost), the time the N took to connect, and
              each figure against alone's (_x)
  web         the drain of --tasks with the dashboard open (martinet web: two live pages,
              the overview and a task's page reloaded every 2 s) against the drain without
              it, in turn (web_drain_x; target >= 0.9). Needs the 'web' extra
  curve       what keys cost: with every socket CURVE (martinet keys) against plain text,
              in turn: the drain of --tasks (bulk submitted, 2 workers) and --paced tasks at
              200/s into idle workers (p50/p99 ms); curve_*_x: CURVE's over plain text's
  instructions  the daemon's instructions a task in a c1 drain (--instr-tasks bulk-submitted
              tasks, 2 workers) and, on SQLite, a call (--instr-calls sequential execute),
              counted by valgrind's callgrind in the daemon's process over the workload
              alone; PostgreSQL's drain too with --postgres. Repeatable to about 1 % where
              the machine's speed moves by up to 3x: for a change of the hot path, before
              and after. Needs valgrind; a minute or two a figure; left out by --quick
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import martinet  # noqa: E402
from martinet.keys import is_loopback, new_pair  # noqa: E402
from martinet.store import TASK_DEFAULTS, open_database  # noqa: E402
from tests.harness import free_ports  # noqa: E402

SQLITE_QUERY = ""  # "?synchronous=full" with --synchronous full
WORKER_FLAGS: list[str] = []  # ["--no-journal"] with --no-journal, ["--prefetch", N] with --prefetch N
WORKER_MAIN = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"


class Rig:
    """A daemon and workers on a fresh SQLite file (or an emptied database at `db`);
    stops everything it started."""

    def __init__(
        self,
        workdir: Path,
        workers: int = 2,
        concurrency: int | None = 8,
        db: str | None = None,
        quiet: bool = True,
        curve: bool = False,
    ) -> None:
        """`concurrency` None: the workers' default; `quiet` False: the daemon's and the
        workers' default log level (INFO) instead of WARNING; `curve`: with keys (every
        socket CURVE, the workers and the client with keys of their roles)."""
        self.dir = workdir
        self.db = db or f"sqlite:///{workdir / 'bench.db'}{SQLITE_QUERY}"
        if db:
            drop_tables(db)
        self.ports = free_ports(3)
        self.n_workers, self.concurrency = workers, concurrency
        self.daemon: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        # The processes run this checkout's martinet: -P keeps the working directory (which
        # `-m` and `-c` would put first) off their path, so that PYTHONPATH decides.
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}",
            "MARTINET_STATE_DIR": str(workdir / "state"),  # the workers' journals
        }
        if quiet:
            self.env["MARTINET_LOG_LEVEL"] = "WARNING"
        else:
            self.env.pop("MARTINET_LOG_LEVEL", None)
        self.log = open(workdir / "processes.log", "ab")  # noqa: SIM115
        self.daemon_keys: list[str] = []
        self.worker_keys: list[str] = []
        self.client_keys: dict[str, str] = {}
        if curve:
            keys = workdir / "keys"
            for name in ("daemon", "worker", "admin"):
                new_pair(name, keys / name)
            self.daemon_keys = ["--server-secret-key", str(keys / "daemon" / "daemon.key_secret"),
                                "--worker-keys", str(keys / "worker" / "worker.key"),
                                "--admin-keys", str(keys / "admin" / "admin.key")]  # fmt: skip
            server = str(keys / "daemon" / "daemon.key")
            self.worker_keys = [
                "--key-file",
                str(keys / "worker" / "worker.key_secret"),
                "--server-key",
                server,
            ]
            self.client_keys = {"key_file": str(keys / "admin" / "admin.key_secret"), "server_key": server}

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.ports[0]}"

    def start_daemon(self, under: tuple[str, ...] = ()) -> float:
        """`under`: a command the daemon runs under (valgrind's, say)."""
        started = time.time()
        flags = ["--client-port", str(self.ports[0]), "--worker-port", str(self.ports[1]),
                 "--status-port", str(self.ports[2])]  # fmt: skip
        self.daemon = subprocess.Popen(
            [*under, sys.executable, "-P", "-m", "martinet", "serve", "--db", self.db, *flags, *self.daemon_keys],
            stdout=self.log, stderr=self.log, env=self.env,
        )  # fmt: skip
        return started

    def start_workers(self) -> None:
        for i in range(self.n_workers):
            threads = [] if self.concurrency is None else ["--concurrency", str(self.concurrency)]
            args = [sys.executable, "-P", "-c", WORKER_MAIN, "bench_tasks", "--worker-id", f"bench-{i}",
                    *threads, "--worker-port", str(self.ports[1]),
                    "--status-port", str(self.ports[2]), *WORKER_FLAGS, *self.worker_keys]  # fmt: skip
            self.workers.append(subprocess.Popen(args, stdout=self.log, stderr=self.log, env=self.env))

    def client(self) -> martinet.Martinet:
        """A client the daemon has answered (a fresh one fails fast while nothing listens);
        if the daemon exits first, what it logged."""
        m = martinet.Martinet.connect(self.url, timeout=60, **self.client_keys)
        deadline = time.monotonic() + 60
        while True:
            try:
                m.ping()
                return m
            except martinet.DaemonUnavailable:
                if self.daemon is not None and self.daemon.poll() is not None:
                    self.log.flush()
                    logged = (self.dir / "processes.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the daemon exited ({self.daemon.returncode}):\n{logged}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_ready(self, m: martinet.Martinet) -> None:
        deadline = time.monotonic() + 60
        while m.ping()["workers"] < self.n_workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not connect")
            time.sleep(0.02)

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.daemon.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        for p in [*self.workers, self.daemon]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in [*self.workers, self.daemon]:
            if p is not None:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.workers, self.daemon = [], None
        self.log.close()


def drop_tables(db_url: str) -> None:
    """Start from an empty database: martinet's tables are dropped (and made again by the
    daemon). Dropped as they are, not opened as a store: a checkout older than the one
    that made them (a before-and-after comparison) would refuse their newer schema."""
    from playhouse.db_url import connect

    from martinet.migrations import VERSION_TABLE
    from martinet.models import TABLES

    db = connect(db_url.replace("mariadb://", "mysql://", 1))
    for table in [*(model._meta.table_name for model in TABLES), VERSION_TABLE]:
        db.execute_sql(f"DROP TABLE IF EXISTS {table}")
    db.close()


SLOW_DRAIN = 20.0  # seconds after which wait_drained says what is left (stderr)


def wait_drained(db_url: str, timeout: float = 300.0) -> float:
    """When the last result was committed (epoch seconds), once no task is ready or
    running any more. Polls the database itself, so that measuring costs the daemon
    nothing, and seldom (every 50 ms, a row found or not): a count of the unfinished
    tasks every 10 ms took PostgreSQL 1-2.5 ms each time in a drain, a sixth of a core
    taken from the daemon and the server on a 2-core machine. The figures come from
    the rows' times, not from when this returns."""
    db = open_database(db_url)
    try:
        began = time.monotonic()
        deadline, told = began + timeout, False
        while db.execute_sql(
            "SELECT 1 FROM task WHERE status IN ('queued', 'leased', 'running') LIMIT 1"
        ).fetchone():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tasks did not drain in time: {unfinished(db)}")
            if not told and time.monotonic() > began + SLOW_DRAIN:  # (a hang shows what it holds)
                print(f"not drained after {SLOW_DRAIN:.0f} s: {unfinished(db)}", file=sys.stderr, flush=True)
                told = True
            time.sleep(0.05)
        return db.execute_sql("SELECT MAX(finished_at) FROM task").fetchone()[0]
    finally:
        db.close()


def unfinished(db: Any) -> str:
    """What holds a drain up: the unfinished tasks by status, and the first few of them."""
    counts = db.execute_sql(
        "SELECT status, COUNT(*) FROM task WHERE status IN ('queued', 'leased', 'running') GROUP BY status"
    ).fetchall()
    first = db.execute_sql(
        "SELECT id, status, attempt, worker, daemon, lease_expires, updated_at FROM task"
        " WHERE status IN ('queued', 'leased', 'running') ORDER BY id LIMIT 10"
    ).fetchall()
    return f"{dict(counts)}; the first: {first}"


@contextmanager
def running(db: str | None = None, **rig_options: Any) -> Iterator[tuple[Rig, martinet.Martinet]]:
    """A daemon and two workers on a fresh SQLite file (or the emptied database `db`),
    and a client; all stopped after. `rig_options`: Rig's (concurrency, quiet)."""
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), db=db, **rig_options)
        try:
            rig.start_daemon()
            rig.start_workers()
            m = rig.client()
            rig.wait_ready(m)
            try:
                yield rig, m
            finally:
                m.close()
        finally:
            rig.stop()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}


def timer_spread(args) -> tuple[float, float]:
    """Delayed tasks are due between 2 s (or half of --timers-ahead) and --timers-ahead from now."""
    return (min(2.0, args.timers_ahead / 2), args.timers_ahead)


def measure_timers(m: martinet.Martinet, n: int = 1000, spread: tuple[float, float] = (2.0, 12.0)) -> dict:
    """Lateness of each handler's start (its own clock) against the exact due time asked for
    (the task's run_at as shown by get() is rounded to the millisecond)."""
    rng = random.Random(7)
    now = time.time()
    due = [datetime.fromtimestamp(now + rng.uniform(*spread), UTC) for _ in range(n)]
    ids = [m.schedule(when, "bench.clock", {}) for when in due]
    lateness = [
        (m.wait(tid, timeout=60) - when.timestamp()) * 1000 for tid, when in zip(ids, due, strict=True)
    ]
    return {f"late_{k}_ms": round(v, 2) for k, v in percentiles(lateness).items()}


# ---- scenarios ------------------------------------------------------------------


def scenario_throughput(args, shaped: bool = False, db: str | None = None) -> dict:
    with running(db) as (rig, m):
        if shaped:  # two weighted queues, one with a concurrency cap: the cost of the limits
            m.set_queue("bulk", weight=1)
            m.set_queue("urgent", weight=3, concurrency=12)
        queues = ["bulk", "urgent"] if shaped else ["default"]
        n = args.tasks
        sequential = min(n, 5000)
        start = time.perf_counter()
        for i in range(sequential):  # one client, each call waiting for "accepted"
            m.execute("bench.noop", queue=queues[i % len(queues)])
        seq_s = time.perf_counter() - start
        wait_drained(rig.db)
        start = time.time()  # workers already running: bulk submit, then drain
        m.execute_many([({"name": "bench.noop", "queue": queues[i % len(queues)]}, {}) for i in range(n)])
        bulk_s = time.time() - start
        drained = wait_drained(rig.db)
        return {
            "submit_seq_per_s": round(sequential / seq_s),
            "submit_bulk_per_s": round(n / bulk_s),
            "drain_per_s": round(n / (drained - start)),
        }


def paced(count: int, call) -> list:
    """`call(sent_at)` `count` times at 200 a second, as the latency scenario's client; its results."""
    results = []
    next_at = time.perf_counter()
    for _ in range(count):
        next_at += 1 / 200
        results.append(call(time.time()))
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return results


def scenario_latency(args, db: str | None = None, **rig_options: Any) -> dict:
    """2,000 tasks paced at 200/s into idle workers: execute call to handler start."""
    with running(db, **rig_options) as (_rig, m):
        sent = paced(args.paced, lambda t0: (m.execute("bench.clock"), t0))
        latencies = [(m.wait(tid, timeout=60) - t0) * 1000 for tid, t0 in sent]
        return {f"latency_{k}_ms": round(v, 2) for k, v in percentiles(latencies).items()}


FLOOR_PEER = """
import json, sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1])
s.send_multipart([b"ready"])
while True:
    frames = s.recv_multipart()
    if frames[0] == b"stop":
        break
    task = json.loads(frames[1])
    s.send_multipart([b"done", json.dumps({"id": task["id"], "result": None}).encode()])
"""


# The latency floor: a relay that does the least a durable task system must do for one task
# (commit it, say "accepted", pass it on to a worker) between a client and a worker process.
FLOOR_RELAY = """
import sqlite3, sys, zmq
ctx = zmq.Context()
clients = ctx.socket(zmq.ROUTER); clients.bind(sys.argv[1])
workers = ctx.socket(zmq.ROUTER); workers.bind(sys.argv[2])
db = sqlite3.connect(sys.argv[3], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=NORMAL")
db.execute("CREATE TABLE task (id INTEGER PRIMARY KEY, body TEXT, status TEXT)")
worker = workers.recv_multipart()[0]
while True:
    ident, body = clients.recv_multipart()
    if body == b"stop":
        workers.send_multipart([worker, b"stop"])
        break
    db.execute("BEGIN")
    db.execute("INSERT INTO task (body, status) VALUES (?, 'running')", (body,))
    db.execute("COMMIT")
    clients.send_multipart([ident, b"accepted"])
    workers.send_multipart([worker, body])
"""
FLOOR_SINK = """
import json, sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1]); s.send(b"ready")
s.recv()  # the client's first message waited for this process to start: not a latency
late = []
while (body := s.recv()) != b"stop":
    late.append((time.time() - json.loads(body)["t"]) * 1000)
print(json.dumps(late))
"""


def relay_latency(count: int) -> dict[str, float]:
    """The latency scenario's pace through FLOOR_RELAY: from the send (stamped in the
    message) to the worker process reading it, p50 and p99 in ms."""
    import zmq

    client_port, worker_port = free_ports(2)
    with tempfile.TemporaryDirectory() as tmp:
        relay = subprocess.Popen([sys.executable, "-c", FLOOR_RELAY, f"tcp://127.0.0.1:{client_port}",
                                  f"tcp://127.0.0.1:{worker_port}", f"{tmp}/relay.db"])  # fmt: skip
        sink = subprocess.Popen([sys.executable, "-c", FLOOR_SINK, f"tcp://127.0.0.1:{worker_port}"],
                                stdout=subprocess.PIPE)  # fmt: skip
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(f"tcp://127.0.0.1:{client_port}")

        def send(sent_at: float) -> None:
            sock.send(json.dumps({"t": sent_at}).encode())
            sock.recv()  # accepted

        try:
            send(time.time())  # passed on once the worker process is there (FLOOR_SINK drops it)
            paced(count, send)
            sock.send(b"stop")
            late, _ = sink.communicate(timeout=30)
            relay.wait(30)
        finally:
            for p in (relay, sink):
                if p.poll() is None:
                    p.kill()
                    p.wait()
            sock.close(0)
            ctx.term()
    picked = percentiles(json.loads(late))
    return {"relay_latency_p50_ms": round(picked["p50"], 3), "relay_latency_p99_ms": round(picked["p99"], 3)}


def scenario_floor(args) -> dict:
    """What the machine allows: raw pyzmq moving the same messages to two processes with
    credit, and one at a time there and back; raw SQLite (and PostgreSQL) committing an
    insert and an update per task in batches of 100; a task's least latency through a
    relay that commits it (FLOOR_RELAY), at the latency scenario's pace."""
    import zmq

    n, credit = args.tasks, 16
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peers = [
        subprocess.Popen([sys.executable, "-c", FLOOR_PEER, f"tcp://127.0.0.1:{port}"]) for _ in range(2)
    ]
    try:
        idents = [router.recv_multipart()[0] for _ in peers]
        body = json.dumps({"id": 0, "name": "bench.noop", "args": {}, "attempt": 1}).encode()
        sent = done = 0
        start = time.perf_counter()
        for ident in idents:
            for _ in range(credit):
                router.send_multipart([ident, b"task", body])
                sent += 1
        while done < n:
            ident, _kind, _reply = router.recv_multipart()
            done += 1
            if sent < n:
                router.send_multipart([ident, b"task", body])
                sent += 1
        zmq_rate = n / (time.perf_counter() - start)
        round_trips = trips_per_s(router, idents[0], body, min(n, 5000))
        for ident in idents:
            router.send_multipart([ident, b"stop"])
    finally:
        for p in peers:
            p.wait(10)
        router.close(0)
        ctx.term()
    result = {"zmq_floor_per_s": round(zmq_rate), "zmq_round_trips_per_s": round(round_trips)}
    with tempfile.TemporaryDirectory() as tmp:
        result["sqlite_floor_per_s"] = round(database_floor(f"sqlite:///{tmp}/floor.db", n))
    if args.postgres:
        drop_tables(args.postgres)
        result["postgres_floor_per_s"] = round(database_floor(args.postgres, n))
    result.update(relay_latency(args.paced))
    return result


def trips_per_s(router, ident: bytes, body: bytes, trips: int) -> float:
    """One message out to FLOOR_PEER, its answer back, one at a time: sequential execute's floor."""
    start = time.perf_counter()
    for _ in range(trips):
        router.send_multipart([ident, b"task", body])
        router.recv_multipart()
    return trips / (time.perf_counter() - start)


def zmq_round_trips(trips: int = 5000) -> float:
    """Raw pyzmq round trips a second to one FLOOR_PEER process (see trips_per_s)."""
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    peer = subprocess.Popen([sys.executable, "-c", FLOOR_PEER, f"tcp://127.0.0.1:{port}"])
    try:
        ident = router.recv_multipart()[0]
        body = json.dumps({"id": 0, "name": "bench.noop", "args": {}, "attempt": 1}).encode()
        trips_per_s(router, ident, body, 300)  # warm up, as the execute loops do
        rate = trips_per_s(router, ident, body, trips)
        router.send_multipart([ident, b"stop"])
    finally:
        peer.wait(10)
        router.close(0)
        ctx.term()
    return rate


def scenario_store(args) -> dict:
    """The store's part of a task's cost, without sockets or other processes: turns that
    check and submit K tasks, claim them, end them and commit, as the daemon's turn does
    (with its checkpointer). µs a task by phase for K = 20 (a drain's turn), and the µs of
    a one-task turn and of its commit (a sequential call's). One process, so the figures
    move far less than the whole system's: use them to compare a change of the hot path.
    On PostgreSQL too with --postgres (pg_store_...): there the phases' split says less
    (writes whose result is not read go with the next statement, store/pg.py), the
    totals what a turn costs, its round trips included."""
    with tempfile.TemporaryDirectory() as tmp:
        result = store_turns(args, f"sqlite:///{tmp}/store.db{SQLITE_QUERY}", "store")
    if args.postgres:
        drop_tables(args.postgres)
        result.update(store_turns(args, args.postgres, "pg_store"))
    return result


def store_turns(args, db_url: str, label: str) -> dict:
    """scenario_store on the database at `db_url`: its figures, named `label`_..."""
    from martinet.config import Settings
    from martinet.store import Outcome, Store, WalCheckpointer
    from martinet.validate import Limits, check_task

    defaults = Settings()  # what the daemon checks a submit against
    limits = Limits(defaults.max_payload, defaults.max_name_length)
    phases = ("check", "submit", "claim", "end", "commit")
    request_ids = itertools.count(1)
    db = open_database(db_url)
    checkpointer = WalCheckpointer(db).start() if db_url.startswith("sqlite") else None
    store = Store(db)

    def turns(count: int, per_turn: int) -> dict[str, float]:
        spent = dict.fromkeys(phases, 0.0)
        for _ in range(count):
            now = time.time()
            t0 = time.perf_counter()
            with store.atomic():
                specs = [
                    check_task({"name": "bench.noop", "args": {"n": i}, "request_id": f"b{next(request_ids):012d}"},
                               limits, defaults.max_attempts)
                    for i in range(per_turn)
                ]  # fmt: skip
                t1 = time.perf_counter()
                store.submit_many(specs, now)
                t2 = time.perf_counter()
                rows = store.claim("bench-0", ["bench.noop"], per_turn, now, defaults.lease)
                t3 = time.perf_counter()
                store.end_attempts(
                    [Outcome(r["id"], r["attempt"], "bench-0", "succeeded") for r in rows], now
                )
                t4 = time.perf_counter()
            took = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, time.perf_counter() - t4)
            for phase, seconds in zip(phases, took, strict=True):
                spent[phase] += seconds
        return {phase: seconds / (count * per_turn) * 1e6 for phase, seconds in spent.items()}

    try:
        turns(50, 20)  # warm: statements prepared, pages cached
        batch = turns(max(10, args.tasks // 20), 20)
        single = turns(max(10, min(args.tasks, 2000)), 1)
    finally:
        if checkpointer is not None:
            checkpointer.stop()
        db.close()
    result = {f"{label}_{phase}_us": round(batch[phase], 1) for phase in phases}
    result[f"{label}_us_per_task"] = round(sum(batch.values()), 1)
    result[f"{label}_one_task_turn_us"] = round(sum(single.values()), 1)
    result[f"{label}_one_task_commit_us"] = round(single["commit"], 1)
    return result


def database_floor(db_url: str, n: int) -> float:
    """Inserts and updates per second, committed in batches of 100, through the same driver."""
    db = open_database(db_url)
    mark = db.param
    cols = list(TASK_DEFAULTS) + ["name", "status", "run_at", "created_at", "updated_at"]
    now = time.time()
    row = [*TASK_DEFAULTS.values(), "bench.noop", "queued", now, now, now]
    insert = f"INSERT INTO task ({','.join(cols)}) VALUES ({','.join([mark] * len(cols))})"
    returning = " RETURNING id" if "postgres" in db_url else ""
    update = f"UPDATE task SET status = 'succeeded', updated_at = {mark} WHERE id = {mark}"
    start = time.perf_counter()
    for _ in range(0, n, 100):
        with db.atomic():
            for _ in range(100):
                cursor = db.execute_sql(insert + returning, row)
                task_id = cursor.fetchone()[0] if returning else cursor.lastrowid
                db.execute_sql(update, (now, task_id))
    rate = n / (time.perf_counter() - start)
    db.close()
    return rate


def scenario_timers(args) -> dict:
    with running() as (_rig, m):
        return measure_timers(m, args.timers, timer_spread(args))


def fill(db_url: str, pending: int, schedules: int, due_now: int) -> None:
    """Bulk-insert far-future delayed tasks, schedules, and tasks due at once."""
    db = open_database(db_url)
    now = time.time()
    cur = db.cursor()
    cols = [*TASK_DEFAULTS, "name", "status", "run_at", "created_at", "updated_at"]
    insert = f"INSERT INTO task ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    defaults = list(TASK_DEFAULTS.values())
    rng = random.Random(3)
    batch = 50_000
    with db.atomic():
        for start in range(0, pending, batch):
            rows = [[*defaults, "bench.clock", "scheduled", now + 3600 + rng.uniform(0, 86400 * 30), now, now]
                    for _ in range(min(batch, pending - start))]  # fmt: skip
            cur.executemany(insert, rows)
        cur.executemany(insert, [[*defaults, "bench.noop", "queued", now, now, now] for _ in range(due_now)])
        scols = "name,args,queue,priority,kind,spec,timezone,misfire,next_due,status,created_at,updated_at"
        rows = [("bench.noop", "{}", "default", 0, "interval", "86400", "UTC", "once", now + 3600 + i, "active", now, now)
                for i in range(schedules)]  # fmt: skip
        cur.executemany(f"INSERT INTO schedule ({scols}) VALUES ({','.join('?' * 12)})", rows)
    db.close()


def scenario_scale(args) -> dict:
    """A million pending delayed tasks and 10,000 schedules: memory, start, drain, timers."""
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp))
        try:
            built = time.perf_counter()
            fill(rig.db, args.pending, args.schedules, due_now=args.due)
            build_s = time.perf_counter() - built
            rig.start_workers()  # they wait for the daemon, reconnecting
            started = rig.start_daemon()
            m = rig.client()
            first_due = args.pending + 1  # the due tasks were inserted after the pending ones
            while m.get(first_due)["started_at"] is None:  # its dispatch, read from the database
                time.sleep(0.005)
            first = datetime.fromisoformat(m.get(first_due)["started_at"]).timestamp()
            drain_s = wait_drained(rig.db) - first
            result = {
                "build_s": round(build_s, 1),
                "start_to_first_dispatch_s": round(first - started, 3),
                "drain_due_per_s": round(args.due / drain_s),
            }
            result.update(measure_timers(m, args.timers, timer_spread(args)))
            result["peak_rss_mb"] = round(rig.peak_rss_mb(), 1)
            m.close()
        finally:
            rig.stop()
        result["drain_due_empty_per_s"] = drain_due(Path(tmp) / "empty", args.due)
        result["drain_vs_empty_pct"] = round(
            100 * result["drain_due_per_s"] / result["drain_due_empty_per_s"], 1
        )
        return result


def drain_due(workdir: Path, due: int) -> int:
    """The drain rate of `due` tasks waiting at start in an otherwise empty database: what
    the scale scenario's drain, among a million pending tasks, is compared with."""
    workdir.mkdir()
    rig = Rig(workdir)
    try:
        fill(rig.db, 0, 0, due_now=due)
        rig.start_workers()
        rig.start_daemon()
        m = rig.client()
        first_due = 1
        while m.get(first_due)["started_at"] is None:
            time.sleep(0.005)
        first = datetime.fromisoformat(m.get(first_due)["started_at"]).timestamp()
        rate = round(due / (wait_drained(rig.db) - first))
        m.close()
        return rate
    finally:
        rig.stop()


SEARCH_NAMES = ["resize.small", "resize.large", "resize.thumb", "email.send", "email.digest",
                "report.build", "sync.pull", "sync.push", "billing.charge", "cleanup"]  # fmt: skip
SEARCH_STATES = {"succeeded": 80, "failed": 3, "dead": 2, "cancelled": 2, "scheduled": 8, "queued": 5}


def fill_search(db_url: str, n: int) -> None:
    """Bulk-insert n finished and waiting tasks made over 30 days: ten names, six states,
    errors on the failed ones, and args like {"image_id": 31337, "user": {"email": ...}}."""
    db = open_database(db_url)
    if db.execute_sql("SELECT COUNT(*) FROM task").fetchone()[0]:
        raise SystemExit(f"search fills an empty database; {db_url} already has tasks")
    rng = random.Random(9)
    now, span = time.time(), 30 * 86400.0
    states = rng.choices(list(SEARCH_STATES), weights=list(SEARCH_STATES.values()), k=n)
    cols = [*TASK_DEFAULTS, "name", "status", "username", "run_at", "created_at", "updated_at",
            "finished_at", "error_type"]  # fmt: skip
    chunk = 500  # rows per INSERT: well under every backend's limit on parameters
    insert = f"INSERT INTO task ({','.join(cols)}) VALUES " + ",".join(
        ["(" + ",".join([db.param] * len(cols)) + ")"] * chunk
    )
    rows: list = []
    with db.atomic():
        for i, state in enumerate(states):
            created = now - span + span * i / n
            args = {
                "image_id": rng.randrange(100_000),
                "user": {"email": f"user{rng.randrange(5000)}@example.com"},
            }
            finished = created + rng.uniform(0.1, 60) if state in ("succeeded", "dead", "cancelled") else None
            run_at = now + rng.uniform(60, 86400) if state == "scheduled" else created
            defaults = {**TASK_DEFAULTS, "args": json.dumps(args)}
            rows.extend([*defaults.values(), SEARCH_NAMES[i % 10], state, f"user{i % 97}", run_at, created,
                         finished or created, finished, "TimeoutError" if state in ("failed", "dead") else None])  # fmt: skip
            if len(rows) == chunk * len(cols):
                db.execute_sql(insert, rows)
                rows = []
        if rows:
            tail = len(rows) // len(cols)
            db.execute_sql(insert.rsplit(" VALUES ", 1)[0] + " VALUES " + ",".join(
                ["(" + ",".join([db.param] * len(cols)) + ")"] * tail), rows)  # fmt: skip
    if db_url.startswith("postgres"):
        db.execute_sql("ANALYZE task")  # what autovacuum would soon do; martinet never runs it on SQLite
    db.close()


def index_image_id(db_url: str) -> bool:
    """The recipe in docs/finding-tasks.md for a payload field filtered often: an expression index
    (SQLite and PostgreSQL; MySQL's generated column is not measured here)."""
    db = open_database(db_url)
    if db_url.startswith("sqlite"):
        db.execute_sql("CREATE INDEX task_arg_image_id ON task (json_extract(args, '$.image_id'))")
    elif db_url.startswith("postgres"):
        db.execute_sql("CREATE INDEX task_arg_image_id ON task ((CAST(args AS jsonb) -> 'image_id'))")
        db.execute_sql("ANALYZE task")
    db.close()
    return db_url.startswith(("sqlite", "postgres"))


def scenario_search(args) -> dict:
    """A million tasks (--pending) in the database, a daemon, no workers: the time of one
    search request (median of 7), first pages of common filters and a payload filter."""
    n = args.pending
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), workers=0)
        rig.db = args.db or rig.db
        try:
            built = time.perf_counter()
            fill_search(rig.db, n)
            result = {"build_s": round(time.perf_counter() - built, 1)}
            rig.start_daemon()
            m = rig.client()
            m.ping()

            def timed(call) -> float:
                times = []
                for _ in range(7):
                    start = time.perf_counter()
                    call()
                    times.append((time.perf_counter() - start) * 1000)
                return round(statistics.median(times), 2)

            second = m.search(status="dead", name="resize.large").next
            image_id = m.list(status="succeeded", limit=1)[0]["args"]["image_id"]
            result.update(
                latest_ms=timed(lambda: m.search()),
                status_name_ms=timed(lambda: m.search(status="dead", name="resize.large")),
                status_name_page2_ms=timed(
                    lambda: m.search(status="dead", name="resize.large", after=second)
                ),
                failed_dead_prefix_ms=timed(lambda: m.search(status=["failed", "dead"], name="resize.*")),
                error_since_ms=timed(lambda: m.search(error="TimeoutError", since="2 days ago")),
                count_name_ms=timed(lambda: m.count(name="email.send")),
                where_ms=timed(lambda: m.search(where={"image_id": image_id})),
            )
            if index_image_id(rig.db):
                result["where_indexed_ms"] = timed(lambda: m.search(where={"image_id": image_id}))
            m.close()
            return result
        finally:
            rig.stop()
            if args.db:
                db = open_database(args.db)
                if args.db.startswith("postgres"):
                    db.execute_sql("DROP INDEX IF EXISTS task_arg_image_id")
                db.execute_sql("DELETE FROM task")  # it was empty: leave it so
                db.close()


def fill_finished(db_url: str, n: int, days_ago: float = 40.0) -> None:
    """Bulk-insert n succeeded tasks that finished `days_ago` days ago (SQLite)."""
    db = open_database(db_url)
    finished = time.time() - days_ago * 86400
    cols = [
        *TASK_DEFAULTS,
        "name",
        "status",
        "run_at",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
    ]
    insert = f"INSERT INTO task ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    defaults = list(TASK_DEFAULTS.values())
    cur = db.cursor()
    with db.atomic():
        for start in range(0, n, 50_000):
            at = finished + start * 1e-3
            cur.executemany(insert, [[*defaults, "bench.noop", "succeeded", at, at, at, at, at + i * 1e-3]
                                     for i in range(min(50_000, n - start))])  # fmt: skip
    db.close()


def scenario_prune(args) -> dict:
    """PENDING succeeded tasks finished 40 days ago: the drain of --tasks with retention off,
    then again (on a fresh copy) while the daemon prunes them (keep_finished "7 days"),
    and how long the daemon took to delete them all."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "filled.db"
        built = time.perf_counter()
        fill_finished(f"sqlite:///{source}", args.pending)
        result: dict = {"build_s": round(time.perf_counter() - built, 1)}
        for phase, keep in (("plain", "never"), ("pruning", "7 days")):
            workdir = Path(tmp) / phase
            workdir.mkdir()
            shutil.copy(source, workdir / "bench.db")
            rig = Rig(workdir)
            rig.env["MARTINET_KEEP_FINISHED"] = keep
            try:
                started = rig.start_daemon()
                rig.start_workers()
                m = rig.client()
                rig.wait_ready(m)
                start = time.time()
                m.execute_many([("bench.noop", {}) for _ in range(args.tasks)])
                drained = wait_drained(rig.db)
                result[f"drain_{phase}_per_s"] = round(args.tasks / (drained - start))
                if phase == "pruning":
                    db = open_database(rig.db)
                    cutoff = time.time() - 7 * 86400
                    while db.execute_sql(
                        "SELECT COUNT(*) FROM task WHERE finished_at < ?", (cutoff,)
                    ).fetchone()[0]:
                        time.sleep(0.2)
                    result["prune_s"] = round(time.time() - started, 1)
                    result["pruned_per_s"] = round(args.pending / (time.time() - started))
                    db.close()
                m.close()
            finally:
                rig.stop()
        result["drain_cost_pct"] = round(
            100 * (1 - result["drain_pruning_per_s"] / result["drain_plain_per_s"]), 1
        )
        return result


# N idle workers in one process: raw DEALER sockets that say hello, send a heartbeat once
# an interval (spread evenly) and read what came for them; a task that comes is answered
# at once as done, on one status socket shared by all (outcomes name their worker, and
# carry the session its welcome gave it).
IDLE_PEERS = """
import json, signal, sys, time, zmq
from martinet import protocol
from martinet.protocol import Cmd
worker_url, status_url, n, names, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), float(sys.argv[5])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ctx = zmq.Context()
ctx.set(zmq.MAX_SOCKETS, n + 16)
socks = []
sessions = {}

def dealer(url):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    socks.append(sock)
    return sock

def send(sock, frames):
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
    except zmq.Again:
        pass

def hello(i):
    send(socks[i], protocol.encode(Cmd.HELLO, {"worker_id": f"idle-{i}", "names": names, "capacity": 1,
                                               "version": protocol.VERSION}))

def read(i):
    while True:
        try:
            cmd, h = protocol.decode(socks[i].recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return
        if cmd is Cmd.HELLO_AGAIN:
            hello(i)
        elif cmd is Cmd.WELCOME:
            sessions[i] = h.get("session")
        elif cmd is Cmd.TASK:
            ended = [protocol.dumps({"id": t["id"], "attempt": t["attempt"], "ok": True, "result": None})
                     for t in h["tasks"]]
            header = {"worker_id": f"idle-{i}", "session": sessions.get(i)}
            send(status, protocol.encode_batch(Cmd.ENDED, "ended", ended, header))

try:
    for i in range(n):
        dealer(worker_url)
        hello(i)
    status = dealer(status_url)
    beat = protocol.encode(Cmd.HEARTBEAT, {"running": []})
    start, beats = time.monotonic(), 0
    while True:
        due = int((time.monotonic() - start) / interval * n)  # worker i beats at (k + i / n) intervals
        while beats < due:
            i, beats = beats % n, beats + 1
            read(i)
            send(socks[i], beat)
        while True:
            try:
                status.recv_multipart(zmq.NOBLOCK)  # acks
            except zmq.Again:
                break
        time.sleep(0.005)
finally:
    for sock in socks:
        sock.close(0)
    ctx.term()
"""
IDLE_NAMES = {"other": ["bench.idle"], "same": ["bench.clock", "bench.noop"]}  # "same": the real worker's


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, all threads, user and system: its CPU clock as
    clock_getcpuclockid(3) names it (nanoseconds; /proc/PID/stat counts 10 ms ticks, too
    coarse for a short run's figure a call). Linux only, as the rest of this script."""
    return time.clock_gettime(((~pid) << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)


def idle_run(args, n: int, names: list[str]) -> dict[str, float]:
    """One real worker (--concurrency 1) and `n` idle ones (IDLE_PEERS) on a fresh daemon:
    the daemon's CPU with no calls, then sequential execute calls for --idle-window seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), workers=1, concurrency=1)
        helper = None
        m = None
        try:
            rig.start_daemon()
            rig.start_workers()
            m = rig.client()
            rig.wait_ready(m)
            result: dict[str, float] = {}
            if n:
                started = time.perf_counter()
                helper = subprocess.Popen(
                    [sys.executable, "-P", "-c", IDLE_PEERS, f"tcp://127.0.0.1:{rig.ports[1]}",
                     f"tcp://127.0.0.1:{rig.ports[2]}", str(n), json.dumps(names), "1.0"],
                    stdout=rig.log, stderr=rig.log, env=rig.env,
                )  # fmt: skip
                deadline = time.monotonic() + 60 + n / 100
                while m.ping()["workers"] < n + 1:
                    if helper.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the {n} idle workers did not connect (see {rig.dir}/processes.log)"
                        )
                    time.sleep(0.05)
                result["connect_s"] = round(time.perf_counter() - started, 2)
            time.sleep(min(0.5, args.idle_window / 10))  # the welcomes of the last hellos go out
            quiet = args.idle_window / 5
            cpu0, t0 = cpu_seconds(rig.daemon.pid), time.perf_counter()
            time.sleep(quiet)
            result["quiet_cpu_pct"] = round(
                100 * (cpu_seconds(rig.daemon.pid) - cpu0) / (time.perf_counter() - t0), 1
            )
            for _ in range(200):  # warm
                m.execute("bench.noop")
            times = []
            cpu0, helper0 = cpu_seconds(rig.daemon.pid), cpu_seconds(helper.pid) if helper else 0.0
            start = time.perf_counter()
            end = start + args.idle_window
            while (t := time.perf_counter()) < end:
                m.execute("bench.noop")
                times.append(time.perf_counter() - t)
            took = time.perf_counter() - start
            cpu = cpu_seconds(rig.daemon.pid) - cpu0
            picked = percentiles(times)
            result.update(
                p50_ms=round(picked["p50"] * 1000, 3),
                p99_ms=round(picked["p99"] * 1000, 3),
                calls_per_s=round(len(times) / took),
                cpu_pct=round(100 * cpu / took, 1),
                cpu_ms_per_call=round(1000 * cpu / len(times), 3),
                # less the CPU it spent with no calls (heartbeats): what the calls' turns cost
                net_cpu_ms_per_call=round(
                    1000 * (cpu - result["quiet_cpu_pct"] / 100 * took) / len(times), 3
                ),
            )
            if helper is not None:
                result["helper_cpu_pct"] = round(100 * (cpu_seconds(helper.pid) - helper0) / took, 1)
            if helper is not None and helper.poll() is not None:
                raise RuntimeError(f"the idle workers' process ended early (see {rig.dir}/processes.log)")
            wait_drained(rig.db, timeout=30)  # every task ended, those the idle workers took too
            return result
        finally:
            if helper is not None:
                helper.terminate()
                try:
                    helper.wait(20)
                except subprocess.TimeoutExpired:
                    helper.kill()
                    helper.wait()
            if m is not None:
                m.close()
            rig.stop()


def scenario_idle(args) -> dict:
    """Sequential calls with one real worker, alone ("alone") and with --idle N idle workers
    serving another name ("other") or the same ones ("same"); each figure of those against
    alone's (_x): what a connected idle worker costs each call."""
    result = {"load_1m": round(os.getloadavg()[0], 2)}
    alone = idle_run(args, 0, [])
    result.update({f"alone_{k}": v for k, v in alone.items()})
    for variant, names in IDLE_NAMES.items():
        figures = idle_run(args, args.idle, names)
        result.update({f"{variant}_{k}": v for k, v in figures.items()})
        for key in ("p50_ms", "p99_ms", "calls_per_s", "cpu_ms_per_call", "net_cpu_ms_per_call"):
            result[f"{variant}_{key}_x"] = round(figures[key] / alone[key], 2)
    return result


def scenario_shaping(args) -> dict:
    return scenario_throughput(args, shaped=True)


def users_drain(args, db: str | None, concurrency: int | None) -> dict:
    """The peers harness's throughput workload (../shared/peers): N tasks submitted one
    `execute` at a time with no worker running, then 2 workers started with `concurrency`
    threads (None: the default) and every other setting at its default (prefetch, journal,
    log level). drain: N over worker start to the last handler start; steady: the rate
    between the first handler start and the last."""
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), concurrency=concurrency, db=db, quiet=False)
        try:
            rig.start_daemon()
            m = rig.client()
            n, pid = args.users_tasks, rig.daemon.pid if rig.daemon else 0
            start, mine, daemon = time.perf_counter(), time.process_time(), cpu_seconds(pid)
            for i in range(n):
                m.execute("bench.clock", {"x": i})
            enqueue_s = time.perf_counter() - start
            mine_after, daemon_after = time.process_time(), cpu_seconds(pid)
            m.close()
            workers_at = time.time()
            rig.start_workers()
            with CpuSampler(pid, [p.pid for p in rig.workers], database_server_pids(db)) as cpu:
                wait_drained(rig.db)
            database = open_database(rig.db)
            try:
                rows = database.execute_sql("SELECT result FROM task WHERE name = 'bench.clock'").fetchall()
            finally:
                database.close()
        finally:
            rig.stop()
    starts = sorted(json.loads(result) for (result,) in rows)
    if len(starts) != n:
        raise RuntimeError(f"users: {len(starts)} of {n} tasks ran")
    figures = {
        "enqueue_per_s": round(n / enqueue_s),
        # What a call costs in CPU, all threads: the client's process (this one) and the daemon's
        "enqueue_client_cpu_us": round(1e6 * (mine_after - mine) / n),
        "enqueue_daemon_cpu_us": round(1e6 * (daemon_after - daemon) / n),
        "drain_per_s": round(n / (starts[-1] - workers_at)),
        "steady_per_s": round((n - 1) / (starts[-1] - starts[0])),
        "first_task_s": round(starts[0] - workers_at, 3),
    }
    # Where the steady drain's CPU goes (first task to last), a task, by process, and how
    # much of the machine it kept busy: the daemon alone near a core is its own bound, the
    # machine's cores all busy the machine's.
    spent = cpu.between(starts[0], starts[-1])
    figures["drain_cores_busy"] = round(spent.pop("machine") / (starts[-1] - starts[0]), 2)
    figures.update(
        {f"drain_{name}_cpu_us": round(1e6 * seconds / (n - 1), 1) for name, seconds in spent.items()}
    )
    return figures


class CpuSampler:
    """The CPU seconds of the daemon, the workers and the database server's processes
    (when there are any), and the machine's busy seconds, read every SAMPLE_EVERY seconds
    on a thread of its own while in the block; `between(t0, t1)` what each spent between
    two epoch times."""

    SAMPLE_EVERY = 0.02

    def __init__(self, daemon: int, workers: list[int], server: list[int]) -> None:
        self.pids = {"daemon": [daemon], "workers": workers, **({"server": server} if server else {})}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> tuple[float, dict[str, float]]:
        spent = {name: sum(_cpu_or_zero(pid) for pid in pids) for name, pids in self.pids.items()}
        spent["machine"] = machine_busy_seconds()
        return time.time(), spent

    def _run(self) -> None:
        while True:
            self.samples.append(self._read())
            if self._stop.wait(self.SAMPLE_EVERY):
                self.samples.append(self._read())
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> dict[str, float]:
        def at(t: float, name: str) -> float:  # interpolated between the samples around t
            for (ta, a), (tb, b) in itertools.pairwise(self.samples):
                if ta <= t <= tb:
                    return a[name] + (b[name] - a[name]) * ((t - ta) / (tb - ta) if tb > ta else 0.0)
            return self.samples[-1][1][name] if t > self.samples[-1][0] else self.samples[0][1][name]

        return {name: at(t1, name) - at(t0, name) for name in self.samples[0][1]}


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # gone
        return 0.0


def machine_busy_seconds() -> float:
    """The machine's CPU seconds spent so far on anything but idling and waiting on I/O,
    all cores together (/proc/stat; 10 ms ticks)."""
    with open("/proc/stat") as fh:
        ticks = [int(field) for field in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def is_local(url: str) -> bool:
    """Whether a database URL names a server on this machine (or its Unix socket)."""
    host = urllib.parse.urlsplit(url).hostname
    return host is None or is_loopback(host)


def database_server_pids(db: str | None) -> list[int]:
    """This machine's PostgreSQL processes (its server's and every connection's backend,
    other users' too), when `db` is a PostgreSQL on this machine; else none (SQLite runs
    in the daemon's process)."""
    if not db or not db.startswith("postgres") or not is_local(db):
        return []
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                pids.append(int(entry))
        except OSError:  # gone meanwhile
            continue
    return pids


# A client process of users_clients: warms up, says "ready", waits for a line on stdin,
# makes its calls one at a time and prints when it started and ended (epoch seconds).
CLIENT_LOOP = """
import sys, time, martinet
m = martinet.Martinet.connect(sys.argv[1], timeout=60)
n = int(sys.argv[2])
for i in range(100):
    m.execute("bench.clock", {"x": i})
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
for i in range(n):
    m.execute("bench.clock", {"x": i})
print(start, time.time(), flush=True)
m.close()
"""


def users_clients(args, db: str | None, counts: tuple[int, ...]) -> dict[int, float]:
    """Calls a second of `count` client processes together, each calling execute one at a
    time (--users-calls calls each), for each count in `counts`, on one daemon with no
    worker: {count: calls/s}, from the first call's start to the last one's end."""
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), db=db, quiet=False)
        try:
            rig.start_daemon()
            rig.client().close()  # answered: the daemon listens
            argv = [sys.executable, "-P", "-c", CLIENT_LOOP, rig.url, str(args.users_calls)]
            return {count: together(argv, count, args.users_calls, rig.env) for count in counts}
        finally:
            rig.stop()


# The floor of users_clients: a ROUTER that answers each request at once, and client
# processes (DEALER) making one round trip at a time, as CLIENT_LOOP does with execute.
ECHO_ROUTER = """
import sys, zmq
ctx = zmq.Context(); r = ctx.socket(zmq.ROUTER); r.bind(sys.argv[1])
while True:
    ident, _, body = r.recv_multipart()
    r.send_multipart([ident, b"ok", body])
"""
ECHO_CLIENT = """
import json, sys, time, zmq
ctx = zmq.Context(); d = ctx.socket(zmq.DEALER); d.connect(sys.argv[1]); n = int(sys.argv[2])
body = json.dumps({"name": "bench.clock", "args": {"x": 1}}).encode()
for _ in range(100):
    d.send_multipart([b"call", body]); d.recv_multipart()
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
for _ in range(n):
    d.send_multipart([b"call", body]); d.recv_multipart()
print(start, time.time(), flush=True)
"""


def together(argv: list[str], count: int, calls: int, env: dict[str, str] | None = None) -> float:
    """Calls a second of `count` processes of `argv` (CLIENT_LOOP, ECHO_CLIENT: `calls`
    calls each) started together once all are warm, over the first start to the last end."""
    procs = [subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
             for _ in range(count)]  # fmt: skip
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a client process of users_clients or zmq_clients did not start")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = [tuple(map(float, p.stdout.readline().split())) for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finally:
        for p in procs:
            p.wait(60)
    return count * calls / (max(e for _s, e in spans) - min(s for s, _e in spans))


def zmq_clients(calls: int, counts: tuple[int, ...]) -> dict[int, float]:
    """Raw pyzmq round trips a second of `count` client processes together against one
    ECHO_ROUTER process, for each count: how far several processes calling one at a time
    can scale on this machine at all, the floor of users_clients."""
    url = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    router = subprocess.Popen([sys.executable, "-c", ECHO_ROUTER, url])
    try:
        argv = [sys.executable, "-c", ECHO_CLIENT, url, str(calls)]
        return {count: together(argv, count, calls) for count in counts}
    finally:
        router.kill()
        router.wait()


def enqueue_in_rate(db_url: str, n: int) -> dict[str, float]:
    """PostgreSQL: martinet.enqueue_in one call at a time on a connection in autocommit
    mode (each task committed as it is made, as a PostgreSQL queue's enqueue commits
    it), and the floor of such a call: a bare INSERT of a task's row, autocommitted,
    one at a time, through the same driver. Calls a second of each."""
    import psycopg2

    drop_tables(db_url)
    open_database(db_url).close()  # the tables, as the daemon makes them
    m = martinet.Martinet.connect("tcp://127.0.0.1:9")  # (enqueue_in sends nothing to a daemon)
    conn = psycopg2.connect(db_url)
    conn.autocommit = True
    try:
        for i in range(100):
            m.enqueue_in(conn, "bench.clock", {"x": i})
        start = time.perf_counter()
        for i in range(n):
            m.enqueue_in(conn, "bench.clock", {"x": i})
        enqueue_in = n / (time.perf_counter() - start)
        now = time.time()
        row = {**TASK_DEFAULTS, "name": "bench.clock", "args": '{"x": 1}', "status": "queued", "run_at": now,
               "created_at": now, "updated_at": now}  # fmt: skip
        insert = f"INSERT INTO task ({','.join(row)}) VALUES ({','.join(['%s'] * len(row))}) RETURNING id"
        with conn.cursor() as cursor:
            start = time.perf_counter()
            for _ in range(n):
                cursor.execute(insert, list(row.values()))
                cursor.fetchone()
            insert_rate = n / (time.perf_counter() - start)
    finally:
        conn.close()
        m.close()
        drop_tables(db_url)
    return {"enqueue_in_per_s": round(enqueue_in), "insert_commit_per_s": round(insert_rate)}


def scenario_users(args) -> dict:
    """martinet as users run it and as the peers are measured: see users_drain and
    the latency scenario's, at --concurrency 1; on SQLite, and on PostgreSQL with --postgres."""
    backends = [("sqlite", None)] + ([("pg", args.postgres)] if args.postgres else [])
    out: dict[str, float] = {}
    trips = zmq_round_trips()
    out["zmq_round_trips_per_s"] = round(trips)
    many = args.users_clients
    floor = zmq_clients(args.users_calls, (1, many))
    out[f"zmq_clients{many}_x"] = round(floor[many] / floor[1], 2)  # what clients8_x can be here
    for label, db in backends:
        c1 = users_drain(args, db, 1)
        out[f"{label}_enqueue_per_s"] = c1["enqueue_per_s"]
        out[f"{label}_enqueue_of_round_trips_pct"] = round(100 * c1["enqueue_per_s"] / trips, 1)
        for side in ("client", "daemon"):
            out[f"{label}_enqueue_{side}_cpu_us"] = c1[f"enqueue_{side}_cpu_us"]
        rates = users_clients(args, db, (1, many))
        out[f"{label}_clients{many}_per_s"] = round(rates[many])
        out[f"{label}_clients{many}_x"] = round(rates[many] / rates[1], 2)  # against one client, same daemon
        out[f"{label}_c1_drain_per_s"] = c1["drain_per_s"]
        out[f"{label}_c1_steady_per_s"] = c1["steady_per_s"]
        for figure in ("first_task_s", "drain_daemon_cpu_us", "drain_workers_cpu_us", "drain_server_cpu_us",
                       "drain_cores_busy"):  # fmt: skip
            if figure in c1:
                out[f"{label}_c1_{figure}"] = c1[figure]
        defaults = users_drain(args, db, None)
        out[f"{label}_default_drain_per_s"] = defaults["drain_per_s"]
        out[f"{label}_default_steady_per_s"] = defaults["steady_per_s"]
        # The harness's latency workload: 2 idle workers at --concurrency 1, defaults otherwise.
        latency = scenario_latency(args, db, concurrency=1, quiet=False)
        out.update({f"{label}_c1_{k}": v for k, v in latency.items() if not k.endswith("max_ms")})
    if args.postgres:
        direct = enqueue_in_rate(args.postgres, args.users_tasks)
        out["pg_enqueue_in_per_s"] = direct["enqueue_in_per_s"]
        out["pg_insert_commit_per_s"] = direct["insert_commit_per_s"]
        out["pg_enqueue_in_of_insert_pct"] = round(
            100 * direct["enqueue_in_per_s"] / direct["insert_commit_per_s"], 1
        )
        out["pg_enqueue_of_insert_pct"] = round(
            100 * out["pg_enqueue_per_s"] / direct["insert_commit_per_s"], 1
        )
    return out


def scenario_backends(args) -> dict | None:
    """Throughput and latency on PostgreSQL; None (skipped) without --postgres."""
    if not args.postgres:
        return None
    return {
        **{f"pg_{k}": v for k, v in scenario_throughput(args, db=args.postgres).items()},
        **{f"pg_{k}": v for k, v in scenario_latency(args, db=args.postgres).items()},
    }


def daemons_drain(args, daemons: int, workers: int) -> float:
    """A drain on PostgreSQL through `daemons` daemons on one database, each with `workers`
    worker processes at --concurrency 1: --tasks tasks submitted in bulk through the first,
    the others started after (they find the queue at their start), then every worker."""
    with tempfile.TemporaryDirectory() as tmp:
        rigs = []
        for k in range(daemons):
            (Path(tmp) / str(k)).mkdir()
            rig = Rig(
                Path(tmp) / str(k), workers=workers, db=args.postgres if k == 0 else None, concurrency=1
            )
            rig.db = args.postgres  # (the first emptied it)
            rigs.append(rig)
        try:
            rigs[0].start_daemon()
            m = rigs[0].client()
            for start in range(0, args.tasks, 1000):
                m.execute_many(
                    [("bench.clock", {"x": i}) for i in range(start, min(start + 1000, args.tasks))]
                )
            m.close()
            for rig in rigs[1:]:
                rig.start_daemon()
                rig.client().close()
            started = time.time()
            for rig in rigs:
                rig.start_workers()
            return args.tasks / (wait_drained(args.postgres) - started)
        finally:
            for rig in rigs:
                rig.stop()


def scenario_daemons(args) -> dict | None:
    """Several daemons on one PostgreSQL (issue 26): the drain through 1, 2 and 3 daemons
    with one worker each at --concurrency 1, and through one daemon with two (the same
    workers as two daemons'). None (skipped) without --postgres."""
    if not args.postgres:
        return None
    one_two = daemons_drain(args, 1, 2)
    rates = {k: daemons_drain(args, k, 1) for k in (1, 2, 3)}
    return {
        "daemons1_workers2_drain_per_s": round(one_two),
        **{f"daemons{k}_drain_per_s": round(rate) for k, rate in rates.items()},
        "daemons2_vs_1_workers2_x": round(rates[2] / one_two, 2),
    }


@contextmanager
def dashboard_open(rig: Rig, page: str) -> Iterator[list[int]]:
    """`martinet web` on the rig's daemon, with two browser tabs' worth of load: two live
    streams (/live, as each page keeps) read to the end, and the overview and `page`
    loaded again every 2 s. Yields the count of messages the streams got."""
    (port,) = free_ports(1)
    env = {**rig.env, "MARTINET_URL": rig.url}
    proc = subprocess.Popen([sys.executable, "-P", "-m", "martinet", "web", "--bind", f"127.0.0.1:{port}"],
                            stdout=rig.log, stderr=rig.log, env=env)  # fmt: skip
    base, stop, events = f"http://127.0.0.1:{port}", threading.Event(), [0]
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(base + "/static/martinet.css", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"martinet web did not start (see {rig.dir}/processes.log)") from None
            time.sleep(0.05)

    def stream() -> None:
        with urllib.request.urlopen(base + "/live", timeout=30) as live:
            while not stop.is_set():
                line = live.readline()
                if not line:
                    return
                events[0] += line.startswith(b"data: ")

    def reload() -> None:
        while not stop.wait(2.0):
            for path in ("/", page):
                urllib.request.urlopen(base + path, timeout=30).read()

    threads = [threading.Thread(target=fn, daemon=True) for fn in (stream, stream, reload)]
    for thread in threads:
        thread.start()
    try:
        yield events
    finally:
        stop.set()
        proc.terminate()
        proc.wait(20)


def scenario_web(args) -> dict:
    """The drain of --tasks no-op tasks (bulk submitted, 2 workers) with the dashboard open
    (dashboard_open: two live pages, the overview and a running task's page reloaded every
    2 s) against the same drain without it, in turn: web_drain_x is their ratio (the
    issue's target: at least 0.9). Needs the 'web' extra."""
    rates: dict[str, float] = {}
    got = 0
    for label in ("without", "with"):
        with running() as (rig, m):
            page = f"/tasks/{m.execute('bench.noop')}"
            wait_drained(rig.db)
            with dashboard_open(rig, page) if label == "with" else nullcontext([0]) as events:
                start = time.time()
                m.execute_many([({"name": "bench.noop"}, {}) for _ in range(args.tasks)])
                rates[label] = args.tasks / (wait_drained(rig.db) - start)
                got = max(got, events[0])
    return {
        "drain_without_web_per_s": round(rates["without"]),
        "drain_with_web_per_s": round(rates["with"]),
        "web_drain_x": round(rates["with"] / rates["without"], 3),
        "web_live_messages": got,
    }


def scenario_curve(args) -> dict:
    """What keys cost: with every socket CURVE against plain text, in turn: the drain of
    --tasks no-op tasks (bulk submitted, 2 workers), and --paced tasks at 200/s into idle
    workers (execute call to handler start). *_x: CURVE's figure over plain text's."""
    out: dict[str, float] = {}
    for label in ("plain", "curve"):
        with running(curve=label == "curve") as (rig, m):
            start = time.time()
            m.execute_many([({"name": "bench.noop"}, {}) for _ in range(args.tasks)])
            out[f"drain_{label}_per_s"] = round(args.tasks / (wait_drained(rig.db) - start))
            sent = paced(args.paced, lambda t0: (m.execute("bench.clock"), t0))
            latencies = [(m.wait(tid, timeout=60) - t0) * 1000 for tid, t0 in sent]
            for k, v in percentiles(latencies).items():
                out[f"latency_{label}_{k}_ms"] = round(v, 2)
    out["curve_drain_x"] = round(out["drain_curve_per_s"] / out["drain_plain_per_s"], 3)
    for k in ("p50", "p99"):
        out[f"curve_latency_{k}_x"] = round(out[f"latency_curve_{k}_ms"] / out[f"latency_plain_{k}_ms"], 3)
    return out


def instructions_counted(args, db: str | None) -> dict[str, float]:
    """The daemon's instructions a task in a c1 drain of --instr-tasks bulk-submitted
    tasks, and (SQLite) a call of --instr-calls sequential execute calls, counted by
    callgrind in the daemon's process (its threads too) from the workload's start to its
    end: nothing else on the machine counts, so a change of a few percent shows in one
    run where the drain's rate needs many pairs (the note of 2026-12-07, near midnight)."""
    figures: dict[str, float] = {}
    label = "pg_" if db else "sqlite_"
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), concurrency=1, db=db)
        out = Path(tmp) / "callgrind.out"
        try:
            rig.start_daemon(under=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"))
            assert rig.daemon is not None
            pid, m = str(rig.daemon.pid), rig.client()
            if db is None:
                for i in range(WARM_CALLS):  # the first calls import and prepare what the rest use
                    m.execute("bench.noop", {"i": i})
                callgrind_control("--zero", pid)
                for i in range(args.instr_calls):
                    m.execute("bench.noop", {"i": i})
                callgrind_control("--dump=calls", pid)
                figures["sqlite_call_instr_k"] = round(
                    callgrind_total(tmp, "calls") / args.instr_calls / 1000, 1
                )
            n = args.instr_tasks
            drained = n + (WARM_CALLS + args.instr_calls if db is None else 0)  # (the calls' tasks drain too)
            for i in range(0, n, 500):
                m.execute_many([("bench.clock", {"x": j}) for j in range(i, min(n, i + 500))])
            m.close()
            callgrind_control("--zero", pid)
            rig.start_workers()
            wait_drained(rig.db, timeout=600)
            callgrind_control("--dump=drain", pid)
            figures[f"{label}c1_drain_task_instr_k"] = round(
                callgrind_total(tmp, "drain") / drained / 1000, 1
            )
        finally:
            rig.stop()
    return figures


def callgrind_control(*args: str) -> None:
    """Tell the callgrind run of a process (its pid last) to zero or dump its counts."""
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


def callgrind_total(folder: str, trigger: str) -> int:
    """The instructions of the callgrind dump in `folder` that `trigger` made."""
    for dump in Path(folder).glob("callgrind.out*"):
        head, _events, costs = dump.read_text(errors="replace").partition("\nevents:")
        if f"\ndesc: Trigger: dump {trigger}\n" in head:
            return int(costs.split("\nsummary:", 1)[1].split()[0])
    raise RuntimeError(f"no callgrind dump of {trigger!r} in {folder}")


def scenario_instructions(args) -> dict | None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return None  # (main says what it needs)
    figures = instructions_counted(args, None)
    if args.postgres:
        figures.update(instructions_counted(args, args.postgres))
    return figures


SCENARIOS = {
    "users": scenario_users,
    "throughput": scenario_throughput,
    "latency": scenario_latency,
    "store": scenario_store,
    "floor": scenario_floor,
    "shaping": scenario_shaping,
    "timers": scenario_timers,
    "scale": scenario_scale,
    "backends": scenario_backends,
    "daemons": scenario_daemons,
    "search": scenario_search,
    "prune": scenario_prune,
    "idle": scenario_idle,
    "web": scenario_web,
    "curve": scenario_curve,
    "instructions": scenario_instructions,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"leave out {', '.join(BIG_DATA)} (a million rows each to build) and idle",
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="throughput: tasks (default 20000)")
    parser.add_argument(
        "--users-tasks", type=int, default=5000, help="users: tasks submitted one at a time (default 5000)"
    )
    parser.add_argument(
        "--users-clients", type=int, default=8, help="users: client processes calling together (default 8)"
    )
    parser.add_argument(
        "--users-calls", type=int, default=1000, help="users: execute calls of each of those (default 1000)"
    )
    parser.add_argument("--timers", type=int, default=1000, help="timers/scale: delayed tasks (default 1000)")
    parser.add_argument("--pending", type=int, default=1_000_000, help="scale: pending delayed tasks")
    parser.add_argument("--schedules", type=int, default=10_000, help="scale: schedules")
    parser.add_argument("--due", type=int, default=20_000, help="scale: tasks due at start, to drain")
    parser.add_argument(
        "--paced", type=int, default=2000, help="latency: tasks paced at 200/s (default 2000)"
    )
    parser.add_argument(
        "--timers-ahead", type=float, default=12.0, help="timers/scale: due up to this many seconds ahead"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MARTINET_BENCH_POSTGRES"),
        help="backends/floor: a PostgreSQL URL whose martinet tables may be dropped "
        "(default $MARTINET_BENCH_POSTGRES)",
    )
    parser.add_argument("--idle", type=int, default=5000, help="idle: idle workers connected (default 5000)")
    parser.add_argument(
        "--idle-window", type=float, default=10.0, help="idle: seconds of sequential calls (default 10)"
    )
    parser.add_argument("--db", help="search: an empty database to fill (default: a fresh SQLite file)")
    parser.add_argument(
        "--synchronous",
        choices=["normal", "full"],
        default="normal",
        help="SQLite: normal (the default) or full (every commit synced to disk)",
    )
    parser.add_argument(
        "--no-journal", action="store_true", help="workers keep no journal (to measure what it costs)"
    )
    parser.add_argument("--prefetch", type=int, help="the workers' --prefetch (default: theirs)")
    parser.add_argument(
        "--instr-tasks",
        type=int,
        default=3000,
        help="instructions: tasks drained under callgrind (default 3000)",
    )
    parser.add_argument(
        "--instr-calls",
        type=int,
        default=500,
        help="instructions: execute calls under callgrind (default 500)",
    )
    args = parser.parse_args()
    global SQLITE_QUERY
    WORKER_FLAGS[:] = ["--no-journal"] if args.no_journal else []
    if args.prefetch is not None:
        WORKER_FLAGS.extend(["--prefetch", str(args.prefetch)])
    SQLITE_QUERY = "" if args.synchronous == "normal" else f"?synchronous={args.synchronous}"
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    chosen = args.scenarios or [
        n for n in SCENARIOS if not (args.quick and n in (*BIG_DATA, "idle", "instructions"))
    ]
    medians: dict[str, dict[str, float]] = {}
    for name in chosen:
        runs = [SCENARIOS[name](args) for _ in range(args.repeat)]
        if None in runs:
            print(f"\n{name}: skipped ({SKIPPED.get(name, SKIPPED_WITHOUT_POSTGRES)})")
            continue
        summary = {k: {"median": round(statistics.median(r[k] for r in runs), 3), "min": min(r[k] for r in runs),
                       "max": max(r[k] for r in runs)} for k in runs[0]}  # fmt: skip
        print(f"\n{name} ({args.repeat} runs)")
        for key, s in summary.items():
            print(f"  {key:<28} median {s['median']:>12,}   min {s['min']:>12,}   max {s['max']:>12,}")
        print(json.dumps({"scenario": name, "repeat": args.repeat, "results": summary}))
        medians[name] = {k: s["median"] for k, s in summary.items()}
    print_targets(medians)
    return 0


WARM_CALLS = 100  # instructions: execute calls before the counted ones
# Why a scenario returned None (it needs what this machine or the command line lacks)
SKIPPED_WITHOUT_POSTGRES = "give --postgres URL, or set MARTINET_BENCH_POSTGRES"
SKIPPED = {"instructions": "needs valgrind, with callgrind_control, on PATH"}
BIG_DATA = ("scale", "search", "prune")  # build a million rows each; left out by --quick

# The targets of issue 5 (2 cores, SQLite, 2 worker processes): (scenario, figure, goal, higher is better).
TARGETS = [
    ("throughput", "drain_per_s", 12_000, True),
    ("throughput", "submit_bulk_per_s", 50_000, True),
    ("throughput", "submit_seq_per_s", 7_000, True),
    ("latency", "latency_p50_ms", 0.5, False),
    ("latency", "latency_p99_ms", 1.0, False),
    ("timers", "late_p50_ms", 1.0, False),
    ("timers", "late_p99_ms", 2.0, False),
    ("scale", "peak_rss_mb", 150, False),
    ("scale", "start_to_first_dispatch_s", 2.0, False),
    ("scale", "drain_vs_empty_pct", 80, True),
    ("floor", "drain_of_floor_pct", 50, True),
    # Issue 25: a call at a time at least half of raw round trips, and 8 clients 4x one.
    ("users", "sqlite_enqueue_of_round_trips_pct", 50, True),
    ("users", "sqlite_clients8_x", 4, True),
    ("users", "sqlite_c1_latency_p99_ms", 1.2, False),  # Huey on Redis: 1.16 ms (peers, 2026-12-06)
    ("web", "web_drain_x", 0.9, True),  # issue 27: the dashboard open costs a drain 10 % at most
]
LATENCY_P50_OF_RELAY = 1.5  # a task's p50 latency at most this multiple of the committing relay's


def print_targets(medians: dict[str, dict[str, float]]) -> None:
    """Medians against the targets, and the drain as a share of the lower floor (raw
    pyzmq or raw SQLite): that share is what optimizing the daemon improves."""
    share = None  # the sequential execute as a share of raw round trips: no target of its own
    times_floor = None  # the latency's p50 and p99 as multiples of the relay's: no target either
    if "latency" in medians and "floor" in medians:
        latency, relay = medians["latency"], medians["floor"]
        times_floor = tuple(
            round(latency[f"latency_{p}_ms"] / relay[f"relay_latency_{p}_ms"], 2) for p in ("p50", "p99")
        )
    if "throughput" in medians and "floor" in medians:
        floor = min(medians["floor"]["zmq_floor_per_s"], medians["floor"]["sqlite_floor_per_s"])
        medians["floor"]["drain_of_floor_pct"] = round(100 * medians["throughput"]["drain_per_s"] / floor, 1)
        # A sequential execute is one round trip: it can be no faster than raw pyzmq's.
        share = round(
            100 * medians["throughput"]["submit_seq_per_s"] / medians["floor"]["zmq_round_trips_per_s"], 1
        )
    rows = [(scenario, key, goal, higher, medians[scenario][key]) for scenario, key, goal, higher in TARGETS
            if key in medians.get(scenario, {})]  # fmt: skip
    if not rows:
        return
    print("\ntargets (medians)")
    for scenario, key, goal, higher, value in rows:
        met = value >= goal if higher else value <= goal
        sign = ">=" if higher else "<="
        print(
            f"  {scenario + ' ' + key:<40} {value:>12,}   target {sign} {goal:<8,} {'met' if met else 'not met'}"
        )
    record = {
        f"{s}.{k}": {"median": v, "target": g, "met": (v >= g) if h else (v <= g)} for s, k, g, h, v in rows
    }
    if share is not None:
        print(f"  floor seq_of_round_trips_pct (sequential execute / raw round trips) {share:>6}")
        record["floor.seq_of_round_trips_pct"] = {"median": share, "target": None, "met": None}
    if times_floor is not None:
        print(
            f"  floor latency_of_relay_x (latency / the relay's, p50 and p99) {times_floor[0]:>6} {times_floor[1]:>6}"
            f"   target p50 <= {LATENCY_P50_OF_RELAY}"
        )
        for p, value in zip(("p50", "p99"), times_floor, strict=True):
            goal = LATENCY_P50_OF_RELAY if p == "p50" else None
            record[f"floor.latency_{p}_of_relay_x"] = {
                "median": value, "target": goal, "met": None if goal is None else value <= goal
            }  # fmt: skip
    users = medians.get("users", {})
    many = next((k for k in users if k.startswith("zmq_clients")), None)
    if many is not None and f"sqlite_{many[4:]}" in users:
        # The clients' target against what raw pyzmq's own round trips reach from as many
        # processes on this machine: a ceiling for any one-call-at-a-time client.
        print(f"  floor {many} (raw pyzmq, as many client processes against one) {users[many]:>6}")
        record[f"users.{many}"] = {"median": users[many], "target": None, "met": None}
    print(json.dumps({"scenario": "targets", "results": record}))


if __name__ == "__main__":
    raise SystemExit(main())
