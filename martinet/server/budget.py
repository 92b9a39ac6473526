"""How many messages a second one connection may send to one of the daemon's sockets (pure).

A token bucket per connection: `rate` a second, up to a second's worth at once. A peer
over it (a stranger who was let in, a client in a tight loop, a runaway handler's
progress) is refused, so that it cannot take the loop from the others: a request is
told why, what else it sent is dropped (an outcome is sent again until acknowledged).
"""

from __future__ import annotations

IDLE = 10.0  # seconds after which a full bucket of a silent connection is forgotten


class Budgets:
    def __init__(self, rate: int) -> None:
        self.rate = float(rate)  # 0: no limit
        self._buckets: dict[tuple[str, bytes], list[float]] = {}  # (socket, ident) -> [tokens, at]

    def allow(self, sock_name: str, ident: bytes, now: float) -> bool:
        """Whether one more message from this connection fits its budget (and take it)."""
        if not self.rate:
            return True
        bucket = self._buckets.get((sock_name, ident))
        if bucket is None:
            self._buckets[(sock_name, ident)] = [self.rate - 1, now]
            return True
        tokens = min(self.rate, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True

    def forget(self, now: float) -> None:
        """Drop the buckets of connections silent long enough to be full again (each tick)."""
        gone = [key for key, (_tokens, at) in self._buckets.items() if now - at > IDLE]
        for key in gone:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
