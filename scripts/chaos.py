"""Fault injection at scale. Tasks keep arriving while one of five mixes of faults
plays, each on a fresh database with its own daemon (or daemons) and workers:

  kills    the daemon and workers are killed (-9) and restarted, and workers are
           frozen long enough to be declared gone, then thawed
  limited  workers serve several task names and queues at once; names carry a
           concurrency limit and/or a rate, queues a concurrency, a rate, or are
           paused and resumed; limited tasks come in bursts, so some wait for room
  pauses   the daemon itself is frozen (SIGSTOP) for 3 to 6 heartbeats, then
           thawed, several times, while healthy workers run tasks
  silent   a fake worker says hello, takes tasks, heartbeats and never answers;
           each task has a time limit, so the real workers should run them all
  daemons  N daemons share one PostgreSQL database (127.0.0.1, 127.0.0.2, ... on the
           same ports); workers and the client are given all of them. The daemon the
           client talks to is killed (-9) and started again 1 to 3 s later, several
           times, and frozen (SIGSTOP) once for 4 to 8 heartbeats; a schedule runs
           every second meanwhile. Asked for by name or with --daemons N (N >= 2), and
           only on a PostgreSQL --db: SQLite serves one daemon

    python scripts/chaos.py                               # every mix, about a minute
    python scripts/chaos.py --mix limited --tasks 1000 --duration 20
    python scripts/chaos.py --db postgresql://postgres@127.0.0.1/chaos
    python scripts/chaos.py --daemons 3 --db postgresql://postgres@127.0.0.1/chaos

After each mix, every accepted task must have reached an end: completed, or
held for an operator (stalled) or dead, which here are failures too, since every
handler succeeds. A task accepted and not found in the database is lost. Runs of
a task beyond the first are counted (delivery is at least once). A thread pings
the daemon every 50 ms with a short timeout and records the longest time it got
no answer, leaving out the time the mix froze or killed the daemon on purpose.

With several daemons, the probe pings each of them and records the longest time
none answered. The daemons mix also reports: runs beyond the first split by cause
(an attempt lost with a killed daemon, with the frozen one, or other); the
schedule's handler runs per due time (exactly one each); and failover times over
the kills, p50 and p99: the client's longest `execute` call that overlapped a
daemon's downtime, and the time from a kill to the first handler start of a task
accepted after it.

Prints one line per mix and the totals, and exits 1 if a task was lost, did not
complete, a schedule's due time ran twice, or the daemon did not answer for longer
than --max-gap. Every wait is bounded: a daemon that stops answering ends its mix.
Talks only to 127.0.0.x, stops every process it started and removes its temporary
files, also on Ctrl-C. A --db database is emptied of martinet's tables before each
mix.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import zmq
from playhouse.db_url import connect as connect_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import martinet  # noqa: E402
from martinet import protocol  # noqa: E402
from martinet.migrations import VERSION_TABLE  # noqa: E402
from martinet.models import TABLES  # noqa: E402
from martinet.protocol import Cmd  # noqa: E402
from tests.harness import free_ports  # noqa: E402

MIXES = ("kills", "limited", "pauses", "silent", "daemons")
DEFAULT_MIXES = MIXES[:4]  # the daemons mix needs PostgreSQL: it runs when asked for
WORKER_MAIN = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"
END_STATES = ("succeeded", "dead", "cancelled")
SETTLED = (*END_STATES, "stalled")  # nothing more happens to these without an operator
# Fast heartbeats and short leases, so the system heals within seconds of each fault.
# The graces of a task's time limit are short too: the worker's to unwind a handler, and the
# daemon's before it ends an attempt its worker never answered (a setting once bug 22.4 is fixed).
FAST = {"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_LIVENESS": "3", "MARTINET_LEASE": "2",
        "MARTINET_TIMEOUT_GRACE": "0.5", "MARTINET_TIME_LIMIT_GRACE": "1.5"}  # fmt: skip
HEARTBEAT = float(FAST["MARTINET_HEARTBEAT_INTERVAL"])
START_TIMEOUT = 20.0  # for a process to start and answer: generous, a loaded machine imports slowly
PROBE_EVERY = 0.05  # seconds between the probe's pings
PROBE_TIMEOUT = 0.5  # a ping unanswered this long has failed
RESTART_ALLOWANCE = 5.0  # seconds a restarted daemon may take to answer, counted as planned
# The daemons mix: a killed daemon stays down longer than its workers' liveness (0.6 s), so
# they move on, and at times longer than a client's first resend (client.FIRST_TRY, 2 s), so
# it moves on too; a freeze passes the 3 beats after which the others call a daemon silent,
# and at times the 3 more after which they end its leases.
DOWN = (1.0, 3.0)  # seconds
FREEZE = (4, 8)  # heartbeats
# Seconds each fault takes on average, until its daemon answers again (a restart ~0.5 s):
# the gaps between faults are what is left of the load's time once they are counted.
TAKES = {"kill": sum(DOWN) / 2 + 0.5, "freeze": sum(FREEZE) / 2 * HEARTBEAT + 0.1}

# The limited mix: the task names' limits (set by the run as an admin; chaos_limited.py's
# decorators declare the same), and the queues' own.
NAME_LIMITS = {"chaos.capped": (1, None), "chaos.rated": (None, (5, 1.0)), "chaos.both": (2, (8, 1.0))}
QUEUE_LIMITS = {"q.capped": (2, None), "q.rated": (None, (20, 1.0))}
QUEUES = ("default", "q.capped", "q.rated", "q.paused")


class Outages:
    """The times a mix made the daemon unable to answer on purpose (frozen, killed)."""

    def __init__(self) -> None:
        self.windows: list[list[float]] = []  # [start, end]; end inf while it lasts
        self.lock = threading.Lock()

    def begin(self) -> list[float]:
        window = [time.monotonic(), float("inf")]
        with self.lock:
            self.windows.append(window)
        return window

    def end(self, window: list[float], extra: float = 0.0) -> None:
        with self.lock:
            window[1] = time.monotonic() + extra

    def planned(self, start: float, end: float) -> float:
        """Seconds of [start, end] that fall in an outage (windows do not overlap)."""
        with self.lock:
            return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.windows)


class Probe:
    """Pings each daemon every PROBE_EVERY seconds, from a thread for each (one silent
    daemon must not delay the pings of the others), and keeps the longest time between two
    answers from any of them, whole and without the planned outages in it."""

    def __init__(self, urls: list[str], outages: Outages) -> None:
        self.urls, self.outages = urls, outages
        self.longest = 0.0
        self.longest_unplanned = 0.0
        self.pings = self.failed = 0
        self.last_ok = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url,), name=f"chaos-probe-{url}", daemon=True)
                         for url in urls]  # fmt: skip

    def start(self) -> Probe:
        self.last_ok = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, url: str) -> None:
        client = martinet.Martinet.connect(url, timeout=PROBE_TIMEOUT)
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    client.ping()
                except martinet.DaemonUnavailable:
                    self._count(ok=False)
                else:
                    self._count(ok=True)
                self._stop.wait(max(0.0, sent + PROBE_EVERY - time.monotonic()))
        finally:
            client.close()

    def _count(self, ok: bool) -> None:
        with self._lock:
            self.pings += 1
            if not ok:
                self.failed += 1
                return
            now = time.monotonic()
            self._gap(self.last_ok, now)
            self.last_ok = now

    def _gap(self, start: float, end: float) -> None:
        self.longest = max(self.longest, end - start)
        self.longest_unplanned = max(self.longest_unplanned, end - start - self.outages.planned(start, end))

    def silent_for(self) -> float:
        """How long the daemon has not answered now, planned outages left out."""
        now = time.monotonic()
        return now - self.last_ok - self.outages.planned(self.last_ok, now)

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + PROBE_TIMEOUT + 5
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._gap(self.last_ok, time.monotonic())  # a silence that lasted to the end counts too


class Fleet:
    """The processes of one mix: its daemons and workers. One daemon listens on 127.0.0.1;
    several (on one PostgreSQL database) on 127.0.0.1, 127.0.0.2, ... with the same ports,
    since a worker reaches every daemon of its list on one worker port and one status port."""

    def __init__(self, workdir: Path, db: str, modules: list[str], say: Callable, outages: Outages,
                 daemons: int = 1) -> None:  # fmt: skip
        self.dir, self.db, self.modules, self.say, self.outages = workdir, db, modules, say, outages
        self.ports = free_ports(3)
        self.hosts = [f"127.0.0.{i + 1}" for i in range(daemons)]  # Linux routes all of 127/8 to loopback
        self.urls = [f"tcp://{host}:{self.ports[0]}" for host in self.hosts]
        self.url = ",".join(self.urls)  # a client of every daemon, moving on when one does not answer
        self.env = {
            **os.environ,
            **FAST,
            "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}",
            "MARTINET_LOG_LEVEL": "WARNING",
            "MARTINET_STATE_DIR": str(workdir / "state"),  # a killed worker's successor takes its journal
        }
        self.log = open(workdir / "processes.log", "ab")  # noqa: SIM115
        self.daemons: list[subprocess.Popen | None] = [None] * daemons
        self.workers: list[tuple[subprocess.Popen, list[str]]] = []
        self.started: list[subprocess.Popen] = []  # everything ever started, to be sure all stop

    def _popen(self, args: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=self.env)
        self.started.append(proc)
        return proc

    def start_daemon(self, i: int = 0) -> None:
        flags = ["--bind", self.hosts[i], "--client-port", str(self.ports[0]),
                 "--worker-port", str(self.ports[1]), "--status-port", str(self.ports[2])]  # fmt: skip
        self.daemons[i] = self._popen([sys.executable, "-m", "martinet", "serve", "--db", self.db, *flags])

    def start_worker(self, extra: list[str] = ()) -> subprocess.Popen:
        args = [sys.executable, "-c", WORKER_MAIN, *self.modules, "--concurrency", "4",
                "--worker-port", str(self.ports[1]), "--status-port", str(self.ports[2]), *extra]  # fmt: skip
        if len(self.hosts) > 1:  # every daemon, each worker from another first: each daemon has some
            first = len(self.workers) % len(self.hosts)
            args += ["--connect", ",".join(self.hosts[first:] + self.hosts[:first])]
        proc = self._popen(args)
        self.workers.append((proc, list(extra)))
        return proc

    def alive_workers(self) -> list[tuple[subprocess.Popen, list[str]]]:
        return [(p, extra) for p, extra in self.workers if p.poll() is None]

    @contextlib.contextmanager
    def _outage(self, extra: float = 0.0) -> Iterator[None]:
        """A planned outage while the body runs, and `extra` seconds after it; with one daemon
        only: with several, one daemon down is no outage, since the others answer."""
        if len(self.daemons) > 1:
            yield
            return
        window = self.outages.begin()
        try:
            yield
        finally:
            self.outages.end(window, extra)

    def kill_daemon(self, i: int = 0, down: float | None = None) -> None:
        """Kill daemon i (-9) and start it again `down` seconds later (default: a short outage,
        during which submissions fail and retry)."""
        with self._outage(RESTART_ALLOWANCE):
            self.daemons[i].kill()
            self.daemons[i].wait()
            time.sleep(random.uniform(0.1, 0.5) if down is None else down)
            self.start_daemon(i)

    def pause_daemon(self, seconds: float, i: int = 0) -> None:
        with self._outage():
            self.daemons[i].send_signal(signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                self.daemons[i].send_signal(signal.SIGCONT)

    def kill_worker(self) -> None:
        victim, extra = random.choice(self.alive_workers())
        victim.kill()
        victim.wait()
        self.workers.remove((victim, extra))
        self.start_worker(extra)

    def cut_off_worker(self) -> None:
        """Freeze a worker (no goodbye, no heartbeats) long enough to be declared gone, then thaw it."""
        victim, _ = random.choice(self.alive_workers())
        victim.send_signal(signal.SIGSTOP)
        try:
            time.sleep(1.5)
        finally:
            victim.send_signal(signal.SIGCONT)

    def stop(self, hard: bool = False) -> None:
        """Stop every process started, SIGTERM first (SIGKILL at once when `hard`: a daemon that
        stopped answering may not hear SIGTERM either), and at most 10 s in all."""
        procs = [p for p in self.started if p.poll() is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGKILL if hard and p in self.daemons else signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"  process {p.pid} ({' '.join(p.args[:4])}...) ignored SIGTERM: killed")
                p.kill()
                p.wait()
        self.log.close()


class SilentWorker:
    """A fake worker on a raw DEALER: says hello with `capacity` slots for chaos.work, takes
    tasks, heartbeats for ever (reporting them as running) and never answers one."""

    def __init__(self, port: int, capacity: int, worker_id: str = "chaos-silent") -> None:
        self.port, self.capacity, self.worker_id = port, capacity, worker_id
        self.held: dict[int, int] = {}  # task id -> attempt, all it was ever sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-silent", daemon=True)

    def start(self) -> SilentWorker:
        self._thread.start()
        return self

    def _hello(self, sock: zmq.Socket) -> None:
        running = [{"id": i, "attempt": a} for i, a in self.held.items()]
        header = {"worker_id": self.worker_id, "names": ["chaos.work"], "capacity": self.capacity,
                  "threads": self.capacity, "version": protocol.VERSION, "running": running}  # fmt: skip
        sock.send_multipart(protocol.encode(Cmd.HELLO, header))

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"tcp://127.0.0.1:{self.port}")
            self._hello(sock)
            interval, next_beat = HEARTBEAT, time.monotonic() + HEARTBEAT
            while not self._stop.is_set():
                if sock.poll(50):
                    cmd, h = protocol.decode(sock.recv_multipart())
                    if cmd is Cmd.WELCOME:
                        interval = float(h.get("heartbeat_interval") or interval)
                    elif cmd is Cmd.HELLO_AGAIN:
                        self._hello(sock)
                    elif cmd is Cmd.TASK:
                        for task in h.get("tasks") or ():
                            self.held[task["id"]] = task["attempt"]
                if time.monotonic() >= next_beat:
                    sock.send_multipart(protocol.encode(Cmd.HEARTBEAT, {"running": sorted(self.held)}))
                    next_beat = time.monotonic() + interval
        finally:
            sock.close(0)
            ctx.term()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _db(url: str):
    return connect_url(
        url.partition("?")[0] if url.startswith("sqlite") else url.replace("mariadb://", "mysql://", 1)
    )


def reset_db(url: str) -> None:
    """Drop martinet's tables (and its schema version), so that the mix starts from nothing."""
    db = _db(url)
    db.connect()
    try:
        for table in [*(model._meta.table_name for model in TABLES), VERSION_TABLE]:
            db.execute_sql(f"DROP TABLE IF EXISTS {table}")
    finally:
        db.close()


