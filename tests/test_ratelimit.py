"""The GCRA rate limiter, on a fake clock: no assertion depends on wall-clock speed."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from audioshake_async.core import ratelimit as _ratelimit
from audioshake_async.core.ratelimit import RateLimiter


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_even_spacing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock)
    waits = [limiter.reserve() for _ in range(6)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2, 0.3])


def test_idle_time_refills_the_burst_but_no_more() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock)
    for _ in range(3):
        limiter.reserve()
    clock.now = 100.0  # long idle: the bucket is full again, not overfull
    waits = [limiter.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.2])


def test_partial_refill() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock)
    for _ in range(3):
        assert limiter.reserve() == 0.0
    clock.now = 0.1  # one slot's worth of time has passed
    assert limiter.reserve() == pytest.approx(0.0)
    assert limiter.reserve() == pytest.approx(0.1)


def test_explicit_now_overrides_clock() -> None:
    limiter = RateLimiter(2, burst=1, clock=FakeClock(1000.0))
    assert limiter.reserve(now=5.0) == 0.0
    assert limiter.reserve(now=5.0) == pytest.approx(0.5)


def test_default_burst_is_a_tenth_of_the_rate_at_least_one() -> None:
    assert RateLimiter(60).burst == pytest.approx(6.0)
    assert RateLimiter(5).burst == 1.0
    limiter = RateLimiter(60, clock=FakeClock())
    waits = [limiter.reserve() for _ in range(8)]
    assert waits[:6] == [0.0] * 6
    assert waits[6:] == pytest.approx([1 / 60, 2 / 60])


def test_pause_until_holds_every_later_request() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock)
    limiter.pause_until(2.0)
    assert limiter.reserve() == pytest.approx(2.0)
    assert limiter.reserve() == pytest.approx(2.1)
    clock.now = 5.0  # once the pause is over, the full burst is available again
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_pause_never_shortens_a_longer_queue() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, burst=1, clock=clock)
    for _ in range(50):
        limiter.reserve()  # queue reaches 5 s
    limiter.pause_until(1.0)
    assert limiter.reserve() == pytest.approx(5.0)
    limiter.pause_until(-3.0)  # a negative pause is no pause
    assert limiter.reserve() == pytest.approx(5.1)


@pytest.mark.parametrize("rate", [0, -1, math.nan, math.inf])
def test_rejects_bad_rates(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)


async def test_acquire_does_not_sleep_when_free(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(_ratelimit, "anyio", _FakeAnyio(fake_sleep))
    limiter = RateLimiter(10, burst=2, clock=FakeClock())
    await limiter.acquire()
    await limiter.acquire()
    await limiter.acquire()
    assert slept == [pytest.approx(0.1)]


class _FakeAnyio:
    def __init__(self, sleep: object) -> None:
        self.sleep = sleep


async def test_200_concurrent_acquires_get_the_gcra_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 concurrent waiters at rate R: burst B go at once, the rest one every 1/R, in order."""
    rate, burst, n = 50.0, 5, 200
    clock = FakeClock(10.0)
    releases: list[tuple[int, float]] = []
    current: dict[int, int] = {}

    async def fake_sleep(seconds: float) -> None:
        await asyncio.sleep(0)  # really yield, so the waiters interleave
        releases.append((current[id(asyncio.current_task())], clock.now + seconds))

    monkeypatch.setattr(_ratelimit, "anyio", _FakeAnyio(fake_sleep))
    limiter = RateLimiter(rate, burst=burst, clock=clock)

    async def worker(index: int) -> None:
        current[id(asyncio.current_task())] = index
        await limiter.acquire()

    await asyncio.gather(*(worker(i) for i in range(n)))

    # Exactly n - burst had to wait; every waiter's release time is distinct and 1/R apart.
    assert len(releases) == n - burst
    times = sorted(t for _, t in releases)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1 / rate] * (n - burst - 1))
    assert times[0] - clock.now == pytest.approx(1 / rate)
    assert times[-1] - clock.now == pytest.approx((n - burst) / rate)
    # Served in arrival order (FIFO): the later a worker reserved, the later it goes.
    order = [index for index, _ in sorted(releases, key=lambda r: r[1])]
    assert order == sorted(order)
    # No one-second window ever releases more than R + B requests.
    all_times = [clock.now] * burst + times
    for start in all_times:
        in_window = sum(1 for t in all_times if start <= t < start + 1.0 - 1e-9)
        assert in_window <= rate + burst
