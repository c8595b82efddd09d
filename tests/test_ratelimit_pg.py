"""The shared rate budget: slot bookkeeping on a fake clock, then a real PostgreSQL server.

Worker processes (``tests/_ratelimit_worker.py``) share one budget and send requests to a
loopback server that stamps each arrival. No assertion is on speed: the window check is an
upper bound widened by the lateness the run itself measured, and the pause check looks for a gap
that only a shared pause can make.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import math
import os
import pathlib
import sys
import time
from typing import Any

import anyio
import pytest
from aiohttp import web

from audioshake_async import errors
from audioshake_async.core.ratelimit import SlotBook
from audioshake_async.core.ratelimit_pg import (
    CHANNEL,
    RATE_BUDGET_DDL,
    PostgresRateLimiter,
    account_for,
)
from audioshake_async.core.ratelimit_pg_sql import ENSURE_ROW as _ENSURE_ROW
from audioshake_async.core.ratelimit_pg_sql import PAUSE as _PAUSE
from audioshake_async.core.ratelimit_pg_sql import RESERVE as _RESERVE

from ._servers import base_url, free_port, serve

psycopg = pytest.importorskip("psycopg")

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY = "sk-test-ZEBRA-7f3a91c2-key"
JITTER = 0.02  # tests/_ratelimit_worker.py's default
PASSWORD = "pw-WALRUS-55"  # ignored by the trust-auth test server; must never be shown


# --------------------------------------------------------------------------- pure bookkeeping


def test_a_block_becomes_local_slots_between_question_and_answer() -> None:
    book = SlotBook(0.1, jitter=0.02)
    # Asked at t=49.99, answered at t=50: "your 3 slots end 0.25 s after my now".
    slots = book.add_block(49.99, 50.0, 0.25, -9.0, 3)
    assert [d for d, _ in slots] == pytest.approx([49.95, 50.05, 50.15])  # from the answer
    assert [s for _, s in slots] == pytest.approx([49.94, 50.04, 50.14])  # from the question
    # The first is due already and still within jitter of its soonest moment: use it now.
    assert book.take(49.955) == slots[0]
    assert [book.take(50.0), book.take(50.0), book.take(50.0)] == [slots[1], slots[2], None]
    assert book.granted == 3 and book.wasted == 0


def test_a_slot_is_used_only_within_jitter_of_its_soonest_moment() -> None:
    book = SlotBook(0.1, jitter=0.02)
    slot = book.add_block(0.0, 0.005, 0.1, -1.0, 1)[0]  # deadline 0.005, soonest 0.0
    assert book.usable(slot, 0.005) and book.usable(slot, 0.02)
    assert not book.usable(slot, 0.021)  # this process stalled: sent now it would crowd
    # A slow answer (round trip over jitter): its slots can never be placed well enough...
    slow = book.add_block(1.0, 1.03, 0.1, -1.0, 1)[0]
    assert not book.usable(slow, slow[0])
    # ...unless every recent round trip was that slow (the link, not a stall): then only
    # this process's own delay is bounded.
    assert book.usable(slow, slow[0] + 0.009, slow_link=True)
    assert not book.usable(slow, slow[0] + 0.012, slow_link=True)


def test_unused_slots_past_their_time_are_dropped_not_sent_late() -> None:
    book = SlotBook(0.1, jitter=0.02)
    book.add_block(10.0, 10.0, 0.3, -1.0, 3)  # slots at 10.0, 10.1, 10.2
    assert book.take(10.21)[0] == pytest.approx(10.2)  # 10.0 and 10.1 are stale: dropped
    assert book.wasted == 2


def test_a_pause_voids_the_slots_inside_it_and_keeps_the_rest() -> None:
    book = SlotBook(0.1, jitter=0.02)
    book.add_block(0.0, 0.0, 1.0, -1.0, 10)  # slots at 0.0 .. 0.9
    book.pause(0.0, 0.5)
    assert book.paused_until == 0.5
    assert [d for d, _ in book.slots] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert book.wasted == 5
    assert not book.valid((0.4, 0.4)) and book.valid((0.49, 0.49))  # slack: the pause travels
    book.pause(0.0, 0.1)  # a shorter pause never shortens the longer one
    assert book.paused_until == 0.5


def test_a_block_that_reports_a_pause_applies_it() -> None:
    book = SlotBook(0.1, jitter=0.02)
    # Slots start after the pause (the database places them there); the pause is recorded.
    book.add_block(100.0, 100.0, 2.2, 2.0, 2)
    assert book.paused_until == pytest.approx(102.0)
    assert [d for d, _ in book.slots] == pytest.approx([102.0, 102.1])


def test_a_cancelled_request_gives_its_slot_to_the_next() -> None:
    book = SlotBook(0.1, jitter=0.02)
    slot = book.add_block(0.0, 0.0, 0.1, -1.0, 1)[0]
    assert book.take(0.0) == slot
    book.give_back(slot, 0.0)
    assert book.take(0.0) == slot
    book.give_back(slot, 5.0)  # returned too late: it would crowd the current slots
    assert book.take(5.0) is None and book.wasted == 1


def test_the_account_key_is_a_hash_of_origin_and_key() -> None:
    one = account_for(KEY, "https://api.audioshake.ai")
    assert one == account_for(KEY, "https://API.audioshake.ai:443/")
    assert len(one) == 64 and KEY not in one
    assert one != account_for(KEY, "http://127.0.0.1:8080")
    assert one != account_for(KEY + "x", "https://api.audioshake.ai")
    material = f"https://api.audioshake.ai:443\n{KEY}".encode()
    assert one == hashlib.sha256(material).hexdigest()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0, "account": "a"},
        {"rate": math.inf, "account": "a"},
        {},
        {"account": "a", "api_key": KEY, "base_url": "https://x"},
        {"api_key": KEY},
        {"account": "a", "block": 0},
        {"account": "a", "burst": 0},
        {"account": " "},
    ],
)
def test_bad_settings_are_refused_before_any_connection(kwargs: dict[str, Any]) -> None:
    with pytest.raises(errors.ConfigurationError):
        PostgresRateLimiter("postgresql://127.0.0.1:9/x", **kwargs)


def test_without_psycopg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    with pytest.raises(errors.ConfigurationError, match=r"audioshake-async\[postgres\]"):
        PostgresRateLimiter("postgresql://127.0.0.1:9/x", account="a")


# --------------------------------------------------------------------------- the SQL, one process


async def test_an_unreachable_database_is_a_clear_error_on_open() -> None:
    limiter = PostgresRateLimiter(f"postgresql://postgres@127.0.0.1:{free_port()}/x", account="a")
    with pytest.raises(errors.ConfigurationError, match="cannot open the shared rate budget"):
        await limiter.open()


def _reserve(conn: Any, account: str, count: int, interval: float, burst: int = 1) -> float:
    """One reservation statement as the limiter sends it; the offset of its first slot."""
    span = count * interval
    params = {"account": account, "span": span, "tolerance": (burst - 1) * interval}
    next_offset, _pause = conn.execute(_RESERVE, params).fetchone()
    return float(next_offset) - span


def _budget_table(dsn: str, account: str) -> Any:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(RATE_BUDGET_DDL)
    conn.execute(RATE_BUDGET_DDL)  # idempotent
    conn.execute(_ENSURE_ROW, {"account": account})
    # Long idle: the next free slot is an hour ago.
    conn.execute(
        "UPDATE audioshake_rate_budget SET next_slot = clock_timestamp() - interval '1 hour'"
    )
    return conn


def test_reservations_follow_each_other_on_the_database_clock(pg_dsn: str) -> None:
    """All offsets are from the statement's own clock reading: exact, whatever the speed."""
    with _budget_table(pg_dsn, "acct") as conn:
        # After idle time, with no burst, the first slot is the database's now: not earlier.
        assert _reserve(conn, "acct", 5, 0.02) == pytest.approx(0.0, abs=1e-6)
        # The next block starts where that one ended (0.1 s after the first now): a little
        # less than 0.1 s after this statement's now, never before it.
        second = _reserve(conn, "acct", 5, 0.02)
        assert 0.0 < second <= 0.1


