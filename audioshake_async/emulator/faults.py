"""Seeded fault decisions and the token-bucket rate limiter.

Every decision draws from one ``random.Random`` so a given seed and request sequence
reproduces the same faults. Nothing here touches the network: the HTTP layers ask
"should this request fail?" and then serve the fault themselves.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from .config import EmulatorConfig
from .state import Stats


class TokenBucket:
    """Classic token bucket; rate and capacity are read on every call so they can change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: float | None = None
        self._stamp = clock()

    def try_acquire(self, rate: float, capacity: float) -> bool:
        """Take one token if available; ``False`` means the request is over the limit."""
        now = self._clock()
        if self._tokens is None:
            self._tokens = capacity
        self._tokens = min(capacity, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FaultInjector:
    """Decides which requests get which fault, and counts every fault served."""

    def __init__(
        self,
        stats: Stats,
        rng: random.Random,
        burst: int = 0,
        clock: Callable[[], float] = time.monotonic,
        drops_after_create: int = 0,
    ) -> None:
        self._stats = stats
        self.rng = rng
        self.bucket = TokenBucket(clock)
        self.burst_remaining = burst
        self.drops_after_create_remaining = drops_after_create

    def arm_burst(self, count: int) -> None:
        """Make the next ``count`` API requests answer 429."""
        self.burst_remaining = count

    def arm_drops_after_create(self, count: int) -> None:
        """Make the next ``count`` task creations drop their connection."""
        self.drops_after_create_remaining = count

    def drop_after_create(self, cfg: EmulatorConfig) -> bool:
        """Whether this just-created task's answer is dropped (counter first, then the rate)."""
        if self.drops_after_create_remaining > 0:
            self.drops_after_create_remaining -= 1
        elif not self.roll(cfg.drop_after_create_rate):
            return False
        self.record("drop_after_create")
        return True

    def roll(self, rate: float) -> bool:
        """Seeded coin flip with probability ``rate``; no draw at all when the rate is 0."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.rng.random() < rate

    def uniform(self, upper: float) -> float:
        """Seeded uniform draw in ``[0, upper]`` (0 without drawing when ``upper`` is 0)."""
        return self.rng.uniform(0.0, upper) if upper > 0 else 0.0

    @staticmethod
    def applies_to(cfg: EmulatorConfig, route: str) -> bool:
        """Whether request-level faults (fail/drop/latency) target ``route``."""
        routes = cfg.fault_routes
        return routes is None or route in routes

    def record(self, kind: str) -> None:
        """Count one served fault."""
        self._stats.fault(kind)

    def rate_limited(self, cfg: EmulatorConfig) -> bool:
        """Whether this API request must answer 429 (burst knob first, then the bucket)."""
        if self.burst_remaining > 0:
            self.burst_remaining -= 1
            self.record("rate_limit_burst")
            return True
        if cfg.rate_limit is None:
            return False
        capacity = cfg.rate_limit_capacity or cfg.rate_limit
        if self.bucket.try_acquire(cfg.rate_limit, max(1.0, capacity)):
            return False
        self.record("rate_limited")
        return True

    def fail_status(self, cfg: EmulatorConfig) -> int:
        """Pick the 5xx status of a ``fail_rate`` fault."""
        return self.rng.choice(cfg.fail_statuses)