class Statuses:
    """Reads the tasks' statuses from the database itself: it answers when the daemon does not."""

    def __init__(self, url: str) -> None:
        self.db = _db(url)

    def read(self) -> dict[int, tuple[str, str, str, str | None]]:
        """task id -> (status, name, queue, worker)"""
        try:
            self.db.connect(reuse_if_open=True)
            rows = self.db.execute_sql("SELECT id, status, name, queue, worker FROM task")
            return {i: (s, n, q, w) for i, s, n, q, w in rows}
        except Exception as exc:  # not created yet, or busy a moment: the next read tells
            self.db.close()
            raise RuntimeError(f"cannot read the tasks from the database: {exc}") from exc

    def outcomes(self) -> dict[str, int]:
        """How many attempts ended how (succeeded, lost, failed, ...)."""
        self.db.connect(reuse_if_open=True)
        return dict(self.db.execute_sql("SELECT outcome, COUNT(*) FROM attempt GROUP BY outcome").fetchall())

    def lost_reasons(self) -> dict[str, int]:
        """Why attempts were declared lost ("unreachable", "silent for Ns", "lease expired", ...)."""
        self.db.connect(reuse_if_open=True)
        rows = self.db.execute_sql("SELECT error_message FROM attempt WHERE outcome = 'lost'").fetchall()
        reasons = (re.sub(r"[0-9.]+s\b", "Ns", (m or "?").split(" (worker")[0]) for (m,) in rows)
        return dict(collections.Counter(reasons))

    def first_starts(self) -> dict[int, float]:
        """task id -> when a handler first started it, as its daemon recorded the start
        (epoch seconds; the worker reports a start as it happens)."""
        self.db.connect(reuse_if_open=True)
        rows = self.db.execute_sql(
            "SELECT task_id, MIN(started_at) FROM attempt WHERE started_at IS NOT NULL GROUP BY task_id"
            " UNION ALL SELECT id, started_at FROM task WHERE started_at IS NOT NULL"
        ).fetchall()
        out: dict[int, float] = {}
        for task_id, started in rows:
            out[task_id] = min(started, out.get(task_id, started))
        return out

    def lost_with_daemons(self) -> dict[int, set[int]]:
        """task id -> the pids of the daemons whose end ended an attempt of it as lost
        (Store.release_daemon: "its daemon ID stopped or went silent")."""
        self.db.connect(reuse_if_open=True)
        pids = dict(self.db.execute_sql("SELECT id, pid FROM daemon").fetchall())
        rows = self.db.execute_sql("SELECT task_id, error_message FROM attempt WHERE outcome = 'lost'")
        out: dict[int, set[int]] = collections.defaultdict(set)
        for task_id, message in rows:
            found = re.match(r"its daemon (\S+) stopped or went silent", message or "")
            if found and found[1] in pids:
                out[task_id].add(pids[found[1]])
        return out

    def schedule_runs(self) -> list[tuple[int, float, str]]:
        """(task id, due time, status) of every task a schedule made."""
        self.db.connect(reuse_if_open=True)
        return self.db.execute_sql(
            "SELECT id, due_at, status FROM task WHERE schedule_id IS NOT NULL"
        ).fetchall()

    def close(self) -> None:
        self.db.close()


