"""Music.AI behind the batch engine's seam: one workflow job per input."""

from __future__ import annotations

import builtins
import datetime as dt
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from .. import errors
from ..batch.inputs import AUDIO_EXTENSIONS
from ..core.files import json_bytes
from ..core.ratelimit import limiter_rate, limiter_share
from ..core.sink import OutputWriter, StoredOutput
from ..core.upload import prepare_upload
from ..models import (
    MAX_METADATA_LENGTH,
    Output,
    Target,
    TargetError,
    TargetResult,
    Task,
    validate_targets,
)
from .client import MusicAI
from .files import EXTRA_AUDIO_EXTENSIONS, check_upload
from .models import FAILED, METADATA_KEY, PAGE_SIZE, SUCCEEDED, Job, JobError, remember

# --------------------------------------------------------------------------- batch provider

#: Link of the synthetic output that carries a job's non-URL values into ``result.json``.
_VALUES_SCHEME = "musicai-values:"
_STATUS_TO_TARGET = {SUCCEEDED: "completed", FAILED: "error"}


def _job_name(metadata: str) -> str:
    try:
        data = json.loads(metadata)
    except ValueError:
        data = None
    name = data.get("input") if isinstance(data, dict) else None
    return str(name)[:200] if name else "audioshake-async job"


def _newest_first(jobs: Sequence[Job]) -> builtins.list[Job]:
    epoch = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return sorted(jobs, key=lambda j: j.created_at or epoch, reverse=True)


def _order_of(jobs: Sequence[Job]) -> str | None:
    """``"newest"`` or ``"oldest"`` first, from the creation dates at both ends of a page."""
    stamps = [j.created_at for j in jobs if j.created_at is not None]
    if len(stamps) < 2 or stamps[0] == stamps[-1]:
        return None
    return "newest" if stamps[0] > stamps[-1] else "oldest"


