"""The seam between the batch engine and a service: what the pipeline needs, nothing more.

The engine thinks in the Tasks API's terms (an uploaded source, one task per input carrying all
targets, targets that finish with outputs). A provider maps its service onto them: the legacy
Jobs API presents one job per model as the targets of one composite task; Music.AI presents a
workflow job's ``result`` map as outputs. The pipeline (bounds, journal, token reconciliation,
atomic downloads) is shared, never forked.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..core.download import DownloadedFile
from ..core.http import PollPolicy, RetryPolicy
from ..models import Output, Target, Task

if TYPE_CHECKING:
    from ..client import AudioShake

__all__ = ["AudioShakeProvider", "BatchProvider"]


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

    async def fetch_output(
        self, task: Task, output: Output, destination: pathlib.Path, *, checksum: bool
    ) -> DownloadedFile:
        """Download one output atomically to ``destination``."""

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by route."""


class AudioShakeProvider:
    """The AudioShake Tasks API behind the batch seam."""

    name = "audioshake"
    supports_listing = True
    source_lifetime = 72 * 3600.0

    def __init__(self, client: AudioShake) -> None:
        self.client = client
        self.poll = client.poll
        self.retry = client.transport.retry
        # GET /assets lists every asset at once: fetched once per run, only when resuming.
        self._assets: dict[str, str] | None = None

    async def upload(
        self, path: pathlib.Path, name: str, progress: Callable[[int, int], None]
    ) -> str:
        """``POST /assets``; the asset id is the source reference."""
        asset = await self.client.assets.upload(path, filename=name, progress=progress)
        return asset.id

    async def find_upload(self, name: str) -> str | None:
        """Search ``GET /assets`` (every asset of the account) for ``name``."""
        if self._assets is None:
            self._assets = {a.name: a.id for a in await self.client.assets.list() if a.name}
        return self._assets.get(name)

    async def create(
        self, *, source: str | None, url: str | None, targets: Sequence[Target], metadata: str
    ) -> Task:
        """``POST /tasks`` with every target (never retried blindly)."""
        return await self.client.tasks.create(
            asset_id=source, url=url, targets=targets, metadata=metadata
        )

    async def get(self, task_id: str) -> Task:
        """``GET /tasks/{id}``."""
        return await self.client.tasks.get(task_id)

    async def page(self, *, skip: int, take: int) -> list[Task]:
        """``GET /tasks?skip&take``."""
        return await self.client.tasks.page(skip=skip, take=take)

    async def fetch_output(
        self, task: Task, output: Output, destination: pathlib.Path, *, checksum: bool
    ) -> DownloadedFile:
        """Stream one output to disk, refreshing an expired link through ``GET /tasks/{id}``."""
        return await self.client.fetch_output(task, output, destination, checksum=checksum)

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by route."""
        return dict(self.client.request_counts)
