"""The Jobs API behind the batch engine's seam, with a crash-safe ledger of created jobs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import attrs

from .. import errors
from ..batch.inputs import AUDIO_EXTENSIONS
from ..core.ratelimit import limiter_rate, limiter_share
from ..core.sink import OutputWriter, StoredOutput
from ..core.upload import prepare_upload
from ..models import MAX_METADATA_LENGTH, Output, Target, Task, validate_targets
from ..tasks.wire import ASSET_LIFETIME, validate_upload
from .client import LegacyClient
from .composite import JobKey, Rejected, composite_task, job_marker, parse_job_marker, split_task_id
from .models import TOKEN_KEY, Job

logger = logging.getLogger("audioshake_async.legacy")


# --------------------------------------------------------------------------- provider


def _token_of(metadata: str) -> str:
    """The engine's ``client_token`` from its metadata JSON (a digest of any other string)."""
    try:
        data = json.loads(metadata)
    except (TypeError, ValueError):
        data = None
    token = data.get("client_token") if isinstance(data, dict) else None
    if isinstance(token, str) and token:
        return token
    return hashlib.sha256(str(metadata).encode()).hexdigest()[:32]


class _Ledger:
    """Append-only JSON lines recording each job as soon as it exists (fsynced).

    The engine journals a task id only once :meth:`LegacyProvider.create` returns; a run
    killed while it creates the jobs of an input would create them all again on resume.
    With the ledger, the resumed run finds the jobs its token already created.
    """

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def load(self) -> tuple[dict[str, dict[JobKey, str]], dict[str, str]]:
        jobs: dict[str, dict[JobKey, str]] = {}
        assets: dict[str, str] = {}
        if not self.path.exists():
            return jobs, assets
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    token = entry["t"]
                    if "a" in entry:
                        assets[str(token)] = str(entry["a"])
                    else:
                        model, variant, fmt = entry["k"]
                        jobs.setdefault(str(token), {})[(model, variant, fmt)] = str(entry["j"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash: the entries before it still count
        return jobs, assets

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class LegacyProvider:
    """The Jobs API behind the batch engine's seam: one composite task per input.

    :meth:`create` makes one job per (target, format) on the input's asset and returns them as
    one :class:`~audioshake_async.models.Task` (id ``legacy:<job>+<job>...``, a target per
    job). Each job's ``metadata.clientToken`` carries the engine's token. The API has no
    documented listing, so ``supports_listing`` is False and ``create`` is itself safe to call
    again: the jobs a token already created (kept in memory, and in ``ledger`` when given, which
    survives a crash) are never created twice; only the missing ones are. If some jobs end
    ambiguously, the others are kept and :class:`~audioshake_async.errors.AmbiguousRequestError`
    is raised. A job the API refuses for good (4xx) after others exist becomes a failed target,
    so the finished jobs are still downloaded.

    A ``POST /job`` that got no answer may have created its job, and there is no way to look it
    up: the engine reports the item as failed instead of retrying (a retry could bill twice).
    Running the input again, with the same journal and ledger, keeps the jobs known to exist
    and creates only the others.
    """

    name = "legacy"
    supports_listing = False
    #: [INFER] legacy asset retention is undocumented; assumed the same 72 h as Tasks assets.
    source_lifetime = ASSET_LIFETIME
    #: No listing exists; the engine never pages a legacy account.
    page_size = 100
    #: The engine's metadata travels as one value of each job's ``metadata`` object; the Tasks
    #: API's limit is kept as the polite bound (the Jobs API documents none).
    metadata_limit = MAX_METADATA_LENGTH
    journal_namespace = "legacy"
    input_extensions = AUDIO_EXTENSIONS

    def __init__(
        self, client: LegacyClient, *, ledger: str | os.PathLike[str] | None = None
    ) -> None:
        self.client = client
        self.poll = client.poll
        self.retry = client.transport.retry
        self._ledger = _Ledger(pathlib.Path(ledger)) if ledger is not None else None
        self._ledger_loaded = self._ledger is None
        #: token -> job key -> job id, until ``create`` returns the composite for that token.
        self._created: dict[str, dict[JobKey, str]] = {}
        #: token -> asset id registered from a URL input.
        self._link_assets: dict[str, str] = {}
        #: token -> job key -> why the API refused it.
        self._refused: dict[str, dict[JobKey, str]] = {}
        #: Last snapshot of jobs not terminal yet (stands in for a job during a brief 404).
        self._pending: dict[str, Job] = {}
        self._misses: Counter[str] = Counter()

    @property
    def request_rate(self) -> float | None:
        """The client's rate limit in requests/s (the batch's budget), None when unlimited."""
        return limiter_rate(self.client.transport.limiter)

    @property
    def rate_share(self) -> float:
        """The fraction of that budget this process may plan on (shared budgets: 1/members)."""
        return limiter_share(self.client.transport.limiter)

    def __repr__(self) -> str:
        return f"LegacyProvider({self.client!r})"

    def check_targets(self, targets: Sequence[Target]) -> tuple[Target, ...]:
        """The same target rules as a Tasks API task (each target becomes jobs here)."""
        return validate_targets(targets)

    async def check_source(self, path: pathlib.Path) -> int:
        """The asset rules of AudioShake: a documented input type, not empty, at most 2 GB."""
        return (await prepare_upload(path, check=validate_upload)).size

    async def upload(
        self, path: pathlib.Path, name: str, progress: Callable[[int, int], None]
    ) -> str:
        """``POST /upload/`` (streamed); the asset id is the source reference."""
        asset = await self.client.upload(path, filename=name, progress=progress)
        return asset.id

    async def find_upload(self, name: str) -> str | None:
        """The Jobs API lists no assets: an interrupted upload is sent again."""
        return None

    async def _load_ledger(self) -> None:
        if self._ledger_loaded or self._ledger is None:
            return
        jobs, assets = await anyio.to_thread.run_sync(self._ledger.load)
        for token, found in jobs.items():
            self._created.setdefault(token, {}).update(found)
        for token, asset_id in assets.items():
            self._link_assets.setdefault(token, asset_id)
        self._ledger_loaded = True

    async def _record(self, entry: dict[str, Any]) -> None:
        if self._ledger is not None:
            # Shielded: a job that exists must reach the ledger even if the run is cancelled.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._ledger.append, entry)

    @staticmethod
    def _job_metadata(target: Target, token: str) -> dict[str, Any]:
        if target.transcript_url or target.transcript_asset_id:
            raise errors.ValidationError(
                "the Jobs API takes an alignment transcript through otherSourceAssets, which "
                "LegacyProvider does not support: use the Tasks API"
            )
        extra: dict[str, Any] = {TOKEN_KEY: token}
        if target.variant is not None:
            extra["variant"] = target.variant
        if target.residual is not None:
            extra["residual"] = target.residual
        if target.language is not None:
            extra["language"] = target.language
        return extra

    async def create(
        self, *, source: str | None, url: str | None, targets: Sequence[Target], metadata: str
    ) -> Task:
        """One ``POST /job`` per target and format, as one composite task (see the class doc)."""
        token = _token_of(metadata)
        await self._load_ledger()
        # Checked for every target before the first job is created.
        extras = [self._job_metadata(t, token) for t in targets]
        plan: list[tuple[JobKey, Target, str, dict[str, Any]]] = [
            ((t.model, t.variant, fmt), t, fmt, extra)
            for t, extra in zip(targets, extras, strict=True)
            for fmt in dict.fromkeys(t.formats)
        ]
        if not plan:
            raise errors.ValidationError("a legacy batch item needs at least one target")
        if source is None:
            if url is None:
                raise errors.ValidationError("give a source (asset id) or a url")
            source = self._link_assets.get(token)
            if source is None:
                source = (await self.client.upload_link(url)).id
                self._link_assets[token] = source
                await self._record({"t": token, "a": source})
        created = self._created.setdefault(token, {})
        refused = self._refused.setdefault(token, {})
        unanswered: list[errors.AudioShakeError] = []
        for key, target, fmt, extra in plan:
            if key in created or key in refused:
                continue
            try:
                job = await self.client.create_job(source, target.model, fmt, **extra)
            except (errors.APIConnectionError, errors.ServerError, errors.RateLimitError) as exc:
                # Outcome unknown or transient: try the other jobs, then let the engine call
                # again; the jobs created meanwhile are kept.
                unanswered.append(exc)
                continue
            except errors.NotFoundError:
                # The asset is gone: the engine uploads again and calls back; jobs already
                # created (on the old asset) are kept.
                raise
            except errors.APIError as exc:
                refused[key] = f"the Jobs API refused the job: {exc.status} {exc.message}"
                if not created:
                    # Nothing was created: a plain error, like a refused POST /tasks.
                    self._refused.pop(token, None)
                    raise
                continue
            created[key] = job.id
            if not job.is_terminal:
                self._pending[job.id] = job
            await self._record({"t": token, "k": list(key), "j": job.id})
        if unanswered:
            raise errors.AmbiguousRequestError(
                f"{len(unanswered)} of {len(plan)} jobs got no usable answer "
                f"({unanswered[0]}); {len(created)} created are kept and will not be created "
                "again"
            )
        parts: list[Job | Rejected] = []
        for key, target, fmt, _ in plan:
            if key in created:
                job_id = created[key]
                parts.append(self._pending.get(job_id) or _placeholder(job_id, key, token))
            else:
                parts.append(
                    Rejected(job_marker(key), target.model, fmt, target.variant, refused[key])
                )
        # The engine journals the composite id next: this token's bookkeeping is done.
        self._created.pop(token, None)
        self._refused.pop(token, None)
        self._link_assets.pop(token, None)
        return composite_task(parts, token)

    async def _get_job(self, job_id: str) -> Job:
        try:
            job = await self.client.get_job(job_id)
        except errors.NotFoundError:
            self._misses[job_id] += 1
            if self._misses[job_id] > self.client.not_found_retries:
                self._misses.pop(job_id, None)
                self._pending.pop(job_id, None)
                raise
            logger.info("job %s not found yet; treated as pending", job_id)
            return self._pending.get(job_id) or Job(job_id)
        self._misses.pop(job_id, None)
        if job.is_terminal:
            self._pending.pop(job_id, None)
        else:
            self._pending[job_id] = job
        return job

    async def get(self, task_id: str) -> Task:
        """``GET /job/{id}`` for each job of the composite, concurrently."""
        parts = split_task_id(task_id)
        found: dict[int, Job | Rejected] = {}
        failures: list[errors.AudioShakeError] = []

        async def one(index: int, job_id: str) -> None:
            try:
                found[index] = await self._get_job(job_id)
            except errors.AudioShakeError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for index, part in enumerate(parts):
                if part.startswith("!"):
                    model, variant, fmt = parse_job_marker(part)
                    found[index] = Rejected(
                        part, model, fmt, variant, "the Jobs API refused this job at creation"
                    )
                else:
                    group.start_soon(one, index, part)
        if failures:
            # One error, not an exception group: the engine handles this package's errors.
            raise failures[0]
        jobs = [found[i] for i in range(len(parts))]
        return attrs.evolve(composite_task(jobs), id=task_id)

    async def page(self, *, skip: int, take: int) -> list[Task]:
        """The Jobs API documents no listing (``supports_listing`` is False)."""
        raise errors.AudioShakeError("the legacy Jobs API has no documented job listing")

    async def fetch_output(self, task: Task, output: Output, writer: OutputWriter) -> StoredOutput:
        """Stream one output into ``writer``; an expired link is refreshed from its job."""
        job_id = next((t.id for t in task.targets if output in t.output), None)
        if job_id is None:
            raise errors.DownloadError(f"{output.filename} belongs to no job of {task.id}")
        return await self.client.write_output(job_id, output, writer)

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by route."""
        return dict(self.client.request_counts)


def _placeholder(job_id: str, key: JobKey, token: str) -> Job:
    """A job known to exist (ledger, earlier call) whose snapshot is not at hand."""
    model, variant, fmt = key
    metadata: dict[str, Any] = {"name": model, "format": fmt, TOKEN_KEY: token}
    if variant is not None:
        metadata["variant"] = variant
    return Job(job_id, metadata=metadata)
