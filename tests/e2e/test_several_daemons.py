"""Two `martinet serve` processes on one PostgreSQL (on 127.0.0.1 and 127.0.0.2, the same
ports), two workers and a client given both: one daemon is killed -9 while tasks are
submitted and run. Every task the client was told is accepted succeeds, once."""

from __future__ import annotations

import sys

import pytest

import martinet
from tests import backends
from tests.harness import START_TIMEOUT, WORKER_MAIN, Proc, free_ports, wait_for

TASKS = 120


@pytest.fixture
def pg_url() -> str:
    url = backends.check("postgresql")
    backends.reset(url)
    return url


def test_a_daemon_killed_under_load_loses_nothing_another_serves(pg_url, tmp_path):
    client_port, worker_port, status_port = free_ports(3)
    ports = [
        "--client-port",
        str(client_port),
        "--worker-port",
        str(worker_port),
        "--status-port",
        str(status_port),
    ]
    state = {"MARTINET_STATE_DIR": str(tmp_path / "state")}
    procs: list[Proc] = []

    def start(args: list[str], name: str) -> Proc:
        procs.append(Proc(args, tmp_path / f"{len(procs):02d}-{name}.log", state))
        return procs[-1]

    serve = [sys.executable, "-m", "martinet", "serve", "--db", pg_url, *ports]
    first = start([*serve, "--bind", "127.0.0.1"], "daemon-a")
    urls = f"tcp://127.0.0.1:{client_port},tcp://127.0.0.2:{client_port}"
    m = martinet.Martinet.connect(urls, timeout=30)
    try:
        wait_for(lambda: _answers(m), START_TIMEOUT, "the first daemon to start")
        second = start([*serve, "--bind", "127.0.0.2"], "daemon-b")
        for i in range(2):
            start([sys.executable, "-c", WORKER_MAIN, "tests.tasks", "--connect", "127.0.0.1,127.0.0.2",
                   "--worker-port", str(worker_port), "--status-port", str(status_port),
                   "--concurrency", "2", "--worker-id", f"w{i}"], f"worker-{i}")  # fmt: skip
        wait_for(lambda: m.ping()["workers"] == 2, START_TIMEOUT, "the workers to say hello")
        ids = []
        starts = tmp_path / "starts.txt"  # a line a handler start (tests.tasks.sleepy)
        for i in range(TASKS):
            if i == TASKS // 3:
                first.kill9()  # its workers move to the second daemon; so does the client
            ids.append(m.execute("sleepy", {"seconds": 0.02, "marker": str(starts)}, request_id=f"load-{i}"))
        assert len(set(ids)) == TASKS
        assert all(m.wait(tid, timeout=60) == "slept" for tid in ids), [p.log()[-2000:] for p in procs]
        # Run twice: only a task whose worker was cut off mid-handler could be (none was). A
        # task the killed daemon had leased but not sent yet ends its first attempt lost,
        # unstarted, and runs in its second.
        started = [line.split(":")[0] for line in starts.read_text().split()]
        assert sorted(map(int, started)) == sorted(ids)
        for tid in ids:
            attempts = m.show(tid)["attempts"]
            assert [a["outcome"] for a in attempts if a["started_at"]] == ["succeeded"], attempts
        states = {d["id"]: d["state"] for d in m.daemons()}
        assert sorted(states.values()) == ["serving", "silent"]
        assert second.alive()
    finally:
        m.close()
        for proc in procs:
            if proc.alive():
                proc.popen.kill()
            proc.popen.wait(10)


def _answers(m: martinet.Martinet) -> bool:
    try:
        m.ping()
    except martinet.DaemonUnavailable:
        return False
    return True
