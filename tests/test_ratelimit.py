"""The GCRA rate limiter, on a fake clock: no assertion depends on wall-clock speed."""

from __future__ import annotations

import asyncio
import itertools
import math
import warnings

import pytest
from aiohttp import web
from multidict import CIMultiDict

from audioshake_async import AudioShake, errors
from audioshake_async.core import ratelimit as _ratelimit
from audioshake_async.core.http import RetryPolicy
from audioshake_async.core.ratelimit import Limiter, RateLimiter
from audioshake_async.core.service import ServiceClient
from audioshake_async.legacy.client import LegacyClient
from audioshake_async.musicai.client import MusicAI

from ._servers import Seen, base_url, serve

NO_LONG_WAIT = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, max_retry_after=0.5)


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


# --------------------------------------------------------------------------- the Limiter seam


class CountingLimiter:
    """A Limiter of the test's own: records what the transport asks of it."""

    def __init__(self) -> None:
        self.acquired = 0
        self.pauses: list[float] = []
        self.closed = False

    async def acquire(self) -> None:
        self.acquired += 1

    def pause_until(self, seconds_from_now: float) -> None:
        self.pauses.append(seconds_from_now)

    async def aclose(self) -> None:
        self.closed = True


def test_the_in_process_limiter_satisfies_the_protocol() -> None:
    assert isinstance(RateLimiter(10), Limiter)
    assert isinstance(CountingLimiter(), Limiter)
    assert not isinstance(object(), Limiter)


@pytest.mark.parametrize("client_class", ["tasks", "legacy", "musicai"])
async def test_every_client_takes_a_limiter_object_and_leaves_it_open(client_class: str) -> None:
    limiter = CountingLimiter()
    seen: list[Seen] = []
    calls = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(Seen(request.method, request.path, {}, CIMultiDict(request.headers)))
        calls["n"] += 1
        if calls["n"] == 1:
            headers = {"Retry-After": "7"}
            return web.json_response({"message": "slow down"}, status=429, headers=headers)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with serve(app) as server:
        client = _client(client_class, base_url(server), limiter)
        async with client:
            # A Retry-After beyond max_retry_after raises at once (no 7 s sleep in a test).
            with pytest.raises(errors.RateLimitError):
                await client.transport.request("GET", "/anything")
            await client.transport.request("GET", "/anything")
        assert client.transport.limiter is limiter
    assert limiter.acquired == 2 == len(seen)  # one acquire per request sent
    assert limiter.pauses == [7.0]  # the 429's Retry-After reached the shared limiter
    assert not limiter.closed  # the caller's object: the client never closes it


def _client(kind: str, url: str, limiter: Limiter) -> ServiceClient:
    if kind == "tasks":
        return AudioShake("key", url, rate_limit=limiter, retry=NO_LONG_WAIT)
    if kind == "musicai":
        return MusicAI("key", url, rate_limit=limiter, retry=NO_LONG_WAIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return LegacyClient("key", url, rate_limit=limiter, retry=NO_LONG_WAIT)


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, True, "60", object()])
def test_a_bad_rate_limit_is_refused_before_any_request(bad: object) -> None:
    with pytest.raises(errors.ConfigurationError, match="rate_limit"):
        AudioShake("key", "http://127.0.0.1:9", rate_limit=bad)  # type: ignore[arg-type]
