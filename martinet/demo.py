"""`martinet demo`: a daemon and two workers on a fresh SQLite file, shown at work.

Imported by the demo's worker processes too: the handlers below are what they serve.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import martinet
from martinet.errors import MartinetError, TaskFailed

# ---- the handlers the demo's workers run ------------------------------------------


@martinet.task("demo.greet")
def greet(task, who):
    return f"hello, {who}"


@martinet.task("demo.crunch")
def crunch(task, steps=4):
    for i in range(1, steps + 1):
        time.sleep(0.2)
        task.progress(i / steps, f"crunched part {i} of {steps}")
    return {"parts": steps}


@martinet.task("demo.explode")
def explode(task):
    raise RuntimeError("the reactor is on fire")


@martinet.task("demo.remind")
def remind(task, text):
    return f"reminder: {text}"


@martinet.task("demo.tick")
def tick(task):
    return time.time()


@martinet.task("demo.noop")
def noop(task):
    return None


# ---- the show --------------------------------------------------------------------

WORKER_MAIN = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Show:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            print(f"[{time.monotonic() - self.t0:6.2f}s] {text}", flush=True)


def run_demo(n_tasks: int = 2000) -> int:
    show = Show()
    tmp = Path(tempfile.mkdtemp(prefix="martinet-demo-"))
    client_port, worker_port, status_port = _free_ports(3)
    db = f"sqlite:///{tmp / 'demo.db'}"
    ports = [
        "--client-port",
        str(client_port),
        "--worker-port",
        str(worker_port),
        "--status-port",
        str(status_port),
    ]
    procs: list[subprocess.Popen] = []
    log = open(tmp / "processes.log", "wb")  # noqa: SIM115 - closed in finally
    m = None
    try:
        show.say(f"starting martinet serve on {db}")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "martinet", "serve", "--db", db, *ports], stdout=log, stderr=log
            )
        )
        for i in (1, 2):
            # Its journal in the demo's directory, removed with it: never in the user's state folder.
            args = [sys.executable, "-c", WORKER_MAIN, "martinet.demo", "--worker-id", f"worker-{i}", "--concurrency", "4",
                    "--worker-port", str(worker_port), "--status-port", str(status_port), "--log-level", "WARNING",
                    "--journal", str(tmp / f"worker-{i}.journal")]  # fmt: skip
            procs.append(subprocess.Popen(args, stdout=log, stderr=log))
        m = martinet.Martinet.connect(f"tcp://127.0.0.1:{client_port}", timeout=20)
        deadline = time.monotonic() + 20
        while True:  # a client fails fast while nothing listens yet: ask until the daemon is up
            try:
                m.ping()
                break
            except martinet.DaemonUnavailable:
                if time.monotonic() > deadline:
                    raise MartinetError("the demo's daemon did not start within 20s") from None
                time.sleep(0.05)
        while m.ping()["workers"] < 2:
            if time.monotonic() > deadline:
                raise MartinetError("the demo's workers did not connect within 20s")
            time.sleep(0.05)
        show.say("daemon up, worker-1 and worker-2 connected")
        _tour(m, show)
        _throughput(m, show, n_tasks)
        return 0
    except MartinetError as exc:
        show.say(f"demo failed: {exc}")
        log.flush()
        print((tmp / "processes.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        return 1
    finally:
        if m is not None:
            m.close()
        for p in reversed(procs):  # workers first, then the daemon
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in reversed(procs):
            try:
                codes.append(p.wait(15))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        show.say(f"stopped the daemon and both workers (exit codes {codes[::-1]})")
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _tour(m: martinet.Martinet, show: Show) -> None:
    def on_event(e: dict) -> None:
        if e.get("name") == "demo.noop":
            return
        if e["event"] == "progress":
            show.say(f"task {e['id']} {e['name']}: {e['progress']:.0%} {e['message']}")
        elif e["event"] == "succeeded":
            show.say(f"task {e['id']} {e['name']} succeeded on attempt {e['attempt']}: {e['result']!r}")
        else:
            err = e.get("error") or {}
            retry = f", retry at {e['run_at']}" if e["event"] == "failed" else ""
            show.say(
                f"task {e['id']} {e['name']} attempt {e['attempt']} {e['event']}: {err.get('type')}: {err.get('message')}{retry}"
            )

    m.on_complete(on_event)
    m.on_error(on_event)
    m.on_progress(on_event)

    greets = [
        m.execute({"name": "demo.greet", "username": who}, {"who": who}) for who in ("ana", "bob", "eve")
    ]
    show.say(f"sent 3 immediate tasks {greets}")
    crunch = m.execute({"name": "demo.crunch", "description": "a task that reports progress"}, {"steps": 4})
    show.say(f"sent task {crunch} demo.crunch, which reports progress")
    boom = m.execute({"name": "demo.explode", "max_attempts": 2})
    show.say(f"sent task {boom} demo.explode, which fails (2 attempts)")
    later = m.schedule("in 3 seconds", "demo.remind", {"text": "stand up and stretch"})
    show.say(f"scheduled task {later} demo.remind for {m.get(later)['run_at']} ('in 3 seconds')")
    sid = m.every("2 seconds", "demo.tick", {})
    show.say(f"created schedule {sid}: demo.tick every 2 seconds, first at {m.get(sid)['next_due']}")

    for tid in [*greets, crunch]:
        m.wait(tid, timeout=20)
    try:
        m.wait(boom, timeout=20)
    except TaskFailed as exc:
        show.say(f"wait({boom}) raised TaskFailed: {exc}")
    m.wait(later, timeout=20)
    deadline = time.monotonic() + 20
    while len(m.list(name="demo.tick", status="succeeded")) < 3:
        if time.monotonic() > deadline:
            raise MartinetError("the recurring task did not run three times within 20s")
        time.sleep(0.1)
    m.revoke(sid)
    show.say(f"schedule {sid} ran 3 times and was removed")
    shown = m.show(boom)
    for a in shown["attempts"]:
        show.say(
            f"history of task {boom}: attempt {a['attempt']} on {a['worker']} {a['outcome']} ({a['error']['type']})"
        )


def _throughput(m: martinet.Martinet, show: Show, n: int) -> None:
    if n <= 0:
        return
    show.say(f"throughput: {n} no-op tasks from 4 client threads through 2 workers...")
    threads: list[threading.Thread] = []
    ids: list[int] = []
    per = n // 4
    start = time.monotonic()

    def submit(count: int) -> None:
        ids.extend(m.execute("demo.noop") for _ in range(count))

    for i in range(4):
        threads.append(threading.Thread(target=submit, args=(per + (n % 4 if i == 0 else 0),)))
        threads[-1].start()
    for t in threads:
        t.join()
    submitted = time.monotonic()
    deadline = submitted + 60
    while m.list(status=["queued", "leased", "running"], limit=1):  # until every result is committed
        if time.monotonic() > deadline:
            raise MartinetError("the throughput tasks did not finish within 60s")
        time.sleep(0.01)
    done = time.monotonic()
    show.say(
        f"throughput: {n} tasks accepted in {submitted - start:.2f}s ({n / (submitted - start):,.0f}/s), "
        f"all done in {done - start:.2f}s ({n / (done - start):,.0f} tasks/s end to end, every one committed)"
    )
