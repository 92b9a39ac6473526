"""The daemon: moved to martinet.server (core, ops, loop); `Daemon` is the loop."""

from martinet.server.loop import Daemon
from martinet.server.outbox import Outbox

__all__ = ["Daemon", "Outbox"]
