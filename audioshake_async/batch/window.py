"""I/O-free flow control of a batch: how many tasks in flight, how often to poll, how many
uploads and creates at once. Callers pass the clock (``now``); nothing here sleeps, so every rule
is unit-tested with plain numbers.

- :class:`WindowEstimator`: Little's law. A catalog at the account's bound needs
  ``lambda x W`` tasks in flight, where ``lambda`` is the creation rate the request budget
  allows (``rate x create share / requests per item``) and ``W`` the time a task spends in
  flight (observed on completions; before any, the age of the oldest task in flight, a lower
  bound of the longest one). A too-large window costs little (in flight stays ``lambda x W``
  whatever the cap, by the same law); a too-small one leaves the budget unused, so the estimate
  leans high. A concurrency-limit signal (429 on create) shrinks it multiplicatively; it grows
  back additively (AIMD).
- :class:`PollBudget`: refreshes (list pages, single reads, webhook confirmations) spend at most
  ``share`` of the rate while creates are waiting, and the sweep interval follows: one sweep
  costs one request per page of tasks in flight, so the interval stretches with the window and
  shrinks when creating is done.
- :class:`ConcurrencyController`: uploads or creates at once, grown while there is demand and
  the latency stays near its best (the network and the budget have room), cut on congestion.
"""

from __future__ import annotations

import math

__all__ = [
    "DEFAULT_POLL_SHARE",
    "HARD_CEILING",
    "ConcurrencyController",
    "PollBudget",
    "WindowEstimator",
]

#: Tasks in flight at most when no ``max_in_flight`` is given: 20,000 items of engine state
#: stay well under 100 MiB (measured in benchmarks/RESULTS.md).
HARD_CEILING = 20_000
#: The share of the rate refreshes may spend while creates wait: polling buys promptness,
#: not throughput, so it stays small (10% held URL catalogs at 88% of their bound, 5% at 95%).
DEFAULT_POLL_SHARE = 0.05
#: The window never drops below this without a concurrency-limit signal.
MIN_WINDOW = 16


