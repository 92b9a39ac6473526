"""The handler chaos.py runs: it records every run, so duplicates can be counted."""

import os
import random
import time

import martinet


@martinet.task("chaos.work")
def work(task, runs_file, pause=0.01, hold=0.0):
    fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task.id}\n".encode())  # one small append: atomic between processes
    finally:
        os.close(fd)
    time.sleep(hold + random.uniform(0, pause))
    return task.id
