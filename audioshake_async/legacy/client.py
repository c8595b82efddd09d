"""The Jobs API client (deprecated: emits a DeprecationWarning once per process)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import pathlib
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import aiohttp

from .. import errors
from ..core.download import DownloadedFile, DownloadLimits, DownloadProgress
from ..core.files import plan_output_paths
from ..core.http import (
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_RATE_LIMIT,
    PollPolicy,
    RetryPolicy,
    redact_url,
    require_id,
)
from ..core.ratelimit import Limiter
from ..core.service import FilesProgress, ServiceClient, download_all, poll_until, secret_from
from ..core.sink import OutputWriter, StoredOutput
from ..core.transport import Retry
from ..core.upload import ProgressCallback, prepare_upload
from ..models import Output
from ..tasks.wire import validate_upload
from .composite import composite_task
from .models import (
    DEFAULT_LEGACY_BASE_URL,
    DEFAULT_NOT_FOUND_RETRIES,
    ENV_LEGACY_BASE_URL,
    ENV_LEGACY_TOKEN,
    MIGRATION_GUIDE_URL,
    Job,
    LegacyAsset,
    LegacyUsage,
    OutputAsset,
)
from .wire import parse_job, parse_legacy_asset, parse_legacy_usage

logger = logging.getLogger("audioshake_async.legacy")


_DEPRECATION_WARNED = False
# Set while the CLI builds its client: `--api legacy` is a deliberate choice, so no warning,
# and the once-per-process warning is still owed to library code in the same process.
_DEPRECATION_SUPPRESSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "audioshake_legacy_deprecation_suppressed", default=False
)


def _warn_deprecated() -> None:
    # Once per process: a batch that builds clients in a loop must not flood the logs.
    global _DEPRECATION_WARNED
    if _DEPRECATION_WARNED or _DEPRECATION_SUPPRESSED.get():
        return
    _DEPRECATION_WARNED = True
    warnings.warn(
        "the AudioShake Jobs API (groovy) is deprecated: AudioShake is migrating all customers "
        f"to the Tasks API (audioshake_async.AudioShake). Migration guide: {MIGRATION_GUIDE_URL}"
        " ; convert job requests with `audioshake-async migrate FILE.json`",
        DeprecationWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- client


def _require_http_url(value: str, what: str) -> None:
    if not isinstance(value, str) or urlsplit(value).scheme.lower() not in ("http", "https"):
        shown = redact_url(value) if isinstance(value, str) else repr(value)
        raise errors.ValidationError(f"{what} must be an http(s) URL, got {shown!r}")


def _clean_token(token: str | None) -> str:
    value = secret_from(
        token,
        ENV_LEGACY_TOKEN,
        f"no legacy token: pass token= or set {ENV_LEGACY_TOKEN} (legacy tokens come from "
        "support@audioshake.ai; new integrations use the Tasks API)",
    )
    # People paste the whole header value; the transport adds "Bearer " itself.
    if value.lower().startswith("bearer "):
        value = value[7:].strip()
    if not value:
        raise errors.ConfigurationError(f"no legacy token in {ENV_LEGACY_TOKEN}")
    return value


@contextlib.contextmanager
def deprecation_acknowledged() -> Iterator[None]:
    """Clients built inside skip the warning (``--api legacy`` is a deliberate choice); the
    once-per-process warning is still owed to library code in the same process."""
    # Not a warnings filter: an ignored warning would still count as the one per process.
    reset = _DEPRECATION_SUPPRESSED.set(True)
    try:
        yield
    finally:
        _DEPRECATION_SUPPRESSED.reset(reset)


class LegacyClient(ServiceClient):
    """Async client of the deprecated Jobs API; emits a :class:`DeprecationWarning` once.

    Use ``async with LegacyClient() as client:``. ``token`` and ``base_url`` fall back to
    ``AUDIOSHAKE_LEGACY_TOKEN`` and ``AUDIOSHAKE_LEGACY_BASE_URL`` (default
    ``https://groovy.audioshake.ai``). Same transport as the Tasks client: one shared rate
    limiter (or a shared :class:`~audioshake_async.core.ratelimit.Limiter` passed as
    ``rate_limit``, never closed by the client), retries with ``Retry-After``, the token only
    ever sent to the API's origin. A
    ``session`` you pass is used and left open; otherwise the client owns one and closes it.
    """

    def __init__(
        self,
        token: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        rate_limit: float | Limiter | None = DEFAULT_RATE_LIMIT,
        session: aiohttp.ClientSession | None = None,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        connection_limit: int = 100,
        trust_env: bool = False,
        not_found_retries: int = DEFAULT_NOT_FOUND_RETRIES,
        allow_insecure_http: bool = False,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        download_limits: DownloadLimits | None = None,
    ) -> None:
        _warn_deprecated()
        secret = _clean_token(token)
        if not_found_retries < 0:
            raise errors.ConfigurationError("not_found_retries must be >= 0")
        super().__init__(
            base_url=base_url or os.environ.get(ENV_LEGACY_BASE_URL) or DEFAULT_LEGACY_BASE_URL,
            auth_headers={"Authorization": f"Bearer {secret}"},
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
        self.not_found_retries = not_found_retries

    # ------------------------------------------------------------------ uploads

    async def upload(
        self,
        source: str | os.PathLike[str] | bytes | BinaryIO,
        *,
        filename: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> LegacyAsset:
        """Upload a file as ``multipart/form-data`` (field ``file``), streamed in constant memory.

        Checked before any request (exists, regular, not empty, at most 2 GB, known type); each
        attempt re-reads the file from its start.
        """
        prepared = await prepare_upload(source, filename=filename, check=validate_upload)
        data = await self._transport.request(
            "POST",
            "/upload/",
            route="POST /upload/",
            body_factory=lambda: prepared.multipart(progress),
            transfer=True,
        )
        return parse_legacy_asset(data)

    async def upload_link(self, link: str, name: str | None = None) -> LegacyAsset:
        """Register a public URL as an asset (``POST /upload/link``)."""
        _require_http_url(link, "link")
        body: dict[str, Any] = {"link": link}
        if name is not None:
            body["name"] = name
        data = await self._transport.request(
            "POST", "/upload/link", route="POST /upload/link", json_body=body
        )
        return parse_legacy_asset(data)

    # ------------------------------------------------------------------ jobs

    async def create_job(
        self,
        asset_id: str,
        model: str,
        format: str,
        callback_url: str | None = None,
        **extra_metadata: Any,
    ) -> Job:
        """``POST /job``: run ``model`` on ``asset_id``, output in ``format``; billable.

        ``extra_metadata`` goes into the job's ``metadata`` object (e.g. ``language="en"``,
        ``variant=...``). Never retried once the request may have reached the server (no
        idempotency key): such an outcome raises
        :class:`~audioshake_async.errors.AmbiguousRequestError`.
        """
        require_id(asset_id, "asset_id")
        if not isinstance(model, str) or not model.strip():
            raise errors.ValidationError("a job needs a model name")
        if not isinstance(format, str) or not format.strip():
            raise errors.ValidationError("a job needs an output format")
        clash = sorted({"name", "format"} & set(extra_metadata))
        if clash:
            raise errors.ValidationError(f"pass the model and format as arguments, not {clash}")
        if callback_url is not None:
            _require_http_url(callback_url, "callback_url")
        body: dict[str, Any] = {
            "metadata": {"format": format, "name": model, **extra_metadata},
            "assetId": asset_id,
        }
        if callback_url is not None:
            body["callbackUrl"] = callback_url
        data = await self._transport.request(
            "POST", "/job", route="POST /job", json_body=body, retry=Retry.BEFORE_SEND
        )
        return parse_job(data)

    async def get_job(self, job_id: str) -> Job:
        """``GET /job/{id}``: the job now, with fresh output links once completed."""
        require_id(job_id, "job_id")
        data = await self._transport.request("GET", f"/job/{job_id}", route="GET /job/{id}")
        return parse_job(data)

    async def wait(
        self,
        job_id: str | Job,
        timeout: float | None = None,
        *,
        raise_on_error: bool = False,
        poll: PollPolicy | None = None,
        on_update: Callable[[Job], Any] | None = None,
    ) -> Job:
        """Poll until the job is ``completed``, ``failed`` or ``error``; return it.

        A 404 is tolerated ``not_found_retries`` times in a row (a new job can be missing for a
        moment). ``timeout`` raises :class:`~audioshake_async.errors.TaskTimeoutError` with the
        last snapshot; ``raise_on_error`` raises
        :class:`~audioshake_async.errors.TaskFailedError` for a failed job.
        """
        initial = job_id if isinstance(job_id, Job) else None
        ident = require_id(initial.id if initial is not None else str(job_id), "job_id")
        misses = 0

        async def read(_: Job | None) -> Job | None:
            nonlocal misses
            try:
                job = await self.get_job(ident)
            except errors.NotFoundError:
                misses += 1
                if misses > self.not_found_retries:
                    raise
                logger.info("job %s not found yet (%d); polling again", ident, misses)
                return None
            misses = 0
            if on_update is not None:
                on_update(job)
            return job

        job = await poll_until(
            read,
            _is_terminal,
            ident=ident,
            policy=poll or self.poll,
            timeout=timeout,
            initial=initial,
        )
        if raise_on_error and job.is_failed:
            raise errors.TaskFailedError(composite_task([job]))
        return job

    async def usage(self) -> LegacyUsage:
        """``GET /usage``: jobs and minutes of the last three months."""
        return parse_legacy_usage(
            await self._transport.request("GET", "/usage", route="GET /usage")
        )

    @staticmethod
    def parse_callback(body: bytes | str | Mapping[str, Any]) -> Job:
        """The job in a ``callbackUrl`` delivery (shape undocumented: envelope or bare)."""
        if isinstance(body, (bytes, str)):
            try:
                body = json.loads(body)
            except ValueError:
                raise errors.ResponseParseError("callback body is not JSON") from None
        return parse_job(body)

    # ------------------------------------------------------------------ downloads

    async def fetch_output(
        self,
        job: Job | str,
        output: OutputAsset | Output,
        destination: str | os.PathLike[str],
        *,
        checksum: bool = True,
        progress: DownloadProgress | None = None,
    ) -> DownloadedFile:
        """Download one output atomically; a refused (expired) link is refreshed from the job."""
        link, refresh = self._refresher(job, output)
        return await self._fetch_link(
            link, destination, refresh, checksum=checksum, progress=progress
        )

    async def write_output(
        self,
        job: Job | str,
        output: OutputAsset | Output,
        writer: OutputWriter,
        *,
        progress: DownloadProgress | None = None,
    ) -> StoredOutput:
        """Stream one output into ``writer`` (a file, an S3 upload...) and commit it."""
        link, refresh = self._refresher(job, output)
        return await self._stream_link(link, writer, refresh, progress=progress)

    def _refresher(
        self, job: Job | str, output: OutputAsset | Output
    ) -> tuple[str, Callable[[], Awaitable[str]]]:
        """The output's link, and how to get a fresh one from the job."""
        job_id = job.id if isinstance(job, Job) else job
        converted = output.to_output() if isinstance(output, OutputAsset) else output
        if converted is None:
            raise errors.DownloadError(f"job {job_id}: output {output.name!r} has no link")
        wanted = (converted.name, converted.format)

        async def refresh() -> str:
            fresh = await self.get_job(job_id)
            for candidate in fresh.outputs:
                if (candidate.name, candidate.format) == wanted:
                    return candidate.link
            raise errors.DownloadError(
                f"job {job_id} no longer lists output {converted.filename!r}"
            )

        return converted.link, refresh

    async def download(
        self,
        job: Job | str,
        destination: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        checksum: bool = False,
        progress: FilesProgress | None = None,
    ) -> list[pathlib.Path]:
        """Download every output of a completed job into ``destination`` (``vocals.wav``...).

        Names are sanitized (a server-sent name never writes outside ``destination``); each file
        lands atomically; failures are collected into one
        :class:`~audioshake_async.errors.DownloadError` after the others are written.
        ``progress(file_name, received, total)`` is called as bytes arrive, as in
        :meth:`audioshake_async.AudioShake.download`.
        """
        if isinstance(job, str):
            job = await self.get_job(job)
        if not job.is_completed:
            raise errors.ValidationError(f"job {job.id} is {job.status!r}, not completed")
        finished = job

        async def fetch(
            output: Output, path: pathlib.Path, report: DownloadProgress | None
        ) -> DownloadedFile:
            return await self.fetch_output(
                finished, output, path, checksum=checksum, progress=report
            )

        planned = plan_output_paths(job.outputs, pathlib.Path(destination))
        return await download_all(planned, fetch, concurrency=concurrency, progress=progress)


def _is_terminal(job: Job) -> bool:
    return job.is_terminal
