"""The Music.AI client: uploads, resources, downloads."""

from __future__ import annotations

import builtins
import contextlib
import os
import pathlib
from collections.abc import Awaitable, Callable

import aiohttp
import anyio
import anyio.to_thread
import attrs

from .. import errors
from ..core.download import DownloadedFile, DownloadLimits, DownloadProgress
from ..core.files import plan_output_paths, write_json_atomic
from ..core.http import (
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_RATE_LIMIT,
    PollPolicy,
    RetryPolicy,
    structure_as,
)
from ..core.ratelimit import Limiter
from ..core.service import (
    FilesProgress,
    ServiceClient,
    download_all,
    fresh_link_from,
    secret_from,
)
from ..core.sink import OutputWriter, StoredOutput
from ..core.upload import ChunkedPayload, ProgressCallback, prepare_upload
from ..models import Output
from .files import check_upload, extension_from_content_type, extension_from_url
from .models import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    FAILED,
    SUCCEEDED,
    Application,
    Job,
    JobDownload,
    JobFailedError,
    is_url,
    remember,
)
from .resources import JobsResource, WorkflowsResource

# --------------------------------------------------------------------------- the client


class MusicAI(ServiceClient):
    """Async client of the Music.AI API.

    Use it as ``async with MusicAI() as client:`` and share one instance (one connection pool,
    one rate limiter). ``api_key`` and ``base_url`` fall back to ``MUSICAI_API_KEY`` and
    ``MUSICAI_BASE_URL`` (default ``https://api.music.ai/v1``). The key is sent raw in
    ``Authorization`` (no ``Bearer``), to the API's origin only.

    ``rate_limit`` defaults to 60 requests/s: Music.AI documents no limit, so this is a polite
    cap, not a documented one; 429 answers are honoured (``Retry-After``) either way.
    A :class:`~audioshake_async.core.ratelimit.Limiter` object works too (shared, never closed
    by the client).
    ``upload_content_type`` is the ``Content-Type`` of upload PUTs (None: guessed from the
    file name, as the reference's curl example does).
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
        upload_content_type: str | None = None,
        allow_insecure_http: bool = False,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        download_limits: DownloadLimits | None = None,
    ) -> None:
        key = secret_from(
            api_key, ENV_API_KEY, f"no Music.AI API key: pass api_key= or set {ENV_API_KEY}"
        )
        super().__init__(
            base_url=base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL,
            # The raw key, no "Bearer" (the reference and both official SDKs).
            auth_headers={"Authorization": key},
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
        self.upload_content_type = upload_content_type
        self.jobs = JobsResource(self._transport, self.poll)
        self.workflows = WorkflowsResource(self._transport)
        #: Extension of extension-less result URLs, found from their Content-Type once.
        self._probed: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ small resources

    async def application(self) -> Application:
        """``GET /application``: the application the key belongs to."""
        data = await self._transport.request("GET", "/application", route="GET /application")
        return structure_as(data, Application, "application")

    # ------------------------------------------------------------------ upload

    async def upload(
        self, path: str | os.PathLike[str], *, progress: ProgressCallback | None = None
    ) -> str:
        """Upload a local file; return the URL to pass as ``params.inputUrl``.

        ``GET /upload`` gives a signed ``uploadUrl``; the file is PUT there as the raw body,
        streamed from disk in 1 MiB reads (constant memory whatever its size) with a
        ``Content-Length``. A failed PUT is retried with the file read again from its start.
        The storage host never sees the API key.
        """
        source = await prepare_upload(path, check=check_upload)
        if self.upload_content_type is not None:
            source = attrs.evolve(source, content_type=self.upload_content_type)
        data = await self._transport.request("GET", "/upload", route="GET /upload")
        if not isinstance(data, dict) or not all(
            is_url(data.get(k)) for k in ("uploadUrl", "downloadUrl")
        ):
            raise errors.ResponseParseError("GET /upload answered without uploadUrl/downloadUrl")
        upload_url, download_url = str(data["uploadUrl"]), str(data["downloadUrl"])
        # A 2xx whose body is not JSON (object stores answer with XML or nothing) is still a
        # success: the status is what counts.
        with contextlib.suppress(errors.ResponseParseError):
            await self._transport.request(
                "PUT",
                upload_url,
                route="PUT <upload>",
                body_factory=lambda: ChunkedPayload(source, progress),
                transfer=True,
            )
        return download_url

    # ------------------------------------------------------------------ downloads

    async def output_format(self, job_id: str, name: str, url: str) -> str:
        """The extension an output is saved with: from the URL path, else its Content-Type.

        An extension-less URL costs one ``Range: bytes=0-0`` GET, once per output (a refused,
        expired URL is renewed through ``GET /job/{id}`` first); ``bin`` when neither says
        anything.
        """
        ext = extension_from_url(url)
        if ext is not None:
            return ext
        key = (job_id, name)
        known = self._probed.get(key)
        if known is not None:
            return known
        status, content_type = await self._probe(url)
        if status in (401, 403):
            fresh = (await self.jobs.get(job_id)).files.get(name)
            if fresh is not None:
                status, content_type = await self._probe(fresh)
        found = extension_from_content_type(content_type) or "bin"
        remember(self._probed, key, found)
        return found

    async def _probe(self, url: str) -> tuple[int, str | None]:
        """Status and Content-Type of a one-byte GET (0 when the request failed)."""
        try:
            async with self._transport.open_download(url, {"Range": "bytes=0-0"}) as response:
                if response.status in (200, 206):
                    return response.status, response.headers.get("Content-Type")
                return response.status, None
        except errors.AudioShakeError:
            return 0, None

    async def outputs(self, job: Job) -> builtins.list[Output]:
        """The URL entries of ``result`` as outputs (name = key, format = extension)."""
        return [
            Output(name, await self.output_format(job.id, name, url), url)
            for name, url in job.files.items()
        ]

    async def fetch_output(
        self,
        job_id: str,
        output: Output,
        destination: str | os.PathLike[str],
        *,
        checksum: bool = True,
        progress: DownloadProgress | None = None,
    ) -> DownloadedFile:
        """Download one output atomically; an expired URL (403) is refreshed via the job."""
        return await self._fetch_link(
            output.link,
            destination,
            self._refresher(job_id, output),
            checksum=checksum,
            progress=progress,
        )

    async def write_output(
        self,
        job_id: str,
        output: Output,
        writer: OutputWriter,
        *,
        progress: DownloadProgress | None = None,
    ) -> StoredOutput:
        """Stream one output into ``writer`` (a file, an S3 upload...) and commit it."""
        return await self._stream_link(
            output.link, writer, self._refresher(job_id, output), progress=progress
        )

    def _refresher(self, job_id: str, output: Output) -> Callable[[], Awaitable[str]]:
        async def refresh() -> str:
            async def lookup() -> str | None:
                return (await self.jobs.get(job_id)).files.get(output.name)

            missing = f"job {job_id} no longer lists output {output.name!r}"
            return await fresh_link_from(lookup, self._transport.retry, missing)

        return refresh

    async def download(
        self,
        job: Job | str,
        destination: str | os.PathLike[str],
        *,
        concurrency: int = 8,
        checksum: bool = False,
        progress: FilesProgress | None = None,
    ) -> JobDownload:
        """Download every URL output of a ``SUCCEEDED`` job into ``destination``, concurrently.

        Each file is ``<output name>.<ext>`` (the name sanitized, so a key like ``Kick drum``
        or ``../x`` stays a plain file inside ``destination``; the extension from the URL path
        or the Content-Type), streamed to a hidden part file and renamed into place when
        complete, with retries, Range resume and URL refresh. Values that are not URLs
        (``"bpm": "64"``, ``"[custom storage]"``) go to ``result.json`` beside the files. If
        some files fail the others are still written, and
        :class:`~audioshake_async.errors.DownloadError` lists the failures.
        ``progress(file_name, received, total)`` is called as bytes arrive, as in
        :meth:`audioshake_async.AudioShake.download` (``result.json``,
        written locally, reports nothing).
        """
        if isinstance(job, str):
            job = await self.jobs.get(job)
        if job.status == FAILED:
            raise JobFailedError(job)
        if job.status != SUCCEEDED:
            raise errors.ValidationError(f"job {job.id} is {job.status}: no results yet")
        directory = pathlib.Path(destination)
        outputs = await self.outputs(job)
        values = job.values
        # result.json takes part in the naming, so an output called "result" cannot clobber it.
        wanted = [*outputs, Output("result", "json", "")] if values else outputs
        planned = plan_output_paths(wanted, directory)
        result_json: pathlib.Path | None = None
        if values:
            result_json = planned.pop()[1]
            await anyio.to_thread.run_sync(write_json_atomic, result_json, values)
        job_id = job.id

        async def fetch(
            output: Output, path: pathlib.Path, report: DownloadProgress | None
        ) -> DownloadedFile:
            return await self.fetch_output(job_id, output, path, checksum=checksum, progress=report)

        paths = await download_all(planned, fetch, concurrency=concurrency, progress=progress)
        ordered = {output.name: path for (output, _), path in zip(planned, paths, strict=True)}
        return JobDownload(ordered, values, result_json)
