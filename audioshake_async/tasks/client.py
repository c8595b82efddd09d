"""The AudioShake Tasks API client: its resources, downloads and batches."""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import aiohttp

from ..core.download import DownloadedFile, DownloadLimits, DownloadProgress
from ..core.files import plan_output_paths
from ..core.http import DEFAULT_MAX_JSON_BYTES, DEFAULT_RATE_LIMIT, PollPolicy, RetryPolicy
from ..core.ratelimit import Limiter
from ..core.service import (
    FilesProgress,
    ServiceClient,
    download_all,
    fresh_link_from,
    secret_from,
)
from ..core.sink import OutputWriter, StoredOutput
from ..models import Output, Target, Task
from .resources import AssetsResource, ModelsResource, TasksResource, WebhooksResource
from .wire import DEFAULT_BASE_URL

if TYPE_CHECKING:
    from ..batch import BatchResult, ProgressHook
    from ..batch.journal import Journal
    from ..batch.options import BatchOptions, BatchOptionValues, Unpack
    from .provider import AudioShakeProvider

__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "AudioShake", "FilesProgress"]

ENV_API_KEY = "AUDIOSHAKE_API_KEY"
ENV_BASE_URL = "AUDIOSHAKE_BASE_URL"


class AudioShake(ServiceClient):
    """Async client of the AudioShake Tasks API.

    Use it as ``async with AudioShake() as client:`` and share one instance: it holds one
    connection pool and one rate limiter (60 requests/s by default, the documented account
    limit) for every call. ``api_key`` and ``base_url`` fall back to ``AUDIOSHAKE_API_KEY`` and
    ``AUDIOSHAKE_BASE_URL``. A ``session`` you pass is used and left open; otherwise the client
    owns one and closes it on exit. ``rate_limit`` also takes a
    :class:`~audioshake_async.core.ratelimit.Limiter` object, e.g. a
    :class:`~audioshake_async.core.ratelimit_pg.PostgresRateLimiter` that holds every worker of
    the account to one budget; a limiter passed in stays yours (the client never closes it).
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        rate_limit: float | Limiter | None = DEFAULT_RATE_LIMIT,
        session: aiohttp.ClientSession | None = None,
        poll: PollPolicy | None = None,
        connection_limit: int = 100,
        trust_env: bool = False,
        retry: RetryPolicy | None = None,
        allow_insecure_http: bool = False,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        download_limits: DownloadLimits | None = None,
    ) -> None:
        key = secret_from(
            api_key,
            ENV_API_KEY,
            f"no API key: pass api_key= or set {ENV_API_KEY} (keys are in the dashboard)",
        )
        super().__init__(
            base_url=base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL,
            auth_headers={"x-api-key": key},
            timeout=timeout,
            max_retries=max_retries,
            rate_limit=rate_limit,
            session=session,
            poll=poll,
            retry=retry,
            connection_limit=connection_limit,
            trust_env=trust_env,
            allow_insecure_http=allow_insecure_http,
            max_json_bytes=max_json_bytes,
            download_limits=download_limits,
        )
        self.assets = AssetsResource(self._transport)
        self.tasks = TasksResource(self._transport, self.poll)
        self.models = ModelsResource(self._transport)
        self.webhooks = WebhooksResource(self._transport)

    # ------------------------------------------------------------------ downloads

    async def fetch_output(
        self,
        task: Task,
        output: Output,
        destination: str | os.PathLike[str],
        *,
        checksum: bool = True,
        progress: DownloadProgress | None = None,
    ) -> DownloadedFile:
        """Download one output to ``destination`` atomically; an expired link is refreshed."""
        return await self._fetch_link(
            output.link,
            destination,
            self._refresher(task, output),
            checksum=checksum,
            progress=progress,
        )

    async def write_output(
        self,
        task: Task,
        output: Output,
        writer: OutputWriter,
        *,
        progress: DownloadProgress | None = None,
    ) -> StoredOutput:
        """Stream one output into ``writer`` (a file, an S3 upload...) and commit it."""
        return await self._stream_link(
            output.link, writer, self._refresher(task, output), progress=progress
        )

    def _refresher(self, task: Task, output: Output) -> Callable[[], Awaitable[str]]:
        """A fresh link of ``output`` from ``GET /tasks/{id}`` (links expire after an hour)."""
        wanted = (output.name, output.format)
        # Two targets can each have an output of the same name and format (vocals and a
        # high-quality variant): the fresh link must come from this output's own target.
        owner = next((t for t in task.targets if any(o is output for o in t.output)), None)

        def fresh_link(fresh: Task) -> str | None:
            targets = fresh.targets
            if owner is not None:
                targets = tuple(t for t in targets if t.id == owner.id) or tuple(
                    t for t in targets if (t.model, t.variant) == (owner.model, owner.variant)
                )
            for target in targets:
                for candidate in target.output:
                    if (candidate.name, candidate.format) == wanted:
                        return candidate.link
            return None

        async def refresh() -> str:
            async def lookup() -> str | None:
                return fresh_link(await self.tasks.get(task.id))

            missing = f"task {task.id} no longer lists output {output.filename!r}"
            return await fresh_link_from(lookup, self._transport.retry, missing)

        return refresh

    async def download(
        self,
        task: Task | str,
        destination: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        checksum: bool = False,
        progress: FilesProgress | None = None,
    ) -> list[pathlib.Path]:
        """Download every output of the completed targets into ``destination``.

        Files are named ``<output name>.<format>`` (sanitized: a server-sent name can never
        write outside ``destination``). Each lands atomically. If some fail, the others are
        still written and :class:`~audioshake_async.errors.DownloadError` lists the failures.
        ``progress(file_name, received, total)`` is called as bytes arrive (``total`` is None
        when the server sends no length; ``received`` restarts if a transfer starts over).
        """
        if isinstance(task, str):
            task = await self.tasks.get(task)
        finished = task

        async def fetch(
            output: Output, path: pathlib.Path, report: DownloadProgress | None
        ) -> DownloadedFile:
            return await self.fetch_output(
                finished, output, path, checksum=checksum, progress=report
            )

        planned = plan_output_paths(task.outputs, pathlib.Path(destination))
        return await download_all(planned, fetch, concurrency=concurrency, progress=progress)

    # ------------------------------------------------------------------ batch

    def batch_provider(self) -> AudioShakeProvider:
        """This client behind the batch engine's seam."""
        from .provider import AudioShakeProvider

        return AudioShakeProvider(self)

    def batch(
        self,
        inputs: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
        *,
        targets: Sequence[Target],
        out_dir: str | os.PathLike[str],
        journal: str | os.PathLike[str] | Journal | None = None,
        progress: ProgressHook | None = None,
        options: BatchOptions | None = None,
        **option_values: Unpack[BatchOptionValues],
    ) -> AsyncGenerator[BatchResult, None]:
        """Process a catalog concurrently; see :func:`audioshake_async.batch.run_batch`.

        Keyword options are typed (:class:`~audioshake_async.batch.BatchOptions` fields) and
        checked here, at the call; use it as ``async with contextlib.aclosing(...)``.
        """
        from ..batch import run_batch

        return run_batch(
            self.batch_provider(),
            inputs,
            targets=targets,
            out_dir=out_dir,
            journal=journal,
            progress=progress,
            options=options,
            **option_values,
        )
