"""One worker process of the shared-rate-limit tests: ``python -m tests._ratelimit_worker``.

It opens a PostgresRateLimiter, waits at the test server's barrier (``GET /hello``: every worker
starts together), then sends ``--requests`` requests through the real client
(``client.transport.request``), ``--concurrency`` at a time. Each request carries the worker's
name and the moment it left ``acquire()`` (``X-Ready``, ``time.monotonic()``: one clock for
every process of a Linux machine). Last line of stdout: JSON with the limiter's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import time
import urllib.request

import aiohttp

from audioshake_async import AudioShake
from audioshake_async.core.http import RetryPolicy
from audioshake_async.core.ratelimit_pg import PostgresRateLimiter

#: When this request's acquire() returned (set in the request's own task, read by the trace).
READY: contextvars.ContextVar[float] = contextvars.ContextVar("ready", default=-1.0)


class Stamped:
    """A Limiter around the shared one that notes when each request was let through."""

    def __init__(self, inner: PostgresRateLimiter) -> None:
        self.inner = inner

    async def acquire(self) -> None:
        await self.inner.acquire()
        READY.set(time.monotonic())

    def pause_until(self, seconds_from_now: float) -> None:
        self.inner.pause_until(seconds_from_now)


async def main(args: argparse.Namespace) -> dict[str, float | int]:
    async with PostgresRateLimiter(
        args.dsn, rate=args.rate, account=args.account, jitter=args.jitter
    ) as limiter:

        async def on_start(
            session: aiohttp.ClientSession,
            ctx: object,
            params: aiohttp.TraceRequestStartParams,
        ) -> None:
            params.headers["X-Ready"] = repr(READY.get())

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(on_start)
        async with (
            aiohttp.ClientSession(trace_configs=[trace]) as session,
            AudioShake(
                "test-key",
                args.url,
                rate_limit=Stamped(limiter),
                session=session,
                retry=RetryPolicy(max_retries=5, base_delay=0.01, max_delay=0.05),
            ) as client,
        ):
            # The barrier is not an API request: plain urllib, no limiter.
            await asyncio.to_thread(_hello, args.url, args.name)
            queue = list(range(args.requests))

            async def sender() -> None:
                while queue:
                    queue.pop()
                    await client.transport.request("GET", f"/ping/{args.name}", route="GET /ping")

            await asyncio.gather(*(sender() for _ in range(args.concurrency)))
        return {
            "round_trips": limiter.round_trips,
            "granted": limiter.slots_granted,
            "wasted": limiter.slots_wasted,
            "max_lag": limiter.max_lag,
            "reconnects": limiter.reconnects,
        }


def _hello(url: str, name: str) -> None:
    with urllib.request.urlopen(f"{url}/hello/{name}", timeout=120) as response:
        response.read()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--account", default="shared-test-account")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--jitter", type=float, default=0.02)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    print(json.dumps(asyncio.run(main(parser.parse_args()))), flush=True)
