"""A worker built with the original registration: `worker.on(name, fn)`, no decorator."""

import signal
import sys

import martinet


def double(task, x):
    return 2 * x


worker = martinet.Worker(worker_port=int(sys.argv[1]), status_port=int(sys.argv[2]), concurrency=1)
worker.on("double", double)
signal.signal(signal.SIGTERM, lambda *_: worker.stop())
worker.run()
