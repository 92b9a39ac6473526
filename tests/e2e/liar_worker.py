"""A worker that says it handles 'beta' but has no handler for it: it must refuse."""

import sys

from martinet.cli import worker_main
from martinet.worker import Worker

_hello = Worker._hello


def _lying_hello(self):
    self.handlers.setdefault("beta", None)  # advertised...
    _hello(self)
    del self.handlers["beta"]  # ...but not really there


Worker._hello = _lying_hello
sys.exit(worker_main())
