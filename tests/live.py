"""A daemon and workers inside the test's process: an embedded daemon (`Martinet(db=...)`,
its loop in a thread, on free ports) and `Worker`s in threads running tests/tasks.py's
handlers. The public API end to end, real sockets and real time, without starting a
process: for what a story needs handlers for; the daemon's decisions alone are tests/core.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import martinet
import tests.tasks  # noqa: F401  (registers the handlers)
import tests.tasks_compose  # noqa: F401
from martinet import cli
from martinet.registry import REGISTRY
from martinet.worker import Worker

HANDLERS = {name: fn for name, fn in REGISTRY.items() if name != "suicide"}  # it kills its process


class Live:
    def __init__(self, db_url: str, **settings: Any) -> None:
        settings = {"client_port": 0, "worker_port": 0, "status_port": 0, "log_level": "WARNING", **settings}
        self.m = martinet.Martinet(db=db_url, **settings)
        self.url = f"tcp://127.0.0.1:{self.m.ports['client']}"
        self.workers: list[tuple[Worker, threading.Thread]] = []
        self._clients: list[martinet.Martinet] = []

    def client(self, timeout: float = 10.0) -> martinet.Martinet:
        """Another handle on the daemon (its own socket, listener and hooks)."""
        self._clients.append(martinet.Martinet.connect(self.url, timeout=timeout))
        return self._clients[-1]

    def worker(self, concurrency: int = 2, wait: bool = True, **options: Any) -> Worker:
        """A Worker in a thread, serving tests/tasks.py's handlers unless given `handlers`;
        returned once its hello is in, unless not `wait`."""
        before = self.m.ping()["workers"]
        ports = {"worker_port": self.m.ports["worker"], "status_port": self.m.ports["status"]}
        options.setdefault("handlers", HANDLERS)
        worker = Worker(concurrency=concurrency, **ports, **options)
        thread = threading.Thread(target=worker.run, name=f"worker-{worker.worker_id}", daemon=True)
        thread.start()
        self.workers.append((worker, thread))
        deadline = time.monotonic() + 10
        while wait and self.m.ping()["workers"] <= before:
            assert time.monotonic() < deadline, "the worker's hello did not arrive within 10 s"
            time.sleep(0.005)
        return worker

    def close(self) -> None:
        for m in self._clients:
            m.close()
        for worker, _thread in self.workers:
            worker.options.grace = 0
            worker.stop()
        for _worker, thread in self.workers:
            thread.join(10)
        self.m.close()


class Cli:
    """`martinet ARGS` in process (cli.main), against `live`'s daemon as the environment points
    it; what it printed read with pytest's capsys."""

    def __init__(self, live, capsys, monkeypatch) -> None:
        self.live, self.capsys = live, capsys
        monkeypatch.setenv("MARTINET_URL", live.url)  # how most people point the CLI

    def run(self, *argv: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self.run(*argv)
        assert code == 0, err
        return out
