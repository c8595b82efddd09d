"""Webhook deliveries: one POST of the full task JSON per terminal target, per endpoint.

Documented [DOC]: the payload is the full Task object (no envelope, no event type), sent
each time a target completes or errors, so a task with three targets yields up to three
deliveries and other targets may still be ``processing``. Undocumented [INFER], and so
simulated here as knobs: retries (``webhook_retries`` with doubling ``webhook_backoff``),
drops, duplicates and out-of-order arrival (``webhook_delay_jitter``). No signature header
is sent because none is documented.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import aiohttp

from .runtime import Runtime
from .state import Target, Task

USER_AGENT = "audioshake-emulator-webhooks"


async def post_with_retries(
    http: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    *,
    user_agent: str,
    retries: int,
    backoff: float,
    timeout: float,
    stats: Counter[str],
) -> None:
    """POST a JSON ``payload``; retry non-2xx answers and errors ``retries`` times.

    Waits ``backoff`` doubling before each retry; ``timeout`` 0 means none. Counts
    ``deliveries_attempted|succeeded|failed``, ``attempts`` and ``retries`` in ``stats``.
    """
    stats["deliveries_attempted"] += 1
    for attempt in range(retries + 1):
        if attempt:
            stats["retries"] += 1
            await asyncio.sleep(backoff * 2 ** (attempt - 1))
        stats["attempts"] += 1
        try:
            async with http.post(
                url,
                data=payload,
                headers={"Content-Type": "application/json", "User-Agent": user_agent},
                timeout=aiohttp.ClientTimeout(total=timeout or None),
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    stats["deliveries_succeeded"] += 1
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass  # retried below like a non-2xx answer
    stats["deliveries_failed"] += 1


class WebhookDispatcher:
    """Sends (and counts) webhook deliveries in background tasks."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._pending: set[asyncio.Task[None]] = set()

    def notify(self, task: Task, target: Target) -> None:
        """Queue deliveries of ``task`` to every registered endpoint (``target`` just ended)."""
        del target  # the payload is the whole task, not the target
        hooks = list(self._rt.store.webhooks.values())
        if not hooks:
            return
        # Snapshot now: a delivery delayed by jitter must carry the state of *its* event.
        payload = json.dumps(self._rt.render_task(task)).encode()
        cfg = self._rt.config
        faults = self._rt.faults
        stats = self._rt.store.stats.webhooks
        loop = asyncio.get_running_loop()
        for hook in hooks:
            if faults.roll(cfg.webhook_drop_rate):
                stats["dropped"] += 1
                faults.record("webhook_drop")
                continue
            copies = 1
            if faults.roll(cfg.webhook_duplicate_rate):
                stats["duplicated"] += 1
                faults.record("webhook_duplicate")
                copies = 2
            for _ in range(copies):
                delay = faults.uniform(cfg.webhook_delay_jitter)
                sender = loop.create_task(
                    self._deliver(hook.url, payload, delay), name="audioshake-emulator-webhook"
                )
                self._pending.add(sender)
                sender.add_done_callback(self._pending.discard)

    async def _deliver(self, url: str, payload: bytes, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        http = self._rt.http
        assert http is not None
        cfg = self._rt.config
        await post_with_retries(
            http,
            url,
            payload,
            user_agent=USER_AGENT,
            retries=cfg.webhook_retries,
            backoff=cfg.webhook_backoff,
            timeout=cfg.webhook_timeout,
            stats=self._rt.store.stats.webhooks,
        )

    @property
    def busy(self) -> int:
        """Deliveries not finished yet (waiting, sending or backing off)."""
        return len(self._pending)

    async def wait_idle(self, timeout: float) -> None:
        """Wait until every queued delivery is done; ``TimeoutError`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._pending)} webhook deliveries pending")
            await asyncio.wait(set(self._pending), timeout=remaining)

    async def aclose(self) -> None:
        """Cancel deliveries still pending."""
        for sender in list(self._pending):
            sender.cancel()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
