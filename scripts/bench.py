"""Benchmarks: real daemon and worker processes on 127.0.0.1, durable tasks only.

    python scripts/bench.py                 # every scenario, 3 repeats each
    python scripts/bench.py timers --repeat 5
    python scripts/bench.py scale --pending 1000000 --schedules 10000

Prints a table (median, min, max over the repeats) and one JSON line per
scenario, so runs can be compared. Scenarios:

  throughput  N no-op tasks from 4 client threads, 2 workers: submit and drain rates
  shaping     the same over two weighted queues, one with a concurrency cap: what limits cost
  timers      1,000 delayed tasks due at random times 2-12 s ahead: lateness of
              the handler start against the due time, p50/p99/max (ms)
  scale       the same timers with PENDING delayed tasks (hours ahead) and SCHEDULES
              schedules in the database: daemon peak RSS, start to first dispatch,
              and lateness
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import martinet  # noqa: E402
from martinet.store import open_database  # noqa: E402

WORKER_MAIN = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Rig:
    """A daemon and workers on a fresh SQLite file; stops everything it started."""

    def __init__(self, workdir: Path, workers: int = 2, concurrency: int = 8) -> None:
        self.dir = workdir
        self.db = f"sqlite:///{workdir / 'bench.db'}"
        self.ports = free_ports(3)
        self.n_workers, self.concurrency = workers, concurrency
        self.daemon: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}",
            "MARTINET_LOG_LEVEL": "WARNING",
        }
        self.log = open(workdir / "processes.log", "ab")  # noqa: SIM115

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.ports[0]}"

    def start_daemon(self) -> float:
        started = time.time()
        flags = ["--client-port", str(self.ports[0]), "--worker-port", str(self.ports[1]),
                 "--status-port", str(self.ports[2])]  # fmt: skip
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "martinet", "serve", "--db", self.db, *flags],
            stdout=self.log, stderr=self.log, env=self.env,
        )  # fmt: skip
        return started

    def start_workers(self) -> None:
        for i in range(self.n_workers):
            args = [sys.executable, "-c", WORKER_MAIN, "bench_tasks", "--worker-id", f"bench-{i}",
                    "--concurrency", str(self.concurrency), "--worker-port", str(self.ports[1]),
                    "--status-port", str(self.ports[2])]  # fmt: skip
            self.workers.append(subprocess.Popen(args, stdout=self.log, stderr=self.log, env=self.env))

    def client(self) -> martinet.Martinet:
        return martinet.Martinet.connect(self.url, timeout=60)

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


def wait_drained(m: martinet.Martinet, n: int, timeout: float = 300.0) -> float:
    """When the n-th task's result is committed (polled every 10 ms), as perf_counter time."""
    deadline = time.monotonic() + timeout
    while sum(q["counts"].get("succeeded", 0) for q in m.queues()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the tasks did not drain in time")
        time.sleep(0.01)
    return time.perf_counter()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}


def measure_timers(m: martinet.Martinet, n: int = 1000, spread: tuple[float, float] = (2.0, 12.0)) -> dict:
    rng = random.Random(7)
    now = time.time()
    ids = [
        m.schedule(datetime.fromtimestamp(now + rng.uniform(*spread), UTC), "bench.clock", {})
        for _ in range(n)
    ]
    lateness = []
    for tid in ids:
        started = m.wait(tid, timeout=60)
        lateness.append((started - datetime.fromisoformat(m.get(tid)["run_at"]).timestamp()) * 1000)
    return {f"late_{k}_ms": round(v, 2) for k, v in percentiles(lateness).items()}


# ---- scenarios ------------------------------------------------------------------


