"""Handlers the end-to-end tests run in real worker processes."""

from __future__ import annotations

import os
import time

import martinet


@martinet.task("add")
def add(task, a, b):
    return a + b


@martinet.task("echo")
def echo(task, **args):
    return {"args": args, "attempt": task.attempt, "pid": os.getpid()}


@martinet.task("steps")
def steps(task, n=3):
    for i in range(1, n + 1):
        task.progress(i / n, f"step {i} of {n}")
        if i < n:
            time.sleep(0.05)  # lets each progress report go out on its own; the last goes with the result
    return n


@martinet.task("big")
def big(task, size):
    """Reports its progress, then returns a string of `size` characters."""
    task.progress(1.0, "made it")
    return "x" * size


@martinet.task("overrun")
def overrun(task, seconds=30.0):
    """Busy past its time limit; returns how long it ran when the limit stopped it."""
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            pass
    except martinet.TaskTimeout:
        return time.monotonic() - start
    return None


@martinet.task("boom")
def boom(task, message="kaboom"):
    raise ValueError(message)


@martinet.task("flaky")
def flaky(task, succeed_on=2):
    if task.attempt < succeed_on:
        raise RuntimeError(f"attempt {task.attempt} fails")
    return task.attempt


@martinet.task("sleepy")
def sleepy(task, seconds=1.0, marker=None):
    """Sleeps in small steps; writes `marker` when it starts so a test can await it."""
    if marker:
        with open(marker, "a") as fh:
            fh.write(f"{task.id}:{task.attempt}\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if task.cancelled:
            return "stopped"
        time.sleep(0.01)
    return "slept"


@martinet.task("not_json")
def not_json(task):
    return {1, 2, 3}


@martinet.task("too_deep")
def too_deep(task, depth, progress_depth=0):
    def nested(levels: int) -> object:
        value: object = 0
        for _ in range(levels):
            value = [value]
        return value

    if progress_depth:
        task.progress(nested(progress_depth), nested(progress_depth))  # sent as text: nothing nests
    return nested(depth)


@martinet.task("signals")
def signals(task, mode="fail"):
    if mode == "fail":
        raise martinet.Fail("no point retrying")
    if task.attempt == 1:
        raise martinet.Retry(in_=0.1)
    return task.attempt


@martinet.task("clock")
def clock(task, **args):
    """Returns when the handler started, to compare with the task's due time."""
    return time.time()


@martinet.task("spin")
def spin(task, seconds=30.0):
    """Busy Python code: a time limit interrupts it."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


@martinet.task("stuck")
def stuck(task, seconds=30.0):
    """Blocked in C code (sleep): a time limit cannot interrupt it, so it is abandoned."""
    time.sleep(seconds)
    return "woke"


@martinet.task("swallow")
def swallow(task, seconds=30.0):
    """Catches Exception broadly: the time limit still stops it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sum(range(1000))
        except Exception:  # noqa: BLE001
            pass
    return "finished"


@martinet.task("suicide")
def suicide(task):
    """Kills its own worker process, as a segfaulting extension would."""
    os.kill(os.getpid(), 9)


@martinet.task("parents")
def parents(task, **args):
    """Returns what the tasks it waited on returned."""
    return {str(k): v for k, v in sorted(task.parents.items())}


@martinet.task("picky")
def picky(task, marker, accept_on=3, delay=None):
    """Gives the task back until it has been started `accept_on` times (counted in `marker`)."""
    with open(marker, "a") as fh:
        fh.write("x")
    with open(marker) as fh:
        if len(fh.read()) < accept_on:
            raise martinet.Release("no GPU free", in_=delay)
    return "accepted"


@martinet.task("span")
def span(task, log, seconds=0.05):
    """Records when it ran (start and end), to check limits from inside the handlers."""
    start = time.time()
    time.sleep(seconds)
    with open(log, "a") as fh:
        fh.write(f"{start} {time.time()}\n")
    return start


@martinet.task("crawl")
def crawl(task, n=10, pause=0.2):
    """Reports its progress page by page, slowly enough to be watched (the dashboard's test)."""
    for i in range(1, n + 1):
        if task.cancelled:
            return "stopped"
        time.sleep(pause)
        task.progress(i / n, f"page {i} of {n}")
    return n
