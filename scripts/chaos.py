"""Fault injection at scale: tasks keep arriving while the daemon and workers are
killed (-9), restarted, and cut off without a goodbye. At the end, every accepted
task must have reached an end: nothing lost. Runs of a task beyond the first are
counted (delivery is at least once).

    python scripts/chaos.py --tasks 2000 --kills 6 --duration 30

Prints accepted, completed, lost (must be 0) and duplicated, and exits 1 if any
task was lost. Talks only to 127.0.0.1 and stops every process it started.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import martinet  # noqa: E402

WORKER_MAIN = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"
END_STATES = ("succeeded", "dead", "cancelled")
# Fast heartbeats and short leases, so the system heals within seconds of each fault.
FAST = {"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_LIVENESS": "3", "MARTINET_LEASE": "2"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Fleet:
    def __init__(self, workdir: Path, db: str, workers: int, say) -> None:
        self.dir, self.db, self.say = workdir, db, say
        self.ports = free_ports(3)
        self.url = f"tcp://127.0.0.1:{self.ports[0]}"
        self.env = {
            **os.environ,
            **FAST,
            "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}",
            "MARTINET_LOG_LEVEL": "WARNING",
            "MARTINET_STATE_DIR": str(workdir / "state"),  # a killed worker's successor takes its journal
        }
        self.log = open(workdir / "processes.log", "ab")  # noqa: SIM115
        self.daemon: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.n_workers = workers
        self.lock = threading.Lock()

    def start_daemon(self) -> None:
        flags = ["--client-port", str(self.ports[0]), "--worker-port", str(self.ports[1]),
                 "--status-port", str(self.ports[2])]  # fmt: skip
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "martinet", "serve", "--db", self.db, *flags],
            stdout=self.log, stderr=self.log, env=self.env,
        )  # fmt: skip

    def start_worker(self) -> subprocess.Popen:
        args = [sys.executable, "-c", WORKER_MAIN, "chaos_tasks", "--concurrency", "4",
                "--worker-port", str(self.ports[1]), "--status-port", str(self.ports[2])]  # fmt: skip
        proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=self.env)
        self.workers.append(proc)
        return proc

    def kill_daemon(self) -> None:
        self.daemon.kill()
        self.daemon.wait()
        time.sleep(random.uniform(0.1, 0.5))  # an outage: submissions fail and retry meanwhile
        self.start_daemon()

    def kill_worker(self) -> None:
        alive = [w for w in self.workers if w.poll() is None]
        victim = random.choice(alive)
        victim.kill()
        victim.wait()
        self.workers.remove(victim)
        self.start_worker()

    def cut_off_worker(self) -> None:
        """Freeze a worker (no goodbye, no heartbeats) long enough to be declared gone, then thaw it."""
        victim = random.choice([w for w in self.workers if w.poll() is None])
        victim.send_signal(signal.SIGSTOP)
        time.sleep(1.5)
        victim.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for p in [*self.workers, self.daemon]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in [*self.workers, self.daemon]:
            if p is None:
                continue
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()


def run_chaos(tasks: int, kills: int, duration: float, workers: int = 2, db: str | None = None,
              workdir: Path | None = None, say=print) -> dict:  # fmt: skip
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="martinet-chaos-")) if owned else workdir
    db = db or f"sqlite:///{workdir / 'chaos.db'}"
    runs_file = workdir / "runs.txt"
    fleet = Fleet(workdir, db, workers, say)
    accepted: dict[int, int] = {}  # submission index -> task id
    faults: list[str] = []
    try:
        fleet.start_daemon()
        for _ in range(workers):
            fleet.start_worker()
        client = martinet.Martinet.connect(fleet.url, timeout=30)
        client.ping()

        def submit() -> None:
            pace = duration * 0.7 / max(1, tasks)
            for i in range(tasks):
                while True:  # the same request id until accepted: never created twice
                    try:
                        accepted[i] = client.execute(
                            {"name": "chaos.work", "max_attempts": 20}, {"runs_file": str(runs_file)},
                            request_id=f"chaos-{i}",
                        )  # fmt: skip
                        break
                    except martinet.DaemonUnavailable:
                        continue
                time.sleep(pace)

        submitter = threading.Thread(target=submit)
        started = time.monotonic()
        submitter.start()
        actions = [fleet.kill_daemon, fleet.kill_worker, fleet.cut_off_worker]
        for k in range(kills):
            time.sleep(random.uniform(0.5, 1.5) * duration * 0.7 / max(1, kills))
            action = actions[k % len(actions)]
            action()
            faults.append(action.__name__)
            say(f"[{time.monotonic() - started:5.1f}s] fault {k + 1}/{kills}: {action.__name__}")
        submitter.join()
        say(
            f"[{time.monotonic() - started:5.1f}s] all {len(accepted)} tasks accepted; waiting for them to end"
        )
        deadline = time.monotonic() + max(60.0, duration)
        ids = sorted(accepted.values())
        unfinished = ids
        while unfinished and time.monotonic() < deadline:
            unfinished = [t for t in unfinished if client.get(t)["status"] not in END_STATES]
            if unfinished:
                time.sleep(0.2)
        statuses = collections.Counter(client.get(t)["status"] for t in ids)
        client.close()
    finally:
        fleet.stop()
    runs = (
        collections.Counter(int(line) for line in runs_file.read_text().split()) if runs_file.exists() else {}
    )
    result = {
        "accepted": len(accepted),
        "unique_ids": len(set(accepted.values())),
        "completed": statuses.get("succeeded", 0),
        "dead": statuses.get("dead", 0),
        "lost": sum(n for s, n in statuses.items() if s not in END_STATES),
        "never_ran": sum(1 for t in accepted.values() if t not in runs),
        "duplicated": sum(1 for n in runs.values() if n > 1),
        "extra_runs": sum(n - 1 for n in runs.values() if n > 1),
        "faults": dict(collections.Counter(faults)),
        "seconds": round(time.monotonic() - started, 1),
    }
    if owned:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument(
        "--kills", type=int, default=6, help="faults to inject (daemon kill -9, worker kill -9, cut-off)"
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds over which tasks arrive")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    result = run_chaos(args.tasks, args.kills, args.duration, args.workers, args.db)
    print(f"accepted {result['accepted']}, completed {result['completed']}, dead {result['dead']}, "
          f"lost {result['lost']}, duplicated {result['duplicated']} ({result['extra_runs']} extra runs)")  # fmt: skip
    print(json.dumps(result))
    return 1 if result["lost"] or result["never_ran"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