def test_burst_lets_idle_budget_go_at_once_but_no_more(pg_dsn: str) -> None:
    with _budget_table(pg_dsn, "b") as conn:
        # burst 3: up to 2 intervals back, so 3 slots are due at once, however long the idle.
        assert _reserve(conn, "b", 5, 0.1, burst=3) == pytest.approx(-0.2, abs=1e-6)


def test_a_pause_in_the_row_moves_every_later_slot_after_it(pg_dsn: str) -> None:
    with _budget_table(pg_dsn, "p") as conn:
        conn.execute(_PAUSE, {"account": "p", "seconds": 30.0, "channel": CHANNEL})
        first = _reserve(conn, "p", 2, 0.1)
        assert 29.0 < first <= 30.0


async def test_a_limiter_reserves_only_whole_blocks_for_its_waiters(pg_dsn: str) -> None:
    # A generous jitter: a slow machine's late wake-ups must not void slots here.
    limiter = PostgresRateLimiter(pg_dsn, rate=100, account="w", block=4, jitter=0.5)
    async with limiter:
        await asyncio.gather(*(limiter.acquire() for _ in range(12)))
        assert limiter.slots_granted == 12 and limiter.slots_wasted == 0
        # Setup on connect (two tables, the row), the first membership beat, 3 blocks of 4.
        assert limiter.round_trips == 3 + 1 + 3


