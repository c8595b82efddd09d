"""How a legacy job moves, and the callback POSTed on every change ([INFER]).

A job is ``queued`` (or ``created``), turns ``processing`` half-way through ``delay``, then
``completed`` or failed when its task's target ends. Every change POSTs the job in its
``{"job": ...}`` envelope to the job's ``callbackUrl`` (loopback hosts only), in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from ..http_common import is_loopback_url
from ..state import Target, Task
from ..webhooks import post_with_retries
from .state import Job, LegacyState

USER_AGENT = "audioshake-legacy-emulator-callbacks"


class JobEvents:
    """Status changes of legacy jobs and their callback deliveries."""

    def __init__(self, state: LegacyState) -> None:
        self._state = state
        self._deliveries: set[asyncio.Task[None]] = set()

    def created(self, job: Job) -> None:
        """Schedule the ``processing`` change of a new job."""
        loop = asyncio.get_running_loop()
        delay = self._state.config.delay
        job.processing_timer = loop.call_later(delay / 2, self._start_processing, job)

    def _start_processing(self, job: Job) -> None:
        job.processing_timer = None
        if job.target.terminal:
            return
        now = self._state.runtime().clock()
        job.phase, job.started_at, job.updated_at = "processing", now, now
        self._notify(job)

    def on_terminal(self, task: Task, target: Target) -> None:
        """The processor's callback: ``target`` of ``task`` ended, so its job did."""
        job = self._state.by_task.get(task.id)
        if job is None:
            return
        if job.processing_timer is not None:
            # Finished before "processing" was announced: one terminal change, in order.
            job.processing_timer.cancel()
            job.processing_timer = None
        now = self._state.runtime().clock()
        job.started_at = job.started_at or job.created_at
        job.updated_at = now
        self._notify(job)

    def _notify(self, job: Job) -> None:
        if job.callback_url is None:
            return
        if not is_loopback_url(job.callback_url):
            # The emulator never calls out of the machine.
            self._state.callbacks["skipped_not_loopback"] += 1
            return
        # Snapshot now: the delivery carries the state of *its* change.
        payload = json.dumps({"job": self._state.job_json(job)}).encode()
        previous = job.last_delivery
        sender = asyncio.get_running_loop().create_task(
            self._deliver(job.callback_url, payload, previous),
            name=f"audioshake-legacy-callback-{job.id}",
        )
        job.last_delivery = sender
        self._deliveries.add(sender)
        sender.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, payload: bytes, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            # In order per job: "processing" never lands after "completed".
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        http = self._state.runtime().http
        assert http is not None
        cfg = self._state.config
        await post_with_retries(
            http,
            url,
            payload,
            user_agent=USER_AGENT,
            retries=int(cfg.callback_retries),
            backoff=cfg.callback_backoff,
            timeout=cfg.callback_timeout,
            stats=self._state.callbacks,
        )

    async def wait_idle(self, timeout: float) -> None:
        """Wait until every callback delivery is over; ``TimeoutError`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._deliveries:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._deliveries)} callback deliveries pending")
            await asyncio.wait(set(self._deliveries), timeout=remaining)

    def cancel_timers(self) -> None:
        """Cancel the pending ``processing`` changes (before the processor stops)."""
        for job in self._state.jobs.values():
            if job.processing_timer is not None:
                job.processing_timer.cancel()

    async def aclose(self) -> None:
        """Cancel deliveries still pending."""
        for delivery in list(self._deliveries):
            delivery.cancel()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
