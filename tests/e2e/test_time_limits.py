"""A worker that never answers cannot hold tasks for ever: the daemon enforces each task's
time limit itself (plus time_limit_grace), and a hello readopts no more than the worker's
capacity. Real daemon; the bad workers are raw DEALER sockets speaking the protocol by hand."""

from __future__ import annotations

import threading
import time

import zmq

from martinet import protocol
from martinet.protocol import Cmd
from tests.harness import wait_for

FAST = {"MARTINET_HEARTBEAT_INTERVAL": "0.2", "MARTINET_TIME_LIMIT_GRACE": "0.5"}


class SilentWorker:
    """Says hello, takes tasks, heartbeats every 0.1 s and never answers: a worker stuck
    with a live main loop (or one that lies). Tasks sent once its slots are full it
    refuses ("no free slot"), as a real worker whose threads are stuck does."""

    def __init__(self, cluster, worker_id: str = "silent", capacity: int = 1) -> None:
        self.hello = {
            "worker_id": worker_id, "names": ["add"], "capacity": capacity, "threads": capacity,
            "version": protocol.VERSION, "running": [],
        }  # fmt: skip
        self.port = cluster.worker_port
        self.tasks: dict[int, float] = {}  # task id -> when it came (monotonic)
        self.cancels: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        try:
            sock.send_multipart(protocol.encode(Cmd.HELLO, self.hello))
            while not self._stop.is_set():
                if sock.poll(100):
                    cmd, h = protocol.decode(sock.recv_multipart())
                    if cmd is Cmd.TASK:
                        for task in h["tasks"]:
                            if len(self.tasks) < self.hello["capacity"]:  # stuck: slots never free
                                self.tasks[task["id"]] = time.monotonic()
                            else:
                                refusal = {**task, "reason": "no free slot"}
                                sock.send_multipart(protocol.encode(Cmd.REJECT, refusal))
                    elif cmd is Cmd.CANCEL:
                        self.cancels.setdefault(h["id"], time.monotonic())  # noted; it stays stuck
                sock.send_multipart(protocol.encode(Cmd.HEARTBEAT, {}))
        finally:
            sock.close()
            ctx.term()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_task_held_by_a_worker_that_never_answers_times_out_and_runs_elsewhere(any_cluster):
    # Given a worker that takes a task with a time limit of 0.5 s, heartbeats, and never answers
    any_cluster.start_daemon(env=FAST)
    silent = SilentWorker(any_cluster)
    try:
        wait_for(lambda: any_cluster.workers_connected() == 1, timeout=10, what="the silent worker")
        m = any_cluster.client()
        tid = m.execute({"name": "add", "timeout": 0.5, "retry_base": 0.01}, {"a": 2, "b": 3})
        wait_for(lambda: tid in silent.tasks, timeout=10, what="the task to reach the silent worker")
        # Then, however many heartbeats come, the daemon ends the attempt as timed out within
        # its time limit, the grace and a tick (0.5 + 0.5 + 0.2 s; and slack for a busy machine),
        # and tells the worker to stop it
        wait_for(lambda: tid in silent.cancels, timeout=10, what="a CANCEL for the overdue task")
        waited = silent.cancels[tid] - silent.tasks[tid]
        assert 1.0 <= waited <= 1.2 + 2.0, waited
        first = m.show(tid)["attempts"][0]
        assert (first["attempt"], first["outcome"], first["worker"]) == (1, "failed", "silent")
        assert first["error"]["type"] == "TaskTimeout"
        assert "time limit of 0.5s" in first["error"]["message"]
        # When a healthy worker comes, the task runs there and succeeds
        any_cluster.start_worker()
        assert m.wait(tid, timeout=15) == 5
        attempts = m.show(tid)["attempts"]
        assert attempts[-1]["outcome"] == "succeeded" and attempts[-1]["worker"] != "silent"
        assert any_cluster.workers_connected() == 2  # the silent worker was never declared lost
    finally:
        silent.stop()


def test_tasks_waiting_in_a_prefetch_are_not_blamed_for_the_wait(cluster):
    # Given one worker thread with two tasks in its prefetch, each task shorter than its
    # limit but the three together far longer than the limit and the grace
    cluster.start_daemon(env={**FAST, "MARTINET_TIME_LIMIT_GRACE": "0.3"})
    cluster.start_worker(concurrency=1, extra=["--prefetch", "2"])
    m = cluster.client()
    spec = {"name": "sleepy", "timeout": 1.2, "max_attempts": 1}
    ids = [m.execute(spec, {"seconds": 0.8}) for _ in range(3)]
    # Then each one's limit counts from when the thread took it: all three succeed
    assert [m.wait(t, timeout=15) for t in ids] == ["slept"] * 3
    assert [len(m.show(t)["attempts"]) for t in ids] == [1, 1, 1]


def test_a_hello_claiming_more_than_its_capacity_readopts_no_more_than_that(cluster):
    # Given a worker that took five tasks
    cluster.start_daemon(env={"MARTINET_RETRY_BASE": "600"})  # lost ones wait: nobody takes them
    m = cluster.client()
    ids = [m.execute("add", {"a": i, "b": 0}) for i in range(5)]
    holder = SilentWorker(cluster, worker_id="liar", capacity=5)
    wait_for(lambda: len(holder.tasks) == 5, timeout=10, what="five tasks on the worker")
    holder.stop()
    # When it comes back on a new connection with room for two (one thread, one prefetched),
    # saying it runs those five and a thousand more
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://127.0.0.1:{cluster.worker_port}")
        running = [{"id": i, "attempt": 1} for i in ids] + [
            {"id": 10_000 + i, "attempt": 1} for i in range(1000)
        ]
        hello = {**holder.hello, "capacity": 2, "threads": 1, "running": running}
        sock.send_multipart(protocol.encode(Cmd.HELLO, hello))
        assert sock.poll(5000), "no welcome"
        assert protocol.decode(sock.recv_multipart())[0] is Cmd.WELCOME
        # Then it holds two of them; the other three end as lost, to run elsewhere
        items = [m.get(t) for t in ids]
        assert [(i["status"], i["worker"]) for i in items[:2]] == [("leased", "liar")] * 2  # never started
        assert [i["status"] for i in items[2:]] == ["failed"] * 3
        lost = m.show(ids[2])["attempts"][0]
        assert lost["outcome"] == "lost" and "beyond its capacity of 2" in lost["error"]["message"]
    finally:
        sock.close()
        ctx.term()
