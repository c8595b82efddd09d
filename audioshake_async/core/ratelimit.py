"""Client-side rate limiting: the :class:`Limiter` seam and the in-process :class:`RateLimiter`.

A client's transport needs only two things from a limiter (:class:`Limiter`): ``acquire()``
before every API request and ``pause_until(seconds)`` when the server answered 429. The
in-process limiter below serves one client; ``core.ratelimit_pg.PostgresRateLimiter`` shares
one budget between processes and machines.

GCRA (the virtual-scheduling form of a token bucket): each request reserves the next free slot,
so waiters are served in arrival order without a lock or a background task, and a thousand
concurrent waits cost nothing but their sleeps. The reservation maths is pure and tested with a
fake clock; only :meth:`RateLimiter.acquire` sleeps.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Limiter", "RateLimiter", "Slot", "SlotBook", "limiter_for"]

#: A slot granted this little before a pause's end still counts (the pause reached this worker
#: a network delay after the database set it).
_PAUSE_SLACK = 0.02


@runtime_checkable
class Limiter(Protocol):
    """What a client's transport calls: pass one as ``rate_limit=`` to any client.

    A limiter passed to a client stays its caller's: the client never closes it, so one
    limiter may serve several clients (and, for a shared implementation, several processes).
    """

    async def acquire(self) -> None:
        """Wait until one more API request may be sent."""
        ...

    def pause_until(self, seconds_from_now: float) -> None:
        """Hold every later request back for ``seconds_from_now`` (the server answered 429).

        Called from the request path: it must not block or raise.
        """
        ...


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


#: A granted slot: (deadline, soonest). The deadline is when this process may use it (its
#: database moment, counted from when the answer arrived: never early); soonest is the same
#: moment counted from when the question left, so the slot's true moment lies between the two.
Slot = tuple[float, float]


def limiter_for(rate_limit: float | Limiter | None) -> Limiter | None:
    """A client's limiter: a number builds its own; a :class:`Limiter` object is shared and
    stays its caller's (never closed by the client); None or 0: no limit."""
    if isinstance(rate_limit, Limiter):
        return rate_limit
    return RateLimiter(rate_limit) if rate_limit else None


def limiter_rate(limiter: object) -> float | None:
    """The requests/s a client's limiter allows (its ``rate``), None when unlimited or unknown."""
    rate = getattr(limiter, "rate", None)
    return float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None


def limiter_share(limiter: object) -> float:
    """The fraction of its ``rate`` this process may plan on: a shared limiter's ``share``
    (one of several processes on one account's budget), else 1."""
    share = getattr(limiter, "share", None)
    if isinstance(share, int | float) and not isinstance(share, bool) and 0 < share <= 1:
        return float(share)
    return 1.0


class SlotBook:
    """The slots a shared budget granted this process, as local monotonic times, and its view
    of the pause (used by ``core.ratelimit_pg.PostgresRateLimiter``).

    Pure bookkeeping (no I/O, no clock of its own): the limiter feeds it the database's answers
    and the local time, so the maths is tested with a fake clock. A slot is used only within
    ``jitter`` of its soonest moment: so every request leaves between 0 and ``jitter`` after
    its slot's true moment, whatever the round trip or the process's stalls.
    """

    def __init__(self, interval: float, jitter: float) -> None:
        self.interval = interval
        self.jitter = jitter
        self.slots: list[Slot] = []
        self.paused_until = -math.inf
        self.granted = 0
        self.wasted = 0

    def add_block(
        self,
        sent_at: float,
        received_at: float,
        next_offset: float,
        pause_offset: float,
        count: int,
    ) -> list[Slot]:
        """Record ``count`` slots ending ``next_offset`` seconds after the database's now (a
        moment between ``sent_at`` and ``received_at`` here); return them."""
        start = next_offset - count * self.interval
        block = [
            (received_at + start + j * self.interval, sent_at + start + j * self.interval)
            for j in range(count)
        ]
        self.granted += count
        if pause_offset > 0:
            self.pause(received_at, pause_offset)
        for slot in block:
            bisect.insort(self.slots, slot)
        return block

    def pause(self, now: float, seconds: float) -> None:
        """Hold back until ``now + seconds``; granted slots inside the pause are void."""
        self.paused_until = max(self.paused_until, now + max(0.0, seconds))
        kept = [s for s in self.slots if self.valid(s)]
        self.wasted += len(self.slots) - len(kept)
        self.slots = kept

    def valid(self, slot: Slot) -> bool:
        """Whether a slot is outside the pause."""
        return slot[0] >= self.paused_until - _PAUSE_SLACK

    def usable(self, slot: Slot, now: float, slow_link: bool = False) -> bool:
        """Whether a request may leave on ``slot`` at ``now`` (at or after its deadline).

        ``slow_link``: every recent round trip took longer than ``jitter / 2``, so no slot can
        be placed that well; then only this process's own delay is bounded (by half of
        ``jitter``), rather than sending nothing.
        """
        if not self.valid(slot):
            return False
        deadline, soonest = slot
        if now - soonest <= self.jitter:
            return True
        return slow_link and now - deadline <= self.jitter / 2

    def take(self, now: float, slow_link: bool = False) -> Slot | None:
        """The earliest slot still usable at its deadline, or None (a reservation is needed)."""
        while self.slots:
            slot = self.slots.pop(0)
            if self.usable(slot, max(now, slot[0]), slow_link):
                return slot
            self.wasted += 1
        return None

    def give_back(self, slot: Slot, now: float, slow_link: bool = False) -> None:
        """A slot whose request was cancelled before it was sent: the next request takes it."""
        if self.usable(slot, max(now, slot[0]), slow_link):
            bisect.insort(self.slots, slot)
        else:
            self.wasted += 1
