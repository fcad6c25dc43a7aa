"""ALICE_RATE_LIMIT: each key's budget of requests that change something, as a token bucket.

A key may spend a whole period's budget at once (a burst of 60 is fine for 60/minute) and gets
it back steadily; counted in this process's memory, so each replica counts its own.
"""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """`budget`: (requests, per seconds), or None for no limit."""

    def __init__(self, budget: tuple[int, float] | None) -> None:
        self.burst = float(budget[0]) if budget else 0.0
        self.per_second = budget[0] / budget[1] if budget else 0.0
        self._buckets: dict[str, tuple[float, float]] = {}  # key name: (requests left, when counted)
        self._lock = threading.Lock()

    def wait_s(self, name: str) -> int:
        """Spend one request of `name`'s budget: 0 if one was left, else the whole seconds until one is."""
        if not self.per_second:
            return 0
        now = time.monotonic()
        with self._lock:
            left, then = self._buckets.get(name, (self.burst, now))
            left = min(self.burst, left + (now - then) * self.per_second)
            if left >= 1:
                self._buckets[name] = (left - 1, now)
                return 0
            self._buckets[name] = (left, now)
        return max(1, math.ceil((1 - left) / self.per_second))