class WindowEstimator:
    """The in-flight window from Little's law, capped, and shrunk by concurrency signals."""

    def __init__(
        self,
        rate: float,
        *,
        create_share: float = 0.9,
        cap: int | None = None,
        ceiling: int = HARD_CEILING,
        floor: int = MIN_WINDOW,
        headroom: float = 1.25,
        alpha: float = 0.05,
        cooldown: float = 2.0,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.rate = float(rate)
        self.create_share = create_share
        self.cap = cap
        self.ceiling = ceiling if cap is None else cap
        self.floor = min(floor, self.ceiling)
        self.headroom = headroom
        self.alpha = alpha
        self.cooldown = cooldown
        #: Mean seconds a task spends in flight (EWMA of completions); None before any.
        self.time_in_flight: float | None = None
        #: API requests one item costs before its task exists (upload, create, lookups).
        self.cost_per_item = 1.0
        #: Upper bound set by concurrency-limit signals (inf: none seen, or recovered).
        self.limit_cap = math.inf
        self.limit_signals = 0
        self._last_signal = -math.inf

    def observe_done(self, seconds: float) -> None:
        """A task left the watch after ``seconds`` in flight."""
        seconds = max(0.0, seconds)
        if self.time_in_flight is None:
            self.time_in_flight = seconds
        else:
            self.time_in_flight += self.alpha * (seconds - self.time_in_flight)

    def observe_cost(self, requests: float, items: int) -> None:
        """``requests`` spent creating ``items`` tasks so far (at least one per item)."""
        if items > 0:
            self.cost_per_item = max(1.0, requests / items)

    def creation_rate(self) -> float:
        """Items per second the create share of the budget allows."""
        return self.rate * self.create_share / self.cost_per_item

    def processing_estimate(self, oldest_age: float) -> float:
        """Seconds in flight to plan for: the observed mean, or the oldest age if larger."""
        observed = self.time_in_flight or 0.0
        return max(observed, oldest_age)

    def window(self, oldest_age: float = 0.0) -> int:
        """Tasks to allow in flight now."""
        wanted = self.creation_rate() * self.processing_estimate(oldest_age) * self.headroom
        size = max(self.floor, math.ceil(wanted) + self.floor)
        bounded = min(float(size), float(self.ceiling), self.limit_cap)
        return max(1, int(bounded))

    def signal_limit(self, in_flight: int, now: float) -> bool:
        """The service said too many at once: cut the window to 70% of what is in flight.

        One cut per ``cooldown`` seconds: the answers to requests sent before the cut must not
        cut it again. Returns True when it cut.
        """
        if now - self._last_signal < self.cooldown:
            return False
        self._last_signal = now
        self.limit_signals += 1
        self.limit_cap = max(1.0, math.floor(0.7 * max(1, in_flight)))
        return True

    def on_created(self) -> None:
        """A create succeeded: a limit cap grows back by a quarter task (additive increase)."""
        if math.isfinite(self.limit_cap):
            self.limit_cap += 0.25
            if self.limit_cap >= self.ceiling:
                self.limit_cap = math.inf


class PollBudget:
    """A share of the request rate for refreshes: GCRA over poll requests only."""

    def __init__(
        self,
        rate: float,
        *,
        share: float = DEFAULT_POLL_SHARE,
        idle_share: float = 0.9,
        min_interval: float = 1.0,
        max_interval: float = 30.0,
    ) -> None:
        if not 0 < share <= 1 or not 0 < idle_share <= 1:
            raise ValueError("poll shares must be in (0, 1]")
        self.rate = float(rate)
        self.share_creating = share
        self.idle_share = max(share, idle_share)
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._free_at = -math.inf
        self.spent = 0

    def share(self, creating: bool) -> float:
        """The share of the rate refreshes may use: small while creates wait for the budget."""
        return self.share_creating if creating else self.idle_share

    def charge(self, requests: int, now: float, *, creating: bool) -> None:
        """``requests`` refresh requests were just sent."""
        self.spent += requests
        start = max(self._free_at, now)
        self._free_at = start + requests / (self.rate * self.share(creating))

    def ready_at(self, now: float) -> float:
        """When the next refresh may be sent (``now`` when the share has room)."""
        return max(now, self._free_at)

    def relax(self, now: float) -> None:
        """Creating is done: the debt built at the small share is not owed at the large one."""
        if self._free_at > now:
            ratio = self.share_creating / self.idle_share
            self._free_at = now + (self._free_at - now) * ratio

    def sweep_interval(self, pages: int, *, creating: bool, floor: float | None = None) -> float:
        """Seconds between list sweeps of ``pages`` pages that keep within the share.

        ``floor`` replaces the usual bounds (webhooks: the safety poll, however long)."""
        interval = max(1, pages) / (self.rate * self.share(creating))
        if floor is not None:
            return max(floor, interval)
        return min(self.max_interval, max(self.min_interval, interval))


class ConcurrencyController:
    """How many uploads (or creates) at once: hill-climbing on throughput, cut on congestion.

    Latency is measured per unit of work (the caller normalises, e.g. per MiB for uploads), so
    by Little's law ``limit / mean latency`` is the stage's throughput. A round is ``limit``
    completions. At the settled limit a round re-measures the throughput and, with work
    waiting, probes a quarter higher (at least one more); a probe that raises throughput by
    5% is kept and the climb goes on, one that does not (the link or the rate limiter is the
    bottleneck: latency grew with the limit) falls back. Congestion (429, connection errors)
    halves it. A fixed controller never moves.
    """

    def __init__(self, initial: int, ceiling: int, *, fixed: bool = False, gain: float = 1.05):
        if initial < 1 or ceiling < initial:
            raise ValueError("need 1 <= initial <= ceiling")
        self.limit = initial
        self.initial = initial
        self.ceiling = ceiling
        self.fixed = fixed
        self.gain = gain
        self.peak = initial
        self._settled = initial
        self._settled_rate: float | None = None
        self._round_total = 0.0
        self._round_count = 0
        self._round_demand = False

    def record(self, latency: float, *, demand: bool) -> int:
        """One completion took ``latency`` (normalised); ``demand``: more work was waiting."""
        if self.fixed:
            return self.limit
        self._round_total += max(latency, 1e-6)
        self._round_count += 1
        self._round_demand = self._round_demand or demand
        if self._round_count >= self.limit:
            self._end_round(self.limit * self._round_count / self._round_total)
        return self.limit

    def _end_round(self, throughput: float) -> None:
        demand = self._round_demand
        self._round_total, self._round_count, self._round_demand = 0.0, 0, False
        probing = self.limit != self._settled and self._settled_rate is not None
        if probing and throughput <= (self._settled_rate or 0.0) * self.gain:
            self.limit = self._settled  # the probe did not pay: back
            return
        self._settled, self._settled_rate = self.limit, throughput
        if demand and self.limit < self.ceiling:
            self.limit = min(self.ceiling, self.limit + max(1, self.limit // 4))
            self.peak = max(self.peak, self.limit)

    def congested(self) -> int:
        """The service or the network pushed back: halve (not below one)."""
        if not self.fixed:
            self.limit = max(1, self.limit // 2)
            self._settled, self._settled_rate = self.limit, None
            self._round_total, self._round_count, self._round_demand = 0.0, 0, False
        return self.limit
