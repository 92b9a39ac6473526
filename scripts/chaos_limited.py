"""The handlers of chaos.py's limited mix: task names with fleet-wide limits, served
together with a name without any, so that one worker serves several names at once.

Each run appends "id start end" (wall-clock seconds) when it ends, so that the
script can check the limits held where the handlers ran."""

import os
import random
import time

import martinet


def _run(task, runs_file, pause):
    start = time.time()
    time.sleep(random.uniform(0, pause))
    fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task.id} {start:.6f} {time.time():.6f}\n".encode())  # atomic between processes
    finally:
        os.close(fd)
    return task.id


@martinet.task("chaos.capped", concurrency=1)
def capped(task, runs_file, pause=0.03):
    return _run(task, runs_file, pause)


@martinet.task("chaos.rated", rate="5/s")
def rated(task, runs_file, pause=0.01):
    return _run(task, runs_file, pause)


@martinet.task("chaos.both", concurrency=2, rate="8/s")
def both(task, runs_file, pause=0.05):
    return _run(task, runs_file, pause)


@martinet.task("chaos.free")
def free(task, runs_file, pause=0.01):
    return _run(task, runs_file, pause)