async def test_members_tell_each_limiter_its_share_as_workers_come_and_go(pg_dsn: str) -> None:
    first = PostgresRateLimiter(pg_dsn, rate=60, account="m")
    second = PostgresRateLimiter(pg_dsn, rate=60, account="m")
    third = PostgresRateLimiter(pg_dsn, rate=60, account="m")
    other = PostgresRateLimiter(pg_dsn, rate=60, account="another account")
    async with first, other:
        assert (first.members, first.share) == (1, 1.0)
        async with second, third:
            assert (second.members, third.members) == (2, 3)  # each counts on its first beat
            await first._beat_once()
            assert first.members == 3 and first.share == pytest.approx(1 / 3)
            assert other.members == 1  # another account's budget is its own
        await first._beat_once()  # the two left on close: not three missed beats later
        assert first.members == 1
        third = PostgresRateLimiter(pg_dsn, rate=60, account="m")
        await third.open()  # then dies without closing: gone after three missed beats
        await first._beat_once()
        assert first.members == 2
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE audioshake_rate_members SET seen_at = seen_at - interval '16 seconds'"
                " WHERE member = %s",
                (third.member,),
            )
        await first._beat_once()
        assert first.members == 1
        await third.aclose()
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT account, member FROM audioshake_rate_members").fetchall()
    assert rows == []  # every member left its row behind it


async def test_no_key_in_the_row_the_repr_or_the_logs(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = pg_dsn.replace("postgres@", f"postgres:{PASSWORD}@")
    caplog.set_level(logging.DEBUG, "audioshake_async")
    limiter = PostgresRateLimiter(dsn, api_key=KEY, base_url="http://127.0.0.1:1")
    async with limiter:
        await limiter.acquire()
        limiter.pause_until(0.01)
        await _kill_other_backends(pg_dsn)
        await limiter.acquire()  # reconnects (and logs it)
    assert limiter.reconnects >= 1
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT * FROM audioshake_rate_budget").fetchall()
    assert [r[0] for r in rows] == [account_for(KEY, "http://127.0.0.1:1")]
    for text in (repr(rows), repr(limiter), str(limiter), caplog.text):
        assert KEY not in text and PASSWORD not in text


async def test_a_killed_connection_is_reopened_and_a_closed_database_blocks(
    pg_dsn: str,
) -> None:
    async with PostgresRateLimiter(pg_dsn, rate=100, account="c", block=2) as limiter:
        await limiter.acquire()
        name = pg_dsn.rsplit("/", 1)[1]
        with psycopg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await _kill_other_backends(pg_dsn, via=admin)
            # The database is unreachable: no slot, so no request (it waits, never errors).
            waiter = asyncio.ensure_future(_acquire_n(limiter, 5))
            await asyncio.sleep(1.0)
            assert not waiter.done()
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await asyncio.wait_for(waiter, 60)
        assert limiter.reconnects >= 1


async def test_a_closed_limiter_refuses(pg_dsn: str) -> None:
    limiter = PostgresRateLimiter(pg_dsn, account="d")
    async with limiter:
        pass
    with pytest.raises(errors.ConfigurationError, match="closed"):
        await limiter.acquire()


async def test_closing_while_the_listener_waits_for_notifications_returns(pg_dsn: str) -> None:
    # psycopg before 3.3 cannot cancel a task waiting in notifies() until a notification
    # arrives: aclose() sends one. Without it this hung forever at the psycopg floor.
    for attempt in range(5):
        limiter = PostgresRateLimiter(pg_dsn, account=f"l{attempt}")
        await limiter.open()
        # autocommit: a transaction would see one cached snapshot of pg_stat_activity.
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for _ in range(200):  # until the listener's LISTEN is in (no timing assumed)
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %%'"
                ).fetchone()
                if row and row[0] >= 1:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the listener never listened")
        with anyio.fail_after(60):
            await limiter.aclose()
        assert limiter._listener is not None and limiter._listener.done()


