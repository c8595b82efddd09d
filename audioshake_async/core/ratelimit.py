"""A client-side rate limiter shared by every request of one client.

GCRA (the virtual-scheduling form of a token bucket): each request reserves the next free slot,
so waiters are served in arrival order without a lock or a background task, and a thousand
concurrent waits cost nothing but their sleeps. The reservation maths is pure and tested with a
fake clock; only :meth:`RateLimiter.acquire` sleeps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allow ``rate`` requests per second on average, with bursts of up to ``burst``.

    ``burst`` defaults to a tenth of a second's worth of requests, so even a server counting in
    fixed one-second windows sees little more than ``rate`` per window.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst) if burst is not None else self.rate / 10.0)
        self._interval = 1.0 / self.rate
        self._tolerance = (self.burst - 1.0) * self._interval
        self._clock = clock
        self._theoretical_arrival = -math.inf

    def reserve(self, now: float | None = None) -> float:
        """Reserve one slot; return the seconds to wait before using it (0 when free now)."""
        current = self._clock() if now is None else now
        tat = max(self._theoretical_arrival, current)
        self._theoretical_arrival = tat + self._interval
        return max(0.0, tat - self._tolerance - current)

    def pause_until(self, seconds_from_now: float, now: float | None = None) -> None:
        """Hold every later request for a while, e.g. after the server answered 429."""
        current = self._clock() if now is None else now
        resume = current + max(0.0, seconds_from_now) + self._tolerance
        self._theoretical_arrival = max(self._theoretical_arrival, resume)

    async def acquire(self) -> None:
        """Wait for a slot."""
        wait = self.reserve()
        if wait > 0:
            await anyio.sleep(wait)
