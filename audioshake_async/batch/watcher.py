"""One loop that refreshes every task in flight: list sweeps or single reads, and hints.

Many tasks in flight are swept: every ``GET /tasks`` page on the interval the poll share of the
budget allows (a sweep costs per page, not per task, so no task keeps its own backoff and all
are seen every sweep). A few tasks (or no listing) are read one by one with backoff. Every
refresh request (hint confirmations included) is charged to the flow's poll budget.

A webhook delivery is a hint: it names (target, status) pairs that a read must confirm. A
delivery showing targets still running waits ``options.hint_coalesce`` seconds for their deliveries
(each target has its own), so one read usually confirms the whole task; hints due together
ride on list pages. A read that does not show a hinted change (stale snapshots are documented;
a forged delivery never shows) is repeated with backoff, ``HINT_RETRIES`` times, then the task
falls back to the safety poll. Every read is reported to the receiver, which deduplicates
confirmed changes only.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import time
from typing import Protocol

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream

from .. import errors
from ..core.http import PollPolicy
from ..models import Task, merge_task_snapshot
from .flow import Flow
from .items import DownloadJob, Item, Origin
from .options import BatchOptions
from .seam import BatchProvider

logger = logging.getLogger("audioshake_async.batch")


class Stages(Protocol):
    """What the watcher needs of the pipeline: its settings and the stages it hands items to.

    A protocol, not the pipeline class: the pipeline builds the watcher, so the watcher must
    not import it back.
    """

    provider: BatchProvider
    options: BatchOptions
    poll: PollPolicy
    flow: Flow

    def plan_downloads(self, item: Item, task: Task) -> list[DownloadJob]:
        """Download jobs for the targets that completed since the last look."""

    async def fail(self, item: Item, error: BaseException | str) -> None:
        """Record and report the item as failed."""

    async def maybe_finish(self, item: Item) -> None:
        """Finish the item once its task is done and no download is pending."""

    async def recreate(self, item: Item) -> None:
        """Create again a task that is gone."""


#: Backoff of the reads that did not (yet) show a delivery's change: 0.25, 0.5, 1, 2, 4, 8 s.
HINT_RETRY_BASE = 0.25
HINT_RETRY_MAX = 8.0
HINT_RETRIES = 6


def _terminal_keys(task: Task | None) -> frozenset[tuple[str, str]]:
    if task is None:
        return frozenset()
    return frozenset((t.id, t.status) for t in task.targets if t.is_terminal)


#: Errors after which reading a task again cannot help. An answer too large or too deep to
#: parse is one: the item fails at once (a rerun resumes the task) instead of re-reading a
#: hostile answer until the unreachable timeout.
_REFUSED = (
    errors.AuthenticationError,
    errors.PermissionDeniedError,
    errors.BadRequestError,
    errors.ResponseParseError,
)


class Watcher:
    """Refreshes every task in flight from one loop: swept together, or each on its backoff."""

    def __init__(self, pipeline: Stages) -> None:
        self.pipeline = pipeline
        self.pending: dict[str, Item] = {}
        self._schedule: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._wake = anyio.Event()
        self._producers_done = False
        self.downloads: MemoryObjectSendStream[DownloadJob] | None = None
        self._recreating = 0
        self._group: anyio.abc.TaskGroup | None = None
        #: When the next list sweep is due (sweep mode), and the gap between sweeps.
        self._next_sweep = -math.inf
        self._sweep_every = 0.0
        pipeline.flow.oldest_age = self.oldest_age

    def oldest_age(self) -> float:
        """Seconds the longest-watched task has been in flight (0 with none)."""
        for item in self.pending.values():
            # Insertion order: the first entry is the oldest still watched.
            return time.monotonic() - item.watch.started
        return 0.0

    def _sweeping(self) -> bool:
        return self._list_is_cheaper(len(self.pending))

    async def add(self, item: Item) -> None:
        """Start watching an item whose task exists."""
        assert item.task_id is not None
        item.watch.started = item.watch.last_read_ok = time.monotonic()
        if item.task is not None:
            # The create response is a snapshot too: nothing is due before the first interval.
            if await self._absorb(item, item.task):
                return
            due = self._next_due(item)
        else:
            due = time.monotonic()
        self.pending[item.task_id] = item
        self._schedule_at(item, due)
        receiver = self.pipeline.options.webhooks
        if receiver is not None:
            task_id = item.task_id
            item.watch.unsubscribe = receiver.subscribe(
                task_id, lambda delivery: self.hint(task_id, delivery)
            )
        self._wake.set()

    def hint(self, task_id: str, delivery: Task | None = None) -> None:
        """A delivery says the task changed: confirm it with a read soon.

        Its news (pairs no read has shown) is remembered even when a read is due or in flight:
        that read may have been answered before the change. A delivery that still shows running
        targets waits a little for theirs, so one read confirms them all.
        """
        item = self.pending.get(task_id)
        if item is None or item.finished:
            return
        announced = _terminal_keys(delivery) if delivery is not None else frozenset()
        news = announced - _terminal_keys(item.task)
        if delivery is not None and not news:
            return  # nothing a read has not shown already
        item.watch.hint_keys |= news
        item.watch.hint_tries = 0
        coalesce = delivery is not None and not delivery.is_done
        due = time.monotonic() + (self.pipeline.options.hint_coalesce if coalesce else 0.0)
        if item.watch.next_due > due:
            item.watch.hinted = True
            self._schedule_at(item, due)
            self._wake.set()

    def _interval(self, item: Item) -> float:
        if self._sweeping() and math.isfinite(self._next_sweep):
            # Rides on the next sweep; due on its own only if sweeping stops before then.
            return max(0.0, self._next_sweep - time.monotonic()) + self._sweep_every
        if self.pipeline.options.webhooks is not None:
            return self.pipeline.options.safety_poll
        return self.pipeline.poll.interval(item.watch.polls + 1, random.random())

    def _leave(self, item: Item) -> None:
        assert item.task_id is not None
        self.pending.pop(item.task_id, None)
        if item.watch.unsubscribe is not None:
            item.watch.unsubscribe()
            item.watch.unsubscribe = None

    def close(self) -> None:
        """No more items will be added."""
        self._producers_done = True
        self._wake.set()

    def _schedule_at(self, item: Item, due: float) -> None:
        assert item.task_id is not None
        # Heap entries are never removed; one whose time is not the item's next_due is stale.
        item.watch.next_due = due
        heapq.heappush(self._schedule, (due, next(self._sequence), item.task_id))

    def _pop_until(self, limit: float) -> list[Item]:
        items = []
        while self._schedule and self._schedule[0][0] <= limit:
            due, _, task_id = heapq.heappop(self._schedule)
            item = self.pending.get(task_id)
            if item is not None and not item.finished and item.watch.next_due == due:
                items.append(item)
        return items

    async def run(self) -> None:
        """Poll until every item is finished and no more will come."""
        assert self.downloads is not None
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                await self._loop()
        finally:
            for item in list(self.pending.values()):
                if item.watch.unsubscribe is not None:
                    item.watch.unsubscribe()

    async def _loop(self) -> None:
        assert self.downloads is not None
        budget = self.pipeline.flow.polls
        async with self.downloads:
            while True:
                if self._producers_done and not self.pending and not self._recreating:
                    return
                now = time.monotonic()
                sweeping = self._sweeping()
                if sweeping and not math.isfinite(self._next_sweep):
                    self._next_sweep = now  # the first sweep is due at once
                next_sweep = max(self._next_sweep, budget.ready_at(now)) if sweeping else math.inf
                next_read = self._schedule[0][0] if self._schedule else math.inf
                if math.isfinite(next_read):
                    next_read = max(next_read, budget.ready_at(now))
                wake_at = min(next_sweep, next_read)
                if wake_at > now:
                    self._wake = anyio.Event()
                    with anyio.move_on_after(wake_at - now):
                        await self._wake.wait()
                    continue
                if next_sweep <= now:
                    await self._sweep(now)
                    continue
                due = self._pop_until(now)
                if sweeping:
                    # Only confirmations of deliveries are read one by one; the rest ride
                    # on the next sweep.
                    confirming = [i for i in due if i.watch.hinted or i.watch.hint_keys]
                    for item in due:
                        if not (item.watch.hinted or item.watch.hint_keys):
                            self._schedule_at(item, self._next_sweep + self._sweep_every)
                    due = confirming
                # Confirmations due together ride on list pages when those cost fewer requests.
                await self._refresh(due, by_list=self._list_is_cheaper(len(due)))

    async def _sweep(self, now: float) -> None:
        """Every task in flight through list pages; the next sweep after the share's interval."""
        flow = self.pipeline.flow
        options = self.pipeline.options
        # With webhooks the deliveries drive the waiting; sweeps are the safety poll.
        floor = options.safety_poll if options.webhooks is not None else None
        if options.listing is not None and floor is None:
            # Pages of a shared listing come from the database, not the API: no poll budget
            # to keep to; the leader's own sweeps keep to the account's.
            interval = flow.polls.min_interval
        else:
            interval = flow.polls.sweep_interval(
                self._pages_estimate(), creating=flow.creating, floor=floor
            )
        self._sweep_every = interval
        self._next_sweep = now + interval
        await self._refresh([i for i in self.pending.values() if not i.finished], by_list=True)

    def _start_recreate(self, item: Item) -> None:
        assert self._group is not None
        self._recreating += 1

        async def run() -> None:
            try:
                await self.pipeline.recreate(item)
            finally:
                self._recreating -= 1
                self._wake.set()

        self._group.start_soon(run)

    def _pages_estimate(self) -> int:
        return math.ceil(len(self.pending) / self.pipeline.provider.page_size) + 1

    def _list_is_cheaper(self, wanted: int) -> bool:
        """A list sweep costs about one request per page of tasks in flight (none at all from
        a shared listing: its pages come from the database)."""
        options = self.pipeline.options
        if not (options.list_refresh and self.pipeline.provider.supports_listing):
            return False
        return options.listing is not None or wanted > 2 * self._pages_estimate()

    async def _refresh(self, due: list[Item], *, by_list: bool) -> None:
        if not due:
            return
        for item in due:
            item.watch.hinted = False  # a delivery from now on schedules a read of its own
        options = self.pipeline.options
        provider = self.pipeline.provider
        snapshots: dict[str, Task] = {}
        if by_list:
            snapshots = await self._refresh_by_list(
                {item.task_id for item in due if item.task_id}, self._pages_estimate()
            )
        missing = [item for item in due if item.task_id not in snapshots]
        shared = options.listing
        if by_list and shared is not None:
            # A task the leader has not listed yet will be on its next sweep: reading it here
            # would cost a request per new task in every worker. Past the grace (no leader, or
            # its sweeps fall short), and for deliveries to confirm, read it.
            now = time.monotonic()
            waiting = {
                item.task_id
                for item in missing
                if now - item.watch.started < shared.grace and not item.watch.hint_keys
            }
            missing = [item for item in missing if item.task_id not in waiting]
        limiter = anyio.CapacityLimiter(options.poll_concurrency)
        failures: dict[str, BaseException] = {}

        async def get_one(item: Item) -> None:
            assert item.task_id is not None
            async with limiter:
                self.pipeline.flow.charge_polls(1)
                try:
                    snapshots[item.task_id] = await provider.get(item.task_id)
                except errors.AudioShakeError as exc:
                    failures[item.task_id] = exc

        if missing:
            async with anyio.create_task_group() as group:
                for item in missing:
                    group.start_soon(get_one, item)
        refreshed = set()
        for item in due:
            assert item.task_id is not None
            refreshed.add(item.task_id)
            snapshot = snapshots.get(item.task_id)
            if snapshot is not None:
                if await self._absorb(item, snapshot):
                    continue
            else:
                error = failures.get(item.task_id)
                if isinstance(error, errors.NotFoundError):
                    self._leave(item)
                    if item.origin is Origin.RESUMED:
                        # An earlier run's task is gone and its outputs are missing: the work
                        # was never delivered, so it is created again (once).
                        logger.info(
                            "task %s of %s is gone; creating it again",
                            item.task_id,
                            item.display,
                            extra={"task_id": item.task_id, "input": item.display},
                        )
                        self._start_recreate(item)
                    else:
                        await self.pipeline.fail(item, f"task {item.task_id} no longer exists")
                    continue
                if error is not None:
                    logger.info(
                        "refresh of task %s failed: %s",
                        item.task_id,
                        error,
                        extra={
                            "task_id": item.task_id,
                            "input": item.display,
                            "status": getattr(error, "status", None),
                            "request_id": getattr(error, "request_id", None),
                        },
                    )
                    unreachable = time.monotonic() - item.watch.last_read_ok
                    if isinstance(error, _REFUSED) or (
                        unreachable >= self.pipeline.options.unreachable_timeout
                    ):
                        self._leave(item)
                        await self.pipeline.fail(
                            item, f"task {item.task_id} could not be read: {error}"
                        )
                        continue
            self._reschedule(item)
        # Tasks seen on a page although not due yet count as refreshed too.
        for task_id, snapshot in snapshots.items():
            other = self.pending.get(task_id)
            if other is None or task_id in refreshed or other.finished:
                continue
            if not await self._absorb(other, snapshot):
                self._reschedule(other)

    async def _refresh_by_list(self, wanted: set[str], pages_estimate: int) -> dict[str, Task]:
        found: dict[str, Task] = {}
        page_size = self.pipeline.provider.page_size
        shared = self.pipeline.options.listing
        # A shared listing (many workers) serves pages from the database: no API request.
        source = shared or self.pipeline.provider
        limit = max(3, 2 * pages_estimate)
        # Pages in waves of up to poll_concurrency at once: each page waits its turn in the
        # rate limiter behind the creates, so one page at a time would make a sweep of many
        # pages take minutes and completions be noticed late.
        wave = max(1, min(self.pipeline.options.poll_concurrency, pages_estimate))
        pages: dict[int, list[Task]] = {}
        failed: list[BaseException] = []

        async def fetch(number: int) -> None:
            if shared is None:
                self.pipeline.flow.charge_polls(1)
            try:
                pages[number] = await source.page(skip=number * page_size, take=page_size)
            except errors.AudioShakeError as exc:
                failed.append(exc)

        start = 0
        while start < limit:
            numbers = range(start, min(limit, start + wave))
            async with anyio.create_task_group() as group:
                for number in numbers:
                    group.start_soon(fetch, number)
            short = False
            for number in numbers:
                page = pages.get(number)
                if page is None:
                    break
                for task in page:
                    if task.id in self.pending:
                        found[task.id] = task
                if len(page) < page_size:
                    short = True
                    break
            if failed:
                logger.info("list refresh failed (%s); falling back to single gets", failed[0])
                break
            if short or wanted <= found.keys():
                break
            start += wave
        return found

    def _next_due(self, item: Item) -> float:
        """When to read the task next: its interval, but never past its timeout."""
        delay = self._interval(item)
        timeout = self.pipeline.options.task_timeout
        if timeout is not None:
            remaining = item.watch.started + timeout - time.monotonic()
            delay = max(0.0, min(delay, remaining))
        return time.monotonic() + delay

    def _reschedule(self, item: Item) -> None:
        assert item.task_id is not None
        item.watch.polls += 1
        watch = item.watch
        if watch.hint_keys and watch.hint_tries < HINT_RETRIES:
            # The read did not show what a delivery announced: a stale snapshot, most likely.
            watch.hint_tries += 1
            delay = min(HINT_RETRY_MAX, HINT_RETRY_BASE * 2 ** (watch.hint_tries - 1))
            self._schedule_at(item, time.monotonic() + delay * (0.75 + 0.5 * random.random()))
            return
        if watch.hint_keys:
            logger.info(
                "task %s: a delivery was not confirmed by %d reads; back to the safety poll",
                item.task_id,
                HINT_RETRIES,
            )
            watch.hint_keys = frozenset()
        self._schedule_at(item, self._next_due(item))

    async def _absorb(self, item: Item, snapshot: Task) -> bool:
        """Take in a snapshot; dispatch new outputs; True when the item left the watch."""
        assert item.task_id is not None
        item.watch.last_read_ok = time.monotonic()
        item.task = merge_task_snapshot(
            item.task if item.task is not None and item.task.id == snapshot.id else None, snapshot
        )
        if item.watch.hint_keys:
            item.watch.hint_keys -= _terminal_keys(item.task)
        receiver = self.pipeline.options.webhooks
        if receiver is not None:
            receiver.confirm(snapshot)
        jobs = self.pipeline.plan_downloads(item, item.task)
        for job in jobs:
            assert self.downloads is not None
            await self.downloads.send(job)
        if item.task.is_done:
            if item.origin is not Origin.RESUMED:
                # A resumed task was created before this run: its age here means nothing.
                self.pipeline.flow.task_done(time.monotonic() - item.watch.started)
            self._leave(item)
            item.settle()
            await self.pipeline.maybe_finish(item)
            return True
        timeout = self.pipeline.options.task_timeout
        if timeout is not None and time.monotonic() - item.watch.started >= timeout:
            self._leave(item)
            await self.pipeline.fail(
                item, errors.TaskTimeoutError(item.task_id, timeout, item.task)
            )
            return True
        return False