async def _acquire_n(limiter: PostgresRateLimiter, n: int) -> None:
    for _ in range(n):
        await limiter.acquire()


async def _kill_other_backends(dsn: str, via: Any = None) -> None:
    """pg_terminate_backend on every connection to the test database but the killer's own."""
    sql = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    name = dsn.rsplit("/", 1)[1]
    if via is not None:
        via.execute(sql, (name,))
        return
    with psycopg.connect(dsn.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(sql, (name,))


# --------------------------------------------------------------------------- many processes


class Arrivals:
    """A loopback API that stamps every arrival (its own ``time.monotonic()``)."""

    def __init__(self, workers: int, *, answer_429_at: int | None = None, retry_after: int = 2):
        self.workers = workers
        self.hello: set[str] = set()
        self.everyone_here = asyncio.Event()
        #: (arrival, ready in the worker, worker name, status)
        self.seen: list[tuple[float, float, str, int]] = []
        self.answer_429_at = answer_429_at
        self.retry_after = retry_after
        self.app = web.Application()
        self.app.router.add_get("/hello/{name}", self._hello)
        self.app.router.add_get("/ping/{name}", self._ping)

    async def _hello(self, request: web.Request) -> web.Response:
        self.hello.add(request.match_info["name"])
        if len(self.hello) >= self.workers:
            self.everyone_here.set()
        await self.everyone_here.wait()
        return web.json_response({})

    async def _ping(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        status = 429 if len(self.seen) == self.answer_429_at else 200
        ready = float(request.headers["X-Ready"])
        self.seen.append((arrived, ready, request.match_info["name"], status))
        if status == 429:
            headers = {"Retry-After": str(self.retry_after)}
            return web.json_response({"message": "slow down"}, status=429, headers=headers)
        return web.json_response({"ok": True})


async def _run_workers(
    dsn: str, arrivals: Arrivals, *, rate: float, requests: int
) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with serve(arrivals.app) as server:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests._ratelimit_worker",
                *("--dsn", dsn, "--url", base_url(server), "--name", f"w{index}"),
                *("--rate", str(rate), "--requests", str(requests)),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
                env=env,
            )
            for index in range(arrivals.workers)
        ]
        outputs = [await p.communicate() for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-3000:]
    return [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]


