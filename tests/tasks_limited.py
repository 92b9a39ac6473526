"""A task name with a fleet-wide limit, declared where it is written."""

import time

import martinet


@martinet.task("capped", concurrency=1)
def capped(task, log, seconds=0.05):
    start = time.time()
    time.sleep(seconds)
    with open(log, "a") as fh:
        fh.write(f"{start} {time.time()}\n")
    return start