def scenario_throughput(args, shaped: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp))
        try:
            rig.start_daemon()
            rig.start_workers()
            m = rig.client()
            rig.wait_ready(m)
            n, ids, lock = args.tasks, [], threading.Lock()

            if shaped:  # two weighted queues, one with a concurrency cap: the cost of the limits
                m.set_queue("bulk", weight=1)
                m.set_queue("urgent", weight=3, concurrency=12)
            queues = ["bulk", "urgent"] if shaped else ["default"]

            def submit(count: int) -> None:
                mine = [m.execute("bench.noop", queue=queues[i % len(queues)]) for i in range(count)]
                with lock:
                    ids.extend(mine)

            start = time.perf_counter()
            threads = [threading.Thread(target=submit, args=(n // 4,)) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            submitted = time.perf_counter()
            drained = wait_drained(m, len(ids))
            m.close()
            return {
                "submit_per_s": round(len(ids) / (submitted - start)),
                "drain_per_s": round(len(ids) / (drained - start)),
            }
        finally:
            rig.stop()


def scenario_timers(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp))
        try:
            rig.start_daemon()
            rig.start_workers()
            m = rig.client()
            rig.wait_ready(m)
            result = measure_timers(m, args.timers)
            m.close()
            return result
        finally:
            rig.stop()


def fill(db_url: str, pending: int, schedules: int, due_now: int) -> None:
    """Bulk-insert far-future delayed tasks, schedules, and a few tasks due at once."""
    db = open_database(db_url)
    now = time.time()
    cur = db.cursor()
    cols = (
        "name,args,queue,priority,status,run_at,attempt,max_attempts,created_at,updated_at,cancel_requested"
    )
    rng = random.Random(3)
    batch = 50_000
    with db.atomic():
        for start in range(0, pending, batch):
            rows = [("bench.clock", "{}", "default", 0, "scheduled", now + 3600 + rng.uniform(0, 86400 * 30),
                     0, 3, now, now, 0) for _ in range(min(batch, pending - start))]  # fmt: skip
            cur.executemany(f"INSERT INTO task ({cols}) VALUES ({','.join('?' * 11)})", rows)
        rows = [("bench.clock", "{}", "default", 0, "queued", now, 0, 3, now, now, 0) for _ in range(due_now)]
        cur.executemany(f"INSERT INTO task ({cols}) VALUES ({','.join('?' * 11)})", rows)
        scols = "name,args,queue,priority,kind,spec,timezone,misfire,next_due,status,created_at,updated_at"
        rows = [("bench.noop", "{}", "default", 0, "interval", "86400", "UTC", "once", now + 3600 + i, "active", now, now)
                for i in range(schedules)]  # fmt: skip
        cur.executemany(f"INSERT INTO schedule ({scols}) VALUES ({','.join('?' * 12)})", rows)
    db.close()


def scenario_scale(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp))
        try:
            built = time.perf_counter()
            fill(rig.db, args.pending, args.schedules, due_now=10)
            build_s = time.perf_counter() - built
            rig.start_workers()  # they wait for the daemon, reconnecting
            started = rig.start_daemon()
            m = rig.client()
            rig.wait_ready(m)
            first = min(
                m.wait(t["id"], timeout=60)
                for t in m.list(status=["queued", "running", "succeeded"], limit=10)
            )
            result = {"build_s": round(build_s, 1), "start_to_first_dispatch_s": round(first - started, 3)}
            result.update(measure_timers(m, args.timers))
            result["peak_rss_mb"] = round(rig.peak_rss_mb(), 1)
            m.close()
            return result
        finally:
            rig.stop()


def scenario_shaping(args) -> dict:
    return scenario_throughput(args, shaped=True)


SCENARIOS = {
    "throughput": scenario_throughput,
    "shaping": scenario_shaping,
    "timers": scenario_timers,
    "scale": scenario_scale,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", help=f"some of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000, help="throughput: tasks (default 20000)")
    parser.add_argument("--timers", type=int, default=1000, help="timers/scale: delayed tasks (default 1000)")
    parser.add_argument("--pending", type=int, default=1_000_000, help="scale: pending delayed tasks")
    parser.add_argument("--schedules", type=int, default=10_000, help="scale: schedules")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    for name in args.scenarios or list(SCENARIOS):
        runs = [SCENARIOS[name](args) for _ in range(args.repeat)]
        summary = {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                       "max": max(r[k] for r in runs)} for k in runs[0]}  # fmt: skip
        print(f"\n{name} ({args.repeat} runs)")
        for key, s in summary.items():
            print(f"  {key:<28} median {s['median']:>12,}   min {s['min']:>12,}   max {s['max']:>12,}")
        print(json.dumps({"scenario": name, "repeat": args.repeat, "results": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