class MusicAIProvider:
    """Music.AI behind the batch engine's seam: one workflow job per input.

    A job maps onto a :class:`~audioshake_async.models.Task` with one target (the workflow)
    whose outputs are the URL entries of ``result`` (name = key, format = extension), plus a
    ``result.json`` output holding the non-URL values when there are any. The engine's
    metadata string (its client token) travels in the job's ``metadata`` object under
    ``"audioshakeAsync"``.

    ``GET /job`` is documented as "sorted by creation date" without a direction, while the
    engine's token reconciliation wants the newest jobs first. :meth:`page` therefore learns
    the direction from the creation dates of a full first page; oldest-first listings are read
    from their end (found with an exponential then binary search on page numbers, so a large
    account costs O(log n) requests, not a full walk). ``workflow`` narrows every listing to
    that workflow's jobs.
    """

    name = "musicai"
    supports_listing = True
    #: Signed upload URLs are "temporary", lifetime undocumented: an hour is assumed.
    source_lifetime = 3600.0
    page_size = PAGE_SIZE
    #: Music.AI documents no limit on ``metadata``; the Tasks API's 4096 characters are kept
    #: as a polite bound on the engine's string.
    metadata_limit = MAX_METADATA_LENGTH
    journal_namespace = "musicai"
    #: Music.AI documents no list of input types (the workflow judges the file): a directory
    #: walk also picks up the common audio types the Tasks API does not list.
    input_extensions = AUDIO_EXTENSIONS | EXTRA_AUDIO_EXTENSIONS

    def __init__(self, client: MusicAI, *, workflow: str | None = None) -> None:
        self.client = client
        self.workflow = workflow
        self.poll = client.poll
        self.retry = client.transport.retry
        self._order: str | None = None
        self._total: int | None = None
        #: Server pages read during the current sweep, by (page number, size).
        self._pages: dict[tuple[int, int], builtins.list[Job]] = {}
        self._values: dict[str, dict[str, Any]] = {}

    @property
    def request_rate(self) -> float | None:
        """The client's rate limit in requests/s (the batch's budget), None when unlimited."""
        return limiter_rate(self.client.transport.limiter)

    @property
    def rate_share(self) -> float:
        """The fraction of that budget this process may plan on (shared budgets: 1/members)."""
        return limiter_share(self.client.transport.limiter)

    def check_targets(self, targets: Sequence[Target]) -> tuple[Target, ...]:
        """Exactly one target: its ``model`` is the workflow slug."""
        checked = validate_targets(targets)
        self._workflow_of(checked)
        return checked

    async def check_source(self, path: pathlib.Path) -> int:
        """Any readable, non-empty file (see :func:`check_upload`)."""
        return (await prepare_upload(path, check=check_upload)).size

    async def upload(
        self, path: pathlib.Path, name: str, progress: Callable[[int, int], None]
    ) -> str:
        """``GET /upload`` + streamed PUT; the ``downloadUrl`` is the source reference."""
        return await self.client.upload(path, progress=progress)

    async def find_upload(self, name: str) -> str | None:
        """Music.AI uploads are anonymous: an interrupted upload cannot be found again."""
        return None

    def _workflow_of(self, targets: Sequence[Target]) -> str:
        if len(targets) != 1:
            raise errors.ValidationError("a Music.AI job runs one workflow: give one target")
        return targets[0].model

    async def create(
        self, *, source: str | None, url: str | None, targets: Sequence[Target], metadata: str
    ) -> Task:
        """``POST /job`` with ``params.inputUrl`` (never retried after sending)."""
        workflow = self._workflow_of(targets)
        input_url = source or url
        if not input_url:
            raise errors.ValidationError("a Music.AI job needs an input URL")
        job_id = await self.client.jobs.create(
            _job_name(metadata),
            workflow,
            {"inputUrl": input_url},
            metadata={METADATA_KEY: metadata},
        )
        target = TargetResult(id=job_id, model=workflow, status="processing", formats=("auto",))
        return Task(id=job_id, targets=(target,), metadata=metadata, url=input_url)

    async def get(self, task_id: str) -> Task:
        """``GET /job/{id}``: one request per poll, and the record carries the result URLs
        (polling ``/status`` first would add a request per job)."""
        return await self._to_task(await self.client.jobs.get(task_id))

    async def _to_task(self, job: Job) -> Task:
        outputs: builtins.list[Output] = []
        error = None
        if job.status == SUCCEEDED:
            outputs = await self.client.outputs(job)
            values = job.values
            if values:
                remember(self._values, job.id, values)
                outputs.append(Output("result", "json", _VALUES_SCHEME + job.id))
        elif job.status == FAILED:
            detail = job.error or JobError()
            error = TargetError(code=detail.code, message=detail.describe())
        target = TargetResult(
            id=job.id,
            model=job.workflow or self.workflow or "",
            status=_STATUS_TO_TARGET.get(job.status, "processing"),
            formats=("auto",),
            output=tuple(outputs),
            error=error,
        )
        token = job.metadata.get(METADATA_KEY)
        return Task(
            id=job.id,
            targets=(target,),
            created_at=job.created_at,
            completed_at=job.completed_at,
            metadata=token if isinstance(token, str) else None,
            url=job.workflow_params.get("inputUrl"),
        )

    # ------------------------------------------------------------------ listing

    async def _server_page(self, number: int, size: int) -> builtins.list[Job]:
        cached = self._pages.get((number, size))
        if cached is not None:
            return cached
        workflow = [self.workflow] if self.workflow else None
        jobs = await self.client.jobs.page(page=number, size=size, workflow=workflow)
        self._pages[(number, size)] = jobs
        return jobs

    async def _count(self, size: int) -> int:
        """Jobs listed, found from the first short page: exponential then binary search."""
        first = await self._server_page(0, size)
        if len(first) < size:
            return len(first)
        full, short = 0, 1
        while len(await self._server_page(short, size)) == size:
            full, short = short, short * 2
        while short - full > 1:
            middle = (full + short) // 2
            if len(await self._server_page(middle, size)) == size:
                full = middle
            else:
                short = middle
        return short * size + len(await self._server_page(short, size))

    async def _order_from_ends(self, first: Sequence[Job], size: int) -> str | None:
        """The direction when a whole first page shares one timestamp: compare with the last
        job listed (None while every job listed shares it: then order does not matter)."""
        self._total = await self._count(size)
        last = await self._server_page((self._total - 1) // size, size)
        return _order_of([first[0], last[-1]]) if last else None

    async def _ascending_slice(self, start: int, stop: int, size: int) -> builtins.list[Job]:
        first, last = start // size, (stop - 1) // size
        jobs: builtins.list[Job] = []
        for number in range(first, last + 1):
            jobs.extend(await self._server_page(number, size))
        return jobs[start - first * size : stop - first * size]

    async def newest_jobs(self, *, skip: int, take: int) -> builtins.list[Job]:
        """Jobs ``skip .. skip+take`` counting from the newest, whatever the server's order."""
        if skip < 0 or take < 1:
            raise errors.ValidationError("skip must be >= 0 and take >= 1")
        if skip == 0:
            # A new sweep: pages read by the previous one may have shifted since.
            self._pages.clear()
            self._total = None
        if self._order != "oldest" and skip % take == 0:
            jobs = await self._server_page(skip // take, take)
            if self._order is None and skip == 0:
                if len(jobs) < take:
                    # Everything is on this page: order it here, no direction needed.
                    return _newest_first(jobs)
                self._order = _order_of(jobs) or await self._order_from_ends(jobs, take)
            if self._order != "oldest":
                return jobs
        if self._total is None:
            self._total = await self._count(take)
        stop = self._total - skip
        if stop <= 0:
            return []
        return list(reversed(await self._ascending_slice(max(0, stop - take), stop, take)))

    async def page(self, *, skip: int, take: int) -> builtins.list[Task]:
        """Recent jobs as tasks, newest first (token reconciliation, list refresh)."""
        return [await self._to_task(job) for job in await self.newest_jobs(skip=skip, take=take)]

    # ------------------------------------------------------------------ downloads

    async def fetch_output(self, task: Task, output: Output, writer: OutputWriter) -> StoredOutput:
        """Stream one output into ``writer`` (URL refreshed via ``GET /job/{id}`` when
        expired), or write the non-URL values as ``result.json``."""
        if not output.link.startswith(_VALUES_SCHEME):
            return await self.client.write_output(task.id, output, writer)
        values = self._values.pop(task.id, None)
        if values is None:
            values = (await self.client.jobs.get(task.id)).values
        try:
            await writer.write([json_bytes(values)])
        except BaseException:
            await writer.abort()
            raise
        return await writer.commit()

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by route."""
        return dict(self.client.request_counts)
