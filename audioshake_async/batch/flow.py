"""The flow state of one batch run: the in-flight window gate, the upload and create gates,
the poll budget, and the figures (:class:`~.events.FlowUpdate`) they report.

The rules live in :mod:`.window` (pure); this module holds their state and the resizable gates
the stages wait on.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from .events import FlowUpdate
from .options import BatchOptions
from .window import HARD_CEILING, ConcurrencyController, PollBudget, WindowEstimator

__all__ = ["Flow", "Gate"]

#: Default documented account limit (requests/s) when the provider does not say its own.
DEFAULT_RATE = 60.0
#: Workers started per adaptive stage: the most its gate may ever let through at once.
STAGE_CEILING = 64
#: Seconds a create refused for a concurrency limit waits, at most, for a task to finish.
REFUSAL_WAIT = 30.0
#: Bytes of upload that count as one unit of latency (small files cost a request, big ones
#: their bytes).
UPLOAD_UNIT = 1 << 20


class Gate:
    """A semaphore whose limit can change while tasks wait on it (one ``changed`` event)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0
        #: Tasks blocked in :meth:`acquire` (work waiting for room: demand).
        self.waiting = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def resize(self, limit: int) -> None:
        """Let up to ``limit`` through (holders above it finish; no new ones until below)."""
        limit = max(1, limit)
        grew = limit > self.limit
        self.limit = limit
        if grew:
            self._notify()

    async def acquire(self, refresh: Callable[[], int] | None = None) -> None:
        """Wait for room; ``refresh`` (when given) recomputes the limit every second."""
        while True:
            if refresh is not None:
                self.limit = max(1, refresh())
            if self.held < self.limit:
                self.held += 1
                return
            changed = self._changed
            self.waiting += 1
            try:
                with anyio.move_on_after(1.0 if refresh is not None else math.inf):
                    await changed.wait()
            finally:
                self.waiting -= 1

    def release(self) -> None:
        """Give the room back."""
        self.held -= 1
        self._notify()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """``async with gate.hold():`` acquire and release."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class Flow:
    """Window, gates, poll budget and counters of one run."""

    def __init__(
        self,
        options: BatchOptions,
        rate: float | None,
        *,
        sweep_bounds: tuple[float, float] = (1.0, 30.0),
        share: Callable[[], float] = lambda: 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``sweep_bounds``: the shortest and longest gap between list sweeps (the poll
        policy's first and longest interval). ``share``: the fraction of ``rate`` this run may
        plan on now (a budget shared by several processes: 1 / members); read again as the
        window is recomputed, so workers joining or leaving resize it."""
        self.rate = float(rate or DEFAULT_RATE)
        self.clock = clock
        self._share = share
        self.share = 1.0
        self.started = clock()
        self.estimator = WindowEstimator(
            self.rate,
            create_share=1.0 - options.poll_share,
            cap=options.max_in_flight,
            ceiling=HARD_CEILING,
        )
        self.polls = PollBudget(
            self.rate,
            share=options.poll_share,
            min_interval=sweep_bounds[0],
            max_interval=max(sweep_bounds),
        )
        self.uploads = self._controller(options.upload_concurrency, 4)
        self.creates = self._controller(options.create_concurrency, 16)
        self.upload_gate = Gate(self.uploads.limit)
        self.create_gate = Gate(self.creates.limit)
        self.window_gate = Gate(self.estimator.window())
        #: Age in seconds of the oldest task in flight (the watcher sets it).
        self.oldest_age: Callable[[], float] = lambda: 0.0
        #: Creates still to come (False once the create stage ended).
        self.creating = True
        self.upload_requests = 0
        self.create_requests = 0
        self.poll_requests = 0
        self.created = 0
        self.peak_window = self.window_gate.limit
        self.peak_in_flight = 0
        self._last_update = -math.inf
        self._completed = anyio.Event()

    @staticmethod
    def _controller(fixed: int | None, initial: int) -> ConcurrencyController:
        if fixed is not None:
            return ConcurrencyController(fixed, fixed, fixed=True)
        return ConcurrencyController(initial, STAGE_CEILING)

    @property
    def upload_workers(self) -> int:
        """Upload tasks to start (the most the gate can ever allow)."""
        return self.uploads.ceiling

    @property
    def create_workers(self) -> int:
        """Create tasks to start."""
        return self.creates.ceiling

    def now(self) -> float:
        """The flow's clock."""
        return self.clock()

    # ------------------------------------------------------------------ window

    @property
    def planned_rate(self) -> float:
        """Requests/s this run plans on: its share of the budget."""
        return self.rate * self.share

    def refresh_share(self) -> None:
        """Read the share again; the window and the poll budget plan on ``rate x share``."""
        try:
            share = float(self._share())
        except Exception:  # a broken share source must not stop the batch: plan on it all
            share = 1.0
        if not 0 < share <= 1:
            share = 1.0
        if share != self.share:
            self.share = share
            self.estimator.rate = self.polls.rate = self.planned_rate

    def current_window(self) -> int:
        """The window now (Little's law, capped); remembers its peak."""
        self.refresh_share()
        self.estimator.observe_cost(self.upload_requests + self.create_requests, self.created)
        size = self.estimator.window(self.oldest_age())
        self.peak_window = max(self.peak_window, size)
        return size

    async def admit(self) -> None:
        """Wait until the window has room for one more item."""
        await self.window_gate.acquire(self.current_window)
        self.peak_in_flight = max(self.peak_in_flight, self.window_gate.held)

    def finished(self) -> None:
        """An admitted item reached its result."""
        self.window_gate.release()

    def task_done(self, seconds_in_flight: float) -> None:
        """A task left the watch after ``seconds_in_flight``."""
        self.estimator.observe_done(seconds_in_flight)
        self._completed.set()
        self._completed = anyio.Event()

    def limit_signal(self) -> None:
        """The service refused a create for too much at once: shrink the window and creates."""
        if self.estimator.signal_limit(self.window_gate.held, self.now()):
            self.create_gate.resize(self.creates.congested())
            self.window_gate.resize(self.current_window())

    async def after_refusal(self, backoff: float) -> None:
        """A create was refused (429): a concurrency limit lifts when a task finishes, so
        wait for the next one to finish (at most ``REFUSAL_WAIT`` s), then ``backoff``."""
        completed = self._completed
        with anyio.move_on_after(REFUSAL_WAIT):
            await completed.wait()
        await anyio.sleep(backoff)

    # ------------------------------------------------------------------ stages

    def upload_done(self, seconds: float, size: int, *, demand: bool) -> None:
        """One upload ended after ``seconds`` (``demand``: more were waiting)."""
        self.upload_requests += 1
        unit = 1.0 + size / UPLOAD_UNIT
        self.upload_gate.resize(self.uploads.record(seconds / unit, demand=demand))

    def create_done(self, seconds: float, *, demand: bool) -> None:
        """One item's create ended after ``seconds`` (its requests are counted as sent)."""
        self.created += 1
        self.estimator.on_created()
        self.create_gate.resize(self.creates.record(seconds, demand=demand))

    def congested(self, stage: str) -> None:
        """A transient failure in ``stage`` (``upload`` or ``create``): back off."""
        if stage == "upload":
            self.upload_gate.resize(self.uploads.congested())
        else:
            self.create_gate.resize(self.creates.congested())

    # ------------------------------------------------------------------ polling

    def charge_polls(self, requests: int) -> None:
        """Refresh requests just sent (pages, single reads)."""
        self.poll_requests += requests
        self.refresh_share()
        self.polls.charge(requests, self.now(), creating=self.creating)

    def creates_ended(self) -> None:
        """No more creates: refreshes may use most of the budget."""
        self.creating = False
        self.polls.relax(self.now())

    # ------------------------------------------------------------------ figures

    def update(self, *, final: bool = False) -> FlowUpdate | None:
        """A :class:`FlowUpdate` at most once a second (always when ``final``)."""
        now = self.now()
        if not final and now - self._last_update < 1.0:
            return None
        self._last_update = now
        return FlowUpdate(
            elapsed=now - self.started,
            rate=self.planned_rate,
            workers=max(1, round(1 / self.share)),
            window=self.window_gate.limit,
            peak_window=self.peak_window,
            in_flight=self.window_gate.held,
            peak_in_flight=self.peak_in_flight,
            processing_time=self.estimator.time_in_flight,
            upload_concurrency=self.uploads.limit,
            create_concurrency=self.creates.limit,
            upload_requests=self.upload_requests,
            create_requests=self.create_requests,
            poll_requests=self.poll_requests,
            limit_signals=self.estimator.limit_signals,
            final=final,
        )
