"""The seam between the batch engine and a service: what the engine asks, nothing more.

The engine thinks in the Tasks API's vocabulary (an uploaded source, one task per input carrying
all targets, targets that finish with outputs) but applies none of any service's rules: each
provider says what it accepts (sources, targets, page size, metadata length, how long an upload
stays usable, its journal namespace) and the engine asks. The legacy Jobs API presents one job
per model as the targets of one composite task; Music.AI presents a workflow job's ``result``
map as outputs. The pipeline (bounds, journal, token reconciliation, atomic downloads) is
shared, never forked.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ..core.http import PollPolicy, RetryPolicy
from ..core.sink import OutputWriter, StoredOutput
from ..models import Output, Target, Task

__all__ = ["BatchProvider", "Hints", "Listing", "SupportsBatch"]


@runtime_checkable
class BatchProvider(Protocol):
    """What the batch engine calls; every method raises this package's errors."""

    #: Short name for logs and summaries.
    name: str
    #: Default polling schedule of ``get``.
    poll: PollPolicy
    #: Backoff between ``create`` attempts.
    retry: RetryPolicy
    #: Seconds an uploaded source stays usable (a journal older than this uploads again).
    source_lifetime: float
    #: True when :meth:`page` lists recent tasks (newest first): enables token reconciliation
    #: after an ambiguous create and refreshing many tasks per request.
    supports_listing: bool
    #: The largest ``take`` :meth:`page` accepts.
    page_size: int
    #: The most characters ``create`` takes in ``metadata``.
    metadata_limit: int
    #: Prefix of this provider's journal keys: task ids of one service mean nothing to another.
    journal_namespace: str
    #: File extensions (lower case, with the dot) a directory walk picks up for this service.
    input_extensions: frozenset[str]

    def check_targets(self, targets: Sequence[Target]) -> tuple[Target, ...]:
        """The targets, checked against the service's rules before any request."""

    async def check_source(self, path: pathlib.Path) -> int:
        """The size of a local input the service accepts; ValidationError otherwise."""

    async def upload(
        self, path: pathlib.Path, name: str, progress: Callable[[int, int], None]
    ) -> str:
        """Upload a local file under ``name``; return the reference ``create`` takes."""

    async def find_upload(self, name: str) -> str | None:
        """The reference of an earlier upload named ``name``, if the service kept it.

        Uploads carry a unique name, so a run killed mid-upload can find an upload that
        completed on the server before its answer arrived, instead of sending it again.
        """

    async def create(
        self, *, source: str | None, url: str | None, targets: Sequence[Target], metadata: str
    ) -> Task:
        """Start processing one input with every target; ``metadata`` carries the token."""

    async def get(self, task_id: str) -> Task:
        """The task now (with fresh output links)."""

    async def page(self, *, skip: int, take: int) -> list[Task]:
        """Recent tasks, newest first (only when ``supports_listing``)."""

    async def fetch_output(self, task: Task, output: Output, writer: OutputWriter) -> StoredOutput:
        """Stream one output into ``writer`` and commit it (the writer computes the checksum
        and makes the output appear under its final name only when complete)."""

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by route."""


@runtime_checkable
class SupportsBatch(Protocol):
    """A service client that knows its own batch provider (``AudioShake`` does)."""

    def batch_provider(self) -> BatchProvider:
        """The provider that runs batches through this client."""


class Hints(Protocol):
    """Wake-ups for tasks in flight (webhook deliveries): hints, confirmed by one read each."""

    def subscribe(self, task_id: str, listener: Callable[[Task], None]) -> Callable[[], None]:
        """Call ``listener`` on each delivery about ``task_id``; returns the unsubscribe."""

    def confirm(self, task: Task) -> None:
        """An authenticated read showed ``task``: deliveries of what it shows are duplicates."""


class Listing(Protocol):
    """Where the watcher reads list pages and token searches look first, instead of the
    provider's own listing (e.g. tasks one leader recorded for many workers)."""

    #: Seconds a new task may be missing from the pages before the watcher reads it by
    #: itself: the listing's own refresh interval, with margin.
    grace: float

    async def page(self, *, skip: int, take: int) -> list[Task]:
        """Snapshots of tasks in flight, a page at a time."""

    async def find_token(self, token: str) -> Task | None:
        """A known task carrying ``token`` in its metadata."""
