"""Handlers the benchmark's workers run."""

import time

import martinet


@martinet.task("bench.noop")
def noop(task, **args):
    return None


@martinet.task("bench.clock")
def clock(task, **args):
    """When the handler started: lateness is this minus the task's due time."""
    return time.time()