def _max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any half-open window ``[t, t + width)``."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - width:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.timeout(180)
async def test_worker_processes_share_one_budget(pg_dsn: str) -> None:
    """3 processes, each able to send far more than the rate, stay within one budget.

    The bound: slots are ``(1 + jitter) / rate`` apart on the database clock, so any window of
    ``1 + D`` seconds of slots holds at most ``(1 + D) * rate / (1 + jitter) + 1``, which is
    ``rate`` when ``D <= jitter`` (what the limiter aims for). A request reaches the
    server between 0 and ``D`` seconds after its slot, where ``D`` is what this run measured
    (each worker's ``max_lag``: from its slot's soonest moment to leaving acquire(), at most
    ``jitter``; plus the worst time from acquire() to arrival), so any 1-second window of
    arrivals holds at most that many. Slowness only widens
    ``D``; it cannot make the bound fail. Without the sharing, 3 workers send ~3x the rate.
    """
    rate, workers, per_worker = 30.0, 3, 40
    arrivals = Arrivals(workers)
    stats = await _run_workers(pg_dsn, arrivals, rate=rate, requests=per_worker)
    assert len(arrivals.seen) == workers * per_worker
    assert {name for _, _, name, _ in arrivals.seen} == {f"w{i}" for i in range(workers)}
    in_flight = max(arrived - ready for arrived, ready, _, _ in arrivals.seen)
    # + 1 ms: the worker's stamps are taken a few instructions after the limiter's own.
    lag = max(s["max_lag"] for s in stats) + in_flight + 0.001
    if lag > 0.5:
        pytest.skip(f"the machine stalled {lag:.2f} s: the bound would say too little")
    # Slots are (1 + jitter) / rate apart on the database clock (jitter: the worker's default).
    bound = math.floor((1 + lag) * rate / (1 + JITTER)) + 1
    most = _max_in_window([arrived for arrived, _, _, _ in arrivals.seen])
    print(f"max in 1 s: {most}, bound {bound}, measured lag {lag:.3f} s")
    assert most <= bound, (most, bound, lag)
    # Blocks save round trips: fewer statements than requests.
    assert sum(s["round_trips"] for s in stats) < workers * per_worker


@pytest.mark.timeout(180)
async def test_a_429_seen_by_one_worker_pauses_them_all(pg_dsn: str) -> None:
    """The 30th request gets 429 with Retry-After: 3; every worker holds back, not just one.

    Without the shared pause the other workers go on at their share of the rate and finish;
    with it, each worker's arrivals stop within a few slots of the 429 and resume when the
    pause ends: every worker's longest silence after the 429 is most of the Retry-After.
    """
    rate, workers, retry_after = 30.0, 3, 3
    arrivals = Arrivals(workers, answer_429_at=30, retry_after=retry_after)
    await _run_workers(pg_dsn, arrivals, rate=rate, requests=25)
    seen = sorted(arrivals.seen)
    hit = next(arrived for arrived, _, _, status in seen if status == 429)
    for worker in (f"w{i}" for i in range(workers)):
        # Each worker's longest silence that ends after the 429: it fell silent (at the 429 or
        # a little after, as the pause reached it) and spoke again only after the pause.
        mine = [arrived for arrived, _, name, _ in seen if name == worker]
        longest = max((b - a for a, b in itertools.pairwise(mine) if b > hit), default=0.0)
        print(f"{worker}: longest silence ending after the 429: {longest:.2f} s")
        assert longest >= retry_after / 2, worker


async def test_a_pause_reaches_another_limiter_by_notify(pg_dsn: str) -> None:
    async with (
        PostgresRateLimiter(pg_dsn, rate=50, account="e") as one,
        PostgresRateLimiter(pg_dsn, rate=50, account="e") as two,
        PostgresRateLimiter(pg_dsn, rate=50, account="other") as stranger,
    ):
        await asyncio.gather(one.acquire(), two.acquire(), stranger.acquire())
        one.pause_until(30)
        for _ in range(200):  # the notification arrives in milliseconds; allow for a slow box
            if two._book.paused_until > time.monotonic() + 20:
                break
            await asyncio.sleep(0.05)
        assert two._book.paused_until > time.monotonic() + 20
        assert stranger._book.paused_until < time.monotonic()  # another account: no pause
        with psycopg.connect(pg_dsn) as conn:
            (left,) = conn.execute(
                "SELECT EXTRACT(EPOCH FROM paused_until - clock_timestamp())::float8 "
                "FROM audioshake_rate_budget WHERE account = 'e'"
            ).fetchone()
        assert 20 < left <= 30
        assert CHANNEL == "audioshake_rate_budget"


async def test_used_without_async_with_it_opens_on_first_use(pg_dsn: str) -> None:
    limiter = PostgresRateLimiter(pg_dsn, rate=100, account="lazy")
    try:
        await asyncio.gather(*(limiter.acquire() for _ in range(5)))
        assert limiter.slots_granted >= 5
        assert limiter._listener is not None and not limiter._listener.done()
    finally:
        await limiter.aclose()
    assert limiter._listener.done()