class Run:
    """One mix: its processes, its probe, its client, what was accepted and what ran."""

    def __init__(self, mix: str, workdir: Path, db: str, modules: list[str], args: argparse.Namespace,
                 say: Callable, daemons: int = 1) -> None:  # fmt: skip
        self.mix, self.dir, self.db, self.args, self.say = mix, workdir, db, args, say
        self.outages = Outages()
        self.fleet = Fleet(workdir, db, modules, say, self.outages, daemons)
        self.runs_file = workdir / "runs.txt"
        self.accepted: set[int] = set()  # ids of the tasks accepted
        self.accepted_at: dict[int, float] = {}  # task id -> when it was accepted (epoch seconds)
        self.calls: list[tuple[float, float]] = []  # each submit: when it began and was accepted (monotonic)
        self.awaited: set[int] = set()  # other tasks that must end too (a schedule's runs)
        self.stop = threading.Event()
        self.probe: Probe | None = None
        self.client: martinet.Martinet | None = None  # of every daemon (see Fleet.url)
        self.each: list[martinet.Martinet] = []  # a client of each daemon alone
        self.hung: str | None = None  # why the mix was cut short
        self.error: str | None = None  # what stopped it otherwise
        self.started = time.monotonic()
        self.extra: dict = {}
        self.final: dict[
            int, tuple[str, str, str, str | None]
        ] = {}  # the tasks at the end (see Statuses.read)

    def at(self) -> str:
        return f"[{self.mix} {time.monotonic() - self.started:5.1f}s]"

    def open(self, workers: list[list[str]]) -> None:
        # A call the daemon does not answer ends within the time a mix waits for it anyway.
        timeout = min(5.0, self.args.hang_after)
        self.client = martinet.Martinet.connect(self.fleet.url, timeout=timeout)
        self.each = [martinet.Martinet.connect(url, timeout=timeout) for url in self.fleet.urls]
        for i in range(len(self.fleet.daemons)):
            self.fleet.start_daemon(i)
        for i in range(len(self.fleet.daemons)):
            self.wait_serving(i)
        self.probe = Probe(self.fleet.urls, self.outages).start()
        for extra in workers:
            self.fleet.start_worker(extra)

    def wait_serving(self, i: int) -> None:
        """Wait until daemon i answers at its own address (bounded: START_TIMEOUT)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.each[i].ping()
                return
            except martinet.DaemonUnavailable:
                if time.monotonic() > deadline or self.fleet.daemons[i].poll() is not None:
                    raise RuntimeError(
                        f"the daemon on {self.fleet.hosts[i]} did not start; see {self.dir / 'processes.log'}"
                    ) from None

    def wait_workers(self, n: int) -> None:
        """Wait until n workers are connected, to any of the daemons."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            connected = 0
            for client in self.each:
                with contextlib.suppress(martinet.DaemonUnavailable):
                    connected += client.ping()["workers"]
            if connected >= n:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers did not connect within {START_TIMEOUT:g}s")
            time.sleep(0.05)

    def check(self) -> bool:
        """False once the daemon has not answered for longer than --hang-after (planned
        outages left out): the mix stops there."""
        if self.hung is None and self.probe is not None and self.probe.silent_for() > self.args.hang_after:
            self.hung = f"the daemon did not answer for {self.probe.silent_for():.1f}s"
            self.say(f"{self.at()} {self.hung}: ending the mix")
            self.stop.set()
        return self.hung is None

    def sleep(self, seconds: float) -> bool:
        """Sleep, watching the daemon; False if it stopped answering."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if not self.check():
                return False
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return self.check()

    def submit(self, tasks: list[tuple[dict, dict]], request_id: str) -> bool:
        """Submit a batch until it is accepted (the same request ids: never created twice), or
        until the mix stops. True if accepted. One task goes in a plain `execute` call."""
        began = time.monotonic()
        while not self.stop.is_set():
            try:
                if len(tasks) == 1:
                    ids = [self.client.execute(*tasks[0], request_id=request_id)]
                else:
                    ids = self.client.execute_many(tasks, request_id=request_id)
            except martinet.DaemonUnavailable:
                continue
            self.calls.append((began, time.monotonic()))
            accepted_at = time.time()
            for tid in map(int, ids):
                self.accepted_at.setdefault(tid, accepted_at)
            self.accepted.update(int(tid) for tid in ids)
            return True
        return False

    def submitter(self, make: Callable[[int], tuple[list[tuple[dict, dict]], str]], batches: int,
                  duration: float) -> threading.Thread:  # fmt: skip
        """A thread that submits `batches` batches made by make(i), evenly over `duration`."""

        def loop() -> None:
            pace = duration * 0.7 / max(1, batches)
            for i in range(batches):
                if self.stop.is_set() or not self.submit(*make(i)):
                    return
                self.stop.wait(pace)

        thread = threading.Thread(target=loop, name="chaos-submit", daemon=True)
        thread.start()
        return thread

    def join(self, thread: threading.Thread) -> None:
        while thread.is_alive():
            if not self.check():
                thread.join(10)  # each call it makes ends within its client's timeout
                return
            thread.join(0.05)

    def settle(self) -> None:
        """Wait for every accepted task to settle: until none is left, or --settle seconds pass
        without one settling, or the daemon stops answering."""
        self.say(f"{self.at()} {len(self.accepted)} tasks accepted; waiting for them to end")
        statuses = Statuses(self.db)
        try:
            left, last_progress = None, time.monotonic()
            while self.check():
                try:
                    now = statuses.read()
                except RuntimeError:
                    now = {}
                unsettled = sum(
                    1 for t in self.accepted | self.awaited if now.get(t, ("?",))[0] not in SETTLED
                )
                if not unsettled:
                    return
                if left is None or unsettled < left:
                    left, last_progress = unsettled, time.monotonic()
                elif time.monotonic() - last_progress > self.args.settle:
                    self.say(f"{self.at()} {unsettled} tasks did not end within {self.args.settle:g}s")
                    return
                time.sleep(0.2)
        finally:
            statuses.close()

    def close(self) -> None:
        self.stop.set()
        if self.probe is not None:
            self.probe.stop()
        for client in [self.client, *self.each]:
            if client is not None:
                client.close()
        self.fleet.stop(hard=self.hung is not None)

    def result(self) -> dict:
        statuses = Statuses(self.db)
        try:
            self.final = final = statuses.read()
            outcomes, lost_reasons = statuses.outcomes(), statuses.lost_reasons()
        except Exception:  # the database is gone or unreadable: the figures say so
            final, outcomes, lost_reasons = {}, {}, {}
        finally:
            statuses.close()
        counts = collections.Counter(final[t][0] for t in self.accepted if t in final)
        runs = read_runs(self.runs_file)
        lost = [t for t in self.accepted if t not in final]
        unfinished = {s: n for s, n in counts.items() if s not in SETTLED}
        result = {
            "mix": self.mix,
            "accepted": len(self.accepted),
            "unique_ids": len(set(self.accepted)),
            "completed": counts.get("succeeded", 0),
            "dead": counts.get("dead", 0),
            "stalled": counts.get("stalled", 0),
            "cancelled": counts.get("cancelled", 0),
            "unfinished": sum(unfinished.values()),
            "unfinished_by_status": unfinished,
            "lost": len(lost),
            "never_ran": sum(1 for t in self.accepted if t not in runs),
            "duplicated": sum(1 for t, n in runs.items() if n > 1 and t in self.accepted),
            "extra_runs": sum(n - 1 for t, n in runs.items() if n > 1 and t in self.accepted),
            "longest_gap": round(self.probe.longest, 2) if self.probe else None,
            "longest_unplanned_gap": round(self.probe.longest_unplanned, 2) if self.probe else None,
            "attempts": outcomes,
            "lost_attempts_why": lost_reasons,
            "hung": self.hung,
            "error": self.error,
            **self.extra,
            "seconds": round(time.monotonic() - self.started, 1),
        }
        result["failures"] = failures(result, self.args.max_gap)
        return result


def read_runs(path: Path) -> collections.Counter:
    """How many times each task ran, from the lines "id ..." the handlers append."""
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line.strip())


def failures(result: dict, max_gap: float) -> list[str]:
    out = []
    if result["lost"]:
        out.append(f"{result['lost']} accepted tasks are not in the database (lost)")
    not_done = result["accepted"] - result["completed"]
    if not_done:
        shown = {k: result[k] for k in ("dead", "stalled", "cancelled") if result[k]}
        shown.update(result["unfinished_by_status"])
        out.append(f"{not_done} tasks did not complete ({', '.join(f'{n} {s}' for s, n in shown.items())})")
    if result["error"]:
        out.append(result["error"])
    if result["hung"]:
        out.append(result["hung"])
    elif (result["longest_unplanned_gap"] or 0) > max_gap:
        out.append(f"the daemon did not answer for {result['longest_unplanned_gap']}s (bound {max_gap:g}s)")
    if result.get("healthy_declared_lost"):
        why = ", ".join(f"{n} {reason}" for reason, n in result["lost_attempts_why"].items())
        out.append(
            f"{result['healthy_declared_lost']} attempts of healthy workers were declared lost ({why})"
        )
    if result.get("silent_most_held", 0) > result.get("silent_capacity", 0):
        out.append(f"the silent worker held {result['silent_most_held']} tasks at once "
                   f"(it declared {result['silent_capacity']})")  # fmt: skip
    for breach in result.get("limit_breaches", ()):
        out.append(f"limit exceeded: {breach}")
    schedule = result.get("schedule") or {}
    if schedule.get("ran_twice"):
        out.append(f"the schedule ran {len(schedule['ran_twice'])} due times more than once "
                   f"(due at {', '.join(map(str, schedule['ran_twice'][:5]))})")  # fmt: skip
    if schedule.get("not_completed"):
        out.append(f"{schedule['not_completed']} runs of the schedule did not complete")
    return out


def _mix(mix: str, args: argparse.Namespace, workdir: Path, say: Callable, modules: list[str],
         workers: list[list[str]], body: Callable[[Run], None], post: Callable | None = None,
         daemons: int = 1) -> dict:  # fmt: skip
    mixdir = workdir / mix
    mixdir.mkdir(parents=True, exist_ok=True)
    db = args.db or f"sqlite:///{mixdir / 'chaos.db'}"
    if args.db:
        reset_db(db)
    run = Run(mix, mixdir, db, modules, args, say, daemons)
    try:
        run.open(workers)
        body(run)
        run.settle()
    except (martinet.MartinetError, RuntimeError) as exc:  # reported with the figures; the next mix runs
        run.error = f"the mix stopped early: {type(exc).__name__}: {exc}"
        say(f"{run.at()} {run.error}")
    finally:
        run.close()
    result = run.result()
    if post is not None:
        post(run, result)
        result["failures"] = failures(result, args.max_gap)
    return result


# ---- the mixes -------------------------------------------------------------------------------


def run_kills(args: argparse.Namespace, workdir: Path, say: Callable = print) -> dict:
    """The daemon and workers killed (-9) and restarted, workers frozen and thawed."""

    def body(run: Run) -> None:
        run.wait_workers(args.workers)
        spec = {"name": "chaos.work", "max_attempts": 20}
        argv = {"runs_file": str(run.runs_file)}
        submitter = run.submitter(lambda i: ([(spec, argv)], f"chaos-{i}"), args.tasks, args.duration)
        fleet, faults = run.fleet, []
        actions = [fleet.kill_daemon, fleet.kill_worker, fleet.cut_off_worker]
        for k in range(args.kills):
            if not run.sleep(random.uniform(0.5, 1.5) * args.duration * 0.7 / max(1, args.kills)):
                break
            action = actions[k % len(actions)]
            action()
            faults.append(action.__name__)
            say(f"{run.at()} fault {k + 1}/{args.kills}: {action.__name__}")
        run.extra["faults"] = dict(collections.Counter(faults))
        run.join(submitter)

    return _mix("kills", args, workdir, say, ["chaos_tasks"], [[]] * args.workers, body)


def run_limited(args: argparse.Namespace, workdir: Path, say: Callable = print) -> dict:
    """Several limited names and limited queues served at once, limited tasks in bursts."""
    every = 0.25  # seconds between bursts
    bursts = max(1, int(args.duration * 0.7 / every))
    per_burst = max(6, args.tasks // bursts)

    def body(run: Run) -> None:
        run.wait_workers(len(workers))
        m = run.client
        m.set_queue("q.capped", concurrency=QUEUE_LIMITS["q.capped"][0])
        m.set_queue("q.rated", rate="20/s")
        for name, (concurrency, rate) in NAME_LIMITS.items():
            m.set_task_limit(
                name, concurrency or "none", "none" if rate is None else f"{rate[0]}/{rate[1]:g}s"
            )
        m.pause_queue("q.paused")
        argv = {"runs_file": str(run.runs_file)}

        def burst(i: int) -> tuple[list[tuple[dict, dict]], str]:
            # Several of each limited name at once, so some wait while their limit is full
            # (after two bursts without them: what runs before the limits bite is seen).
            tasks = [({"name": "chaos.capped"}, argv)] * 2 + [({"name": "chaos.rated"}, argv)]
            tasks += [({"name": "chaos.both", "queue": "q.capped"}, argv)]
            tasks = tasks if i >= 2 else []
            frees = [({"name": "chaos.free", "queue": QUEUES[j % len(QUEUES)]}, argv)
                     for j in range(per_burst - len(tasks))]  # fmt: skip
            return [(dict(spec), a) for spec, a in tasks + frees], f"chaos-limited-{i}"

        n = min(bursts, max(1, args.tasks // per_burst))
        submitter = run.submitter(burst, n, args.duration)
        paused, toggles = True, 0
        while submitter.is_alive() and run.sleep(1.0):
            try:
                (m.resume_queue if paused else m.pause_queue)("q.paused")
                paused, toggles = not paused, toggles + 1
            except martinet.DaemonUnavailable:
                continue
        run.join(submitter)
        if paused and run.check():
            with contextlib.suppress(martinet.DaemonUnavailable):
                m.resume_queue("q.paused")
        run.extra["queue_pauses_toggled"] = toggles

    # Two workers serve every name; the second only some queues.
    workers = [[], ["--queues", "default,q.capped,q.paused"]][: max(1, args.workers)]
    workers += [[]] * (args.workers - len(workers))

    def post(run: Run, result: dict) -> None:
        result["limit_breaches"] = limit_breaches(run.runs_file, run.final)

    return _mix("limited", args, workdir, say, ["chaos_limited"], workers, body, post)


def limit_breaches(runs_file: Path, final: dict[int, tuple]) -> list[str]:
    """The limits of NAME_LIMITS and QUEUE_LIMITS that the handlers' runs exceeded."""
    spans: dict[int, tuple[float, float]] = {}
    if runs_file.exists():
        for line in runs_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                spans[int(parts[0])] = (float(parts[1]), float(parts[2]))
    out = []
    for column, limits, kind in ((1, NAME_LIMITS, "task"), (2, QUEUE_LIMITS, "queue")):
        for lane, (concurrency, rate) in limits.items():
            runs = sorted(span for t, span in spans.items() if t in final and final[t][column] == lane)
            most = _most_at_once(runs)
            if concurrency is not None and most > concurrency:
                out.append(f"{kind} {lane}: {most} ran at once (limit {concurrency})")
            if rate is not None:
                count, period = rate
                starts = [s for s, _ in runs]
                most = max((_count_within(starts, i, period) for i in range(len(starts))), default=0)
                if most > count:
                    out.append(f"{kind} {lane}: {most} started within {period:g}s (rate {count}/{period:g}s)")
    return out


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])  # an end before a start at a tie
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _count_within(starts: list[float], i: int, period: float) -> int:
    j = i
    while j < len(starts) and starts[j] - starts[i] < period:
        j += 1
    return j - i


