"""The AudioShake Tasks API behind the batch engine's seam."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ..batch.inputs import AUDIO_EXTENSIONS
from ..core.download import DownloadProgress
from ..core.http import PollPolicy
from ..core.ratelimit import limiter_rate, limiter_share
from ..core.sink import OutputWriter, StoredOutput
from ..core.transport import Transport
from ..core.upload import prepare_upload
from ..models import MAX_METADATA_LENGTH, Output, Target, Task, validate_targets
from .resources import AssetsResource, TasksResource
from .wire import ASSET_LIFETIME, MAX_PAGE_SIZE, validate_upload

__all__ = ["AudioShakeProvider"]


class TasksClient(Protocol):
    """What the provider uses of :class:`~audioshake_async.AudioShake` (which builds it, so
    the provider names the shape, not the class)."""

    poll: PollPolicy
    assets: AssetsResource
    tasks: TasksResource

    @property
    def transport(self) -> Transport:
        """The shared transport."""

    @property
    def request_counts(self) -> Mapping[str, int]:
        """Requests sent so far, by route."""

    async def write_output(
        self,
        task: Task,
        output: Output,
        writer: OutputWriter,
        *,
        progress: DownloadProgress | None = None,
    ) -> StoredOutput:
        """Stream one output into ``writer`` and commit it."""


class AudioShakeProvider:
    """The AudioShake Tasks API behind the batch seam: assets, ``POST /tasks``, list pages."""

    name = "audioshake"
    supports_listing = True
    source_lifetime = ASSET_LIFETIME
    page_size = MAX_PAGE_SIZE
    metadata_limit = MAX_METADATA_LENGTH
    # The bare key: journals written before providers existed stay valid.
    journal_namespace = ""
    input_extensions = AUDIO_EXTENSIONS

    def __init__(self, client: TasksClient) -> None:
        self.client = client
        self.poll = client.poll
        self.retry = client.transport.retry
        # GET /assets lists every asset at once: fetched once per run, only when resuming.
        self._assets: dict[str, str] | None = None

    @property
    def request_rate(self) -> float | None:
        """The client's rate limit in requests/s (the batch's budget), None when unlimited."""
        return limiter_rate(self.client.transport.limiter)

    @property
    def rate_share(self) -> float:
        """The fraction of that budget this process may plan on (shared budgets: 1/members)."""
        return limiter_share(self.client.transport.limiter)

    def check_targets(self, targets: Sequence[Target]) -> tuple[Target, ...]:
        """1 to 20 targets, each with a model and distinct formats."""
        return validate_targets(targets)

    async def check_source(self, path: pathlib.Path) -> int:
        """A documented input type, not empty, at most 2 GB."""
        return (await prepare_upload(path, check=validate_upload)).size

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

    async def fetch_output(self, task: Task, output: Output, writer: OutputWriter) -> StoredOutput:
        """Stream one output into ``writer``, refreshing an expired link via ``GET /tasks/{id}``."""
        return await self.client.write_output(task, output, writer)

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by route."""
        return dict(self.client.request_counts)
