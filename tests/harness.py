"""Real processes on free ports: a daemon, workers, and clients that talk to them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import martinet

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0  # generous: a loaded CI machine imports slowly
WORKER_MAIN = "import sys; from martinet.cli import worker_main; sys.exit(worker_main())"


def _port_slice() -> range:
    """The ports this test process (and scripts/bench.py and chaos.py, which tests run)
    picks from: below the kernel's ephemeral range, where every outgoing connection (to a
    database, to a daemon) takes its local port, so that none can take one between the
    pick and the daemon's bind (seen: "the status port is already in use"); and a slice
    of their own for each xdist worker, so that tests running at once never pick the same."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low, 12_000)
    base = top - 10_000
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = 10_000 // 16
    start = base + (index % 16) * size
    return range(start, start + size)


_PORTS = _port_slice()
_next_port = (os.getpid() * 7) % len(_PORTS)  # (a test run after another starts elsewhere)


def free_ports(n: int) -> list[int]:
    """`n` ports on 127.0.0.1 that nothing listens on now (see _port_slice)."""
    global _next_port
    ports: list[int] = []
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port]
        _next_port = (_next_port + 1) % len(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or in TIME_WAIT from a test before
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports in {_PORTS}")


def _answers(m: martinet.Martinet) -> bool:
    try:
        return bool(m.ping())
    except martinet.DaemonUnavailable:
        return False


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Proc:
    def __init__(self, args: list[str], log_path: Path, env: dict | None = None) -> None:
        self.log_path = log_path
        self.args = args
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**_env(), **(env or {})}
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.alive():
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(f"{self.args[:4]} did not exit within {timeout}s of signal {sig}") from None

    def kill9(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for key in list(env):
        if key.startswith("MARTINET_") and not key.startswith("MARTINET_TEST"):
            del env[key]  # the test says what it wants, not the developer's shell
    return env


class Cluster:
    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp = tmp_path
        self.db_url = db_url
        self.client_port, self.worker_port, self.status_port = free_ports(3)
        self.daemon: Proc | None = None  # the latest started
        self.daemons: list[Proc] = []  # all of them (several daemons on one database)
        self.workers: list[Proc] = []
        self._clients: list[martinet.Martinet] = []
        self._n = 0
        # With keys: what the test's own clients connect with ({"key_file": ..., "server_key": ...}).
        self.keys: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.client_port}"

    def port_flags(self) -> list[str]:
        return [
            "--client-port", str(self.client_port),
            "--worker-port", str(self.worker_port),
            "--status-port", str(self.status_port),
        ]  # fmt: skip

    def _log(self, kind: str) -> Path:
        self._n += 1
        return self.tmp / f"{self._n:02d}-{kind}.log"

    def start_daemon(self, env: dict | None = None, wait: bool = True, extra: list[str] = ()) -> Proc:
        args = [sys.executable, "-m", "martinet", "serve", "--db", self.db_url, *self.port_flags(), *extra]
        proc = Proc(args, self._log("daemon"), env)
        self.daemons.append(proc)  # stopped at shutdown, even if it never answers
        if wait:
            probe = martinet.Martinet.connect(self.url, timeout=START_TIMEOUT, **self.keys)
            try:  # a fresh client fails fast while nothing listens on the port yet: ask again
                wait_for(lambda: _answers(probe), timeout=START_TIMEOUT, what="the daemon to start")
            except AssertionError:
                raise AssertionError("daemon did not start:\n" + proc.log()) from None
            finally:
                probe.close()
        self.daemon = proc
        return proc

    def client(self, timeout: float = 10.0, url: str | None = None, **keys: str) -> martinet.Martinet:
        """A client of the daemon (of those `url` lists, if given), closed at shutdown;
        with the cluster's keys, unless `keys` says others."""
        m = martinet.Martinet.connect(url or self.url, timeout=timeout, **(keys or self.keys))
        self._clients.append(m)
        return m

    def workers_connected(self) -> int:
        probe = martinet.Martinet.connect(self.url, timeout=5, **self.keys)
        try:
            return probe.ping()["workers"]
        finally:
            probe.close()

    def start_worker(
        self,
        *modules: str,
        concurrency: int = 2,
        worker_id: str | None = None,
        script: list[str] | None = None,
        wait: bool = True,
        extra: list[str] = (),
        env: dict | None = None,
    ) -> Proc:
        before = self.workers_connected() if wait else 0
        head = script or [sys.executable, "-c", WORKER_MAIN]
        args = [
            *head,
            *(modules or ["tests.tasks"]),
            "--worker-port", str(self.worker_port),
            "--status-port", str(self.status_port),
            "--concurrency", str(concurrency),
            *(["--worker-id", worker_id] if worker_id else []),
            *extra,
        ]  # fmt: skip
        # Default journals go under the test's directory, never the developer's home.
        proc = Proc(args, self._log("worker"), {"MARTINET_STATE_DIR": str(self.tmp / "state"), **(env or {})})
        self.workers.append(proc)
        if wait:
            wait_for(
                lambda: self.workers_connected() > before or not proc.alive(),
                START_TIMEOUT,
                "the worker to say hello",
            )
            assert proc.alive(), "worker exited:\n" + proc.log()
        return proc

    def shutdown(self) -> None:
        for m in self._clients:
            m.close()
        for w in self.workers:
            if w.alive():
                w.popen.kill()
            w.popen.wait(10)
        for daemon in self.daemons:
            if daemon.alive():
                try:
                    daemon.stop(timeout=10)
                except AssertionError:
                    pass
