"""Retry backoff: exponential with full jitter (pure)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from martinet.config import Settings


@dataclass(frozen=True)
class RetryPolicy:
    base: float = Settings.retry_base
    factor: float = Settings.retry_factor
    cap: float = Settings.retry_cap

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        Full jitter (a uniform draw below the exponential ceiling) spreads
        retries of many tasks that failed together, so they do not return
        as one thundering herd.
        """
        try:
            ceiling = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        except OverflowError:  # factor ** attempt beyond a float (factor 3, attempt 700): capped
            ceiling = self.cap
        return (rand or random).uniform(0, ceiling)