def run_pauses(args: argparse.Namespace, workdir: Path, say: Callable = print) -> dict:
    """The daemon frozen (SIGSTOP) for 3 to 6 heartbeats, several times; healthy workers."""

    def body(run: Run) -> None:
        run.wait_workers(args.workers)
        spec = {"name": "chaos.work"}  # the daemon's own max_attempts: pauses must not spend them
        argv = {"runs_file": str(run.runs_file), "pause": 0.2}  # long enough to span a pause
        long = {"runs_file": str(run.runs_file), "hold": 2.5}  # spans several: three losses stall it
        per = 10

        def batch(i: int) -> tuple[list[tuple[dict, dict]], str]:
            return [(spec, long if i % 8 == 0 else argv)] + [(spec, argv)] * (per - 1), f"chaos-pauses-{i}"

        submitter = run.submitter(batch, max(1, args.tasks // per), args.duration)
        frozen = []
        for k in range(args.pauses):
            if not run.sleep(random.uniform(0.5, 1.5) * args.duration * 0.7 / max(1, args.pauses)):
                break
            seconds = random.uniform(3, 6) * HEARTBEAT
            run.fleet.pause_daemon(seconds)
            frozen.append(round(seconds, 2))
            say(f"{run.at()} pause {k + 1}/{args.pauses}: daemon frozen for {seconds:.2f}s")
        run.extra["pauses"] = frozen
        run.join(submitter)

    def post(run: Run, result: dict) -> None:
        # Every worker stays healthy here: an attempt declared lost was the daemon's mistake.
        result["healthy_declared_lost"] = result["attempts"].get("lost", 0)

    return _mix("pauses", args, workdir, say, ["chaos_tasks"], [[]] * args.workers, body, post)


def run_silent(args: argparse.Namespace, workdir: Path, say: Callable = print) -> dict:
    """A fake worker that takes tasks and never answers, beside healthy ones."""

    most_held = [0]  # the most tasks the database showed running on the silent worker at once

    def count_held(run: Run) -> None:
        statuses = Statuses(run.db)
        try:
            while not run.stop.wait(0.1):
                with contextlib.suppress(RuntimeError):
                    rows = statuses.read().values()
                    held = sum(
                        1 for status, _, _, worker in rows if status == "running" and worker == fake.worker_id
                    )
                    most_held[0] = max(most_held[0], held)
        finally:
            statuses.close()

    def body(run: Run) -> None:
        run.wait_workers(args.workers)
        fake.port = run.fleet.ports[1]
        silent.append(fake.start())
        threading.Thread(target=count_held, args=(run,), name="chaos-held", daemon=True).start()
        run.wait_workers(args.workers + 1)
        # Each task's own time limit is 1 s (it needs 10 ms), and attempts to spare: one may
        # come back to the silent worker more than once.
        spec = {"name": "chaos.work", "timeout": 1.0, "max_attempts": 10}
        argv = {"runs_file": str(run.runs_file)}
        per = 10
        submitter = run.submitter(
            lambda i: ([(spec, argv)] * per, f"chaos-silent-{i}"), max(1, args.tasks // per), args.duration
        )
        run.join(submitter)

    def post(run: Run, result: dict) -> None:
        result["silent_took"] = len(fake.held)  # tasks it was ever sent
        result["silent_most_held"] = most_held[0]
        result["silent_capacity"] = args.silent_capacity

    fake = SilentWorker(0, args.silent_capacity)
    silent: list[SilentWorker] = []
    try:
        return _mix("silent", args, workdir, say, ["chaos_tasks"], [[]] * args.workers, body, post)
    finally:
        for started in silent:
            started.stop()


def daemons_problem(args: argparse.Namespace) -> str | None:
    """Why the daemons mix cannot run with these arguments, or None."""
    if args.daemons is not None and args.daemons < 2:
        return f"--daemons {args.daemons}: the daemons mix runs 2 or more daemons"
    if not (args.db or "").startswith("postgres"):
        return ("the daemons mix (--daemons N) needs a PostgreSQL --db (postgresql://...): "
                "several daemons share one PostgreSQL database, and SQLite serves one daemon")  # fmt: skip
    return None


def run_daemons(args: argparse.Namespace, workdir: Path, say: Callable = print) -> dict:
    """Several daemons on one PostgreSQL database: the one the client talks to killed (-9)
    and started again, several times, and once frozen; a schedule runs every second."""
    problem = daemons_problem(args)
    if problem:
        raise ValueError(problem)
    faults: list[dict] = []

    def body(run: Run) -> None:
        run.wait_workers(args.workers)
        spec = {"name": "chaos.work", "max_attempts": 20}
        argv = {"runs_file": str(run.runs_file)}
        schedule = run.client.every(1, spec, argv, request_id="chaos-daemons-every")
        submitter = run.submitter(lambda i: ([(spec, argv)], f"chaos-daemons-{i}"), args.tasks, args.duration)
        load_ends = time.monotonic() + args.duration * 0.7
        plan = ["kill"] * args.kills
        plan.insert(1, "freeze")
        for k, fault in enumerate(plan):
            # Spread over what is left of the load, each fault once the client is over the one
            # before (a call of its began after it and was answered): their figures are apart.
            spare = load_ends - time.monotonic() - sum(TAKES[f] for f in plan[k:])
            if not run.sleep(random.uniform(0.5, 1.0) * max(0.0, spare) / (len(plan) - k + 1)):
                break
            since = faults[-1]["back"] if faults else 0.0
            while submitter.is_alive() and not any(begin > since for begin, _ in run.calls[-3:]):
                if not run.sleep(0.02):
                    break
            if not submitter.is_alive() or run.hung:  # faults under load only
                break
            faults.append(daemon_fault(run, fault))
            say(f"{run.at()} fault {k + 1}/{len(plan)}: {fault} the daemon on {faults[-1]['daemon']}")
        run.join(submitter)
        end_schedule(run, schedule)

    def post(run: Run, result: dict) -> None:
        result.update(daemons_figures(run, faults))

    n = args.daemons or 2
    return _mix("daemons", args, workdir, say, ["chaos_tasks"], [[]] * args.workers, body, post, daemons=n)


def daemon_fault(run: Run, fault: str) -> dict:
    """Kill (-9) or freeze the daemon the submitting client talks to now. A killed one
    starts again DOWN seconds later, a frozen one is thawed after FREEZE heartbeats; either
    way the fault lasts until it answers again, so that one daemon at most is down at once."""
    fleet = run.fleet
    i = fleet.urls.index(run.client.client.url)
    pid, at, wall = fleet.daemons[i].pid, time.monotonic(), time.time()
    if fault == "kill":
        fleet.kill_daemon(i, down=random.uniform(*DOWN))
    else:
        fleet.pause_daemon(random.uniform(*FREEZE) * HEARTBEAT, i)
    run.wait_serving(i)
    return {
        "fault": fault,
        "daemon": fleet.hosts[i],
        "pid": pid,
        "at": at,
        "wall": wall,
        "back": time.monotonic(),
    }


def end_schedule(run: Run, schedule: str) -> None:
    """Remove the schedule (asking again while no daemon answers, within --hang-after), and
    have the mix wait for the runs it made."""
    while run.check():
        try:
            run.client.revoke(schedule)
            break
        except martinet.DaemonUnavailable:
            continue
    statuses = Statuses(run.db)
    try:
        run.awaited.update(task_id for task_id, _, _ in statuses.schedule_runs())
    finally:
        statuses.close()


def daemons_figures(run: Run, faults: list[dict]) -> dict:
    """What the daemons mix reports beyond the common figures: failover times, runs beyond
    the first by cause, and the schedule's runs per due time."""
    statuses = Statuses(run.db)
    try:
        starts, lost_with, schedule = (
            statuses.first_starts(),
            statuses.lost_with_daemons(),
            statuses.schedule_runs(),
        )
    finally:
        statuses.close()
    runs = read_runs(run.runs_file)
    for fault in faults:
        fault.update(failover(fault, run.calls, run.accepted_at, starts))
    kills = [f for f in faults if f["fault"] == "kill"]
    killed, frozen = ({f["pid"] for f in faults if f["fault"] == kind} for kind in ("kill", "freeze"))
    causes: collections.Counter = collections.Counter()
    for task_id, n in runs.items():
        if n > 1 and task_id in run.accepted:
            pids = lost_with.get(task_id, set())
            causes["killed daemon" if pids & killed else "frozen daemon" if pids & frozen else "other"] += 1
    return {
        "daemons": len(run.fleet.daemons),
        "faults": dict(collections.Counter(f["fault"] for f in faults)),
        "duplicated_by_cause": dict(causes),
        "failover": {
            "client_call": percentiles([f["longest_call"] for f in kills]),
            "first_start": percentiles([f["first_start_after"] for f in kills]),
        },
        "fault_log": [_logged(f, run.started) for f in faults],
        "schedule": schedule_figures(schedule, runs),
    }


def _logged(fault: dict, started: float) -> dict:
    """A fault as the result shows it: what, where, when (seconds into the mix), how long."""
    shown = {key: fault[key] for key in ("fault", "daemon", "longest_call", "first_start_after")}
    return {**shown, "at": round(fault["at"] - started, 1), "for": round(fault["back"] - fault["at"], 2)}


def failover(fault: dict, calls: list[tuple[float, float]], accepted_at: dict[int, float],
             starts: dict[int, float]) -> dict:  # fmt: skip
    """For one fault: the longest submit call that overlapped the daemon's downtime (from
    the fault until it answered again), and the time from the fault to the first handler
    start of a task accepted after it (None when no call or no such task)."""
    spanning = [end - begin for begin, end in calls if begin < fault["back"] and end > fault["at"]]
    after = [
        starts[t] for t, at in accepted_at.items() if at > fault["wall"] and starts.get(t, 0) > fault["wall"]
    ]
    return {
        "longest_call": round(max(spanning), 3) if spanning else None,
        "first_start_after": round(min(after) - fault["wall"], 3) if after else None,
    }


def percentiles(values: list[float | None]) -> dict:
    """p50 and p99 (nearest rank) of the values that are not None, and how many there were."""
    known = sorted(v for v in values if v is not None)

    def rank(p: int) -> float | None:
        return known[max(0, math.ceil(len(known) * p / 100) - 1)] if known else None

    return {"p50": rank(50), "p99": rank(99), "n": len(known)}


def schedule_figures(rows: list[tuple[int, float, str]], runs: collections.Counter) -> dict:
    """The schedule's handler runs per due time (each must run exactly once), its due times
    that ran more than once, those it skipped (it runs every second), and its runs that
    did not complete."""
    per_due: collections.Counter = collections.Counter()
    for task_id, due, _ in rows:
        per_due[due] += runs.get(task_id, 0)
    dues = sorted(per_due)
    return {
        "due_times": len(dues),
        "runs_per_due_time": dict(sorted(collections.Counter(per_due.values()).items())),
        "ran_twice": [due for due in dues if per_due[due] > 1],
        "skipped_due_times": sum(round(b - a) - 1 for a, b in zip(dues, dues[1:], strict=False)),
        "not_completed": sum(1 for _, _, status in rows if status != "succeeded"),
    }


RUNNERS = {"kills": run_kills, "limited": run_limited, "pauses": run_pauses, "silent": run_silent,
           "daemons": run_daemons}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mix", action="append", choices=MIXES, help="run this mix (repeatable; default: all)")
    p.add_argument("--tasks", type=int, default=400, help="tasks submitted in each mix (default 400)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds over which they arrive (default 8)")
    p.add_argument("--workers", type=int, default=2, help="real workers in each mix (default 2)")
    p.add_argument("--kills", type=int, default=6,
                   help="kills mix: faults to inject (daemon kill -9, worker kill -9, cut-off); daemons mix: "
                   "daemons to kill -9 (as many as fit while tasks arrive); default 6")  # fmt: skip
    p.add_argument("--daemons", type=int, metavar="N",
                   help="daemons mix: N >= 2 daemons on the PostgreSQL --db (default 2); without --mix, "
                   "that mix alone. The other mixes run one daemon")  # fmt: skip
    p.add_argument("--pauses", type=int, default=4, help="pauses mix: times the daemon is frozen (default 4)")
    p.add_argument("--silent-capacity", type=int, default=8, help="silent mix: the fake worker's slots")
    p.add_argument("--max-gap", type=float, default=5.0,
                   help="fail if the daemon did not answer for longer (planned outages left out; default 5 s)")  # fmt: skip
    p.add_argument("--hang-after", type=float, default=10.0,
                   help="end a mix once the daemon has not answered this long (default 10 s)")  # fmt: skip
    p.add_argument("--settle", type=float, default=8.0,
                   help="after submitting, give up once no task ended for this long (default 8 s)")  # fmt: skip
    p.add_argument("--db", help="database URL (default: a fresh SQLite file per mix); its martinet "
                   "tables are dropped before each mix")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print each mix's result as JSON too")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (processes' logs)")
    return p


def run_chaos(tasks: int, kills: int, duration: float, workers: int = 2, db: str | None = None,
              workdir: Path | None = None, say=print) -> dict:  # fmt: skip
    """The kills mix alone (kept for tests/e2e/test_faults.py)."""
    args = parser().parse_args([])
    args.tasks, args.kills, args.duration, args.workers, args.db = tasks, kills, duration, workers, db
    return run_mixes(args, ["kills"], workdir, say)[0]


def run_mixes(args: argparse.Namespace, mixes: list[str], workdir: Path | None = None,
              say: Callable = print) -> list[dict]:  # fmt: skip
    owned = workdir is None and not args.keep
    workdir = Path(tempfile.mkdtemp(prefix="martinet-chaos-")) if workdir is None else workdir
    if args.keep:
        say(f"files in {workdir}")
    try:
        results = []
        for mix in mixes:
            results.append(RUNNERS[mix](args, workdir, say))
        return results
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)


COLUMNS = ("accepted", "completed", "lost", "duplicated", "dead", "stalled", "unfinished",
           "longest_gap", "longest_unplanned_gap")  # fmt: skip
HEADS = (
    "accepted",
    "completed",
    "lost",
    "run twice",
    "dead",
    "stalled",
    "unfinished",
    "gap s",
    "unplanned s",
)


def summary(results: list[dict]) -> list[str]:
    widths = [max(len(h), 6) for h in HEADS]
    lines = ["mix      " + " ".join(h.rjust(w) for h, w in zip(HEADS, widths, strict=True)) + "  verdict"]
    for r in results:
        cells = [str(r.get(c) if r.get(c) is not None else "-") for c in COLUMNS]
        verdict = "ok" if not r["failures"] else "FAIL: " + "; ".join(r["failures"])
        lines.append(f"{r['mix']:<8} " + " ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
                     + f"  {verdict}")  # fmt: skip
    totals = [sum(r[c] for r in results) for c in COLUMNS[:7]]
    totals += [max((r[c] or 0) for r in results) for c in COLUMNS[7:]]
    failed = sum(1 for r in results if r["failures"])
    lines.append("total    " + " ".join(str(round(c, 2)).rjust(w) for c, w in zip(totals, widths, strict=True))
                 + f"  {'ok' if not failed else f'{failed} of {len(results)} mixes failed'}")  # fmt: skip
    return lines


def details(result: dict) -> list[str]:
    """The daemons mix's own figures, below the table."""
    if "failover" not in result:
        return []
    schedule, fail, causes = result["schedule"], result["failover"], result["duplicated_by_cause"]

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return [
        f"{result['mix']}: {result['daemons']} daemons; faults {result['faults']}",
        f"  run twice: {result['duplicated']} tasks ({', '.join(f'{n} {c}' for c, n in causes.items()) or 'none'})",
        f"  schedule: {schedule['due_times']} due times, runs per due time {schedule['runs_per_due_time']},"
        f" ran twice {len(schedule['ran_twice'])}, skipped {schedule['skipped_due_times']}",
        f"  failover over {fail['client_call']['n']} kills, p50/p99: longest client call"
        f" {seconds(fail['client_call']['p50'])}/{seconds(fail['client_call']['p99'])} s; kill to first start"
        f" {seconds(fail['first_start']['p50'])}/{seconds(fail['first_start']['p99'])} s",
    ]


def main() -> int:
    p = parser()
    args = p.parse_args()
    mixes = [m for m in MIXES if m in (args.mix or (("daemons",) if args.daemons else DEFAULT_MIXES))]
    if "daemons" in mixes and daemons_problem(args):
        p.error(daemons_problem(args))

    def interrupted(signum, frame):
        raise KeyboardInterrupt  # stop like Ctrl-C: every process and file cleaned up

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started where SIGINT was ignored
    try:
        results = run_mixes(args, mixes)
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    for line in [*summary(results), *(line for r in results for line in details(r))]:
        print(line)
    if args.json:
        for r in results:
            print(json.dumps(r))
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
