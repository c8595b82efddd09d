"""Deprecated: AudioShake's legacy Jobs API (``groovy``) and its batch-engine provider.

AudioShake is migrating every customer to the Tasks API (:class:`audioshake_async.AudioShake`);
this module lets holders of a legacy token keep working while they move over (see
:mod:`audioshake_async.migrate`, ``audioshake-async migrate`` and the README section "Migrating
from the Jobs API").

Differences from the Tasks API, all handled here:

- host ``https://groovy.audioshake.ai`` and ``Authorization: Bearer <token>`` (a JWT from
  support), sent by the shared :class:`~audioshake_async.core.transport.Transport`, so only to the
  API's origin and never in a repr, a log line or an exception;
- one job = one model x one format x one asset; responses are wrapped in ``{"job": {...}}``;
- statuses ``created``/``queued``/``processing`` then ``completed``, or ``failed``/``error``;
- right after ``POST /job``, ``GET /job/{id}`` may answer 404 for a moment (seen by real
  clients), so a few 404s are tolerated before a job is declared missing;
- shapes vary across doc generations: outputs in ``outputAssets``, ``stemAssets``, or nested
  under ``sourceAsset``; ``metadata`` or ``stemMetadata``. Parsing accepts all of them.

:class:`LegacyProvider` runs the batch engine on this API: the jobs of one input (one per model
and format) appear to the engine as the targets of ONE composite task whose id is
``"legacy:" + "+".join(job ids)``.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import datetime as dt
import hashlib
import json
import logging
import math
import os
import pathlib
import random
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import anyio
import anyio.to_thread
import attrs

from . import errors
from ._convert import parse_datetime
from .core.download import DownloadedFile, DownloadProgress, fetch_to_file
from .core.http import DEFAULT_RATE_LIMIT, PollPolicy, RetryPolicy, redact_url, structure_as
from .core.transport import Retry, Timeouts, Transport
from .core.upload import ProgressCallback, prepare_upload
from .models import Output, Target, TargetError, TargetResult, Task
from .tasks.wire import validate_upload

if TYPE_CHECKING:
    from .batch.provider import BatchProvider

__all__ = [
    "DEFAULT_LEGACY_BASE_URL",
    "ENV_LEGACY_BASE_URL",
    "ENV_LEGACY_TOKEN",
    "LEGACY_MODELS",
    "MIGRATION_GUIDE_URL",
    "Job",
    "LegacyAsset",
    "LegacyClient",
    "LegacyProvider",
    "LegacyUsage",
    "LegacyUsageMonth",
    "OutputAsset",
    "StatusInfo",
    "check_legacy_targets",
    "composite_task",
    "open_cli_provider",
    "parse_job",
    "target_status",
]

logger = logging.getLogger("audioshake_async.legacy")

DEFAULT_LEGACY_BASE_URL = "https://groovy.audioshake.ai"
ENV_LEGACY_TOKEN = "AUDIOSHAKE_LEGACY_TOKEN"
ENV_LEGACY_BASE_URL = "AUDIOSHAKE_LEGACY_BASE_URL"
MIGRATION_GUIDE_URL = "https://developer.audioshake.ai/migrating-from-jobs"

#: Statuses of a job still on its way (``queued`` per the legacy page, ``created`` per the
#: data-model pages: both happen).
PENDING_STATUSES = frozenset({"created", "queued", "processing"})
COMPLETED_STATUS = "completed"
#: Real clients treat both as failure; the docs name neither precisely.
FAILED_STATUSES = frozenset({"failed", "error"})
#: 404s in a row tolerated on a job before it is declared missing (python-lyrics-transcriber
#: retried 5 times: "Job ID not yet available").
DEFAULT_NOT_FOUND_RETRIES = 5
#: Prefix of composite task ids (the engine's journal stores them as task ids).
COMPOSITE_PREFIX = "legacy:"
#: Key of the batch engine's client token inside a job's ``metadata`` object.
TOKEN_KEY = "clientToken"

_AUDIO_FORMATS = ("wav", "mp3", "flac", "aiff", "mp4")
_TEXT_FORMATS = ("json", "srt", "txt")
#: The models the Jobs API takes as ``metadata.name``, with their output formats. The API has
#: no catalog endpoint: this is the legacy docs' list (stems, DME, transcription/alignment,
#: music_detection), the Tasks catalog's names (the same service behind both) and the legacy
#: names seen in real clients (``other-x-guitar``, ``music``, ``music_removal``).
LEGACY_MODELS: Mapping[str, tuple[str, ...]] = {
    **{
        name: _AUDIO_FORMATS
        for name in (
            "vocals",
            "instrumental",
            "drums",
            "bass",
            "guitar",
            "other-x-guitar",
            "piano",
            "strings",
            "wind",
            "other",
            "dialogue",
            "effects",
            "music",
            "music_fx",
            "music_removal",
            "multi_voice",
        )
    },
    "transcription": _TEXT_FORMATS,
    "alignment": _TEXT_FORMATS,
    "music_detection": ("json", "txt"),
}

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


# --------------------------------------------------------------------------- models


@attrs.frozen
class LegacyAsset:
    """An uploaded file (``POST /upload/`` or ``/upload/link``); ``id`` is a job's ``assetId``."""

    id: str
    name: str | None = None
    file_type: str | None = None
    format: str | None = None
    link: str | None = None


@attrs.frozen
class OutputAsset:
    """One output file of a completed job; ``name`` includes the extension (``vocals.wav``)."""

    name: str
    format: str | None = None
    link: str | None = None
    id: str | None = None
    file_type: str | None = None

    @property
    def extension(self) -> str:
        """``format``, else the name's extension, else ``bin``."""
        if self.format:
            return self.format
        stem, dot, ext = self.name.rpartition(".")
        return ext if dot and stem and ext else "bin"

    @property
    def stem(self) -> str:
        """The name without its ``.<format>`` suffix (``vocals.wav`` -> ``vocals``)."""
        suffix = "." + self.extension
        if self.name.lower().endswith(suffix.lower()) and len(self.name) > len(suffix):
            return self.name[: -len(suffix)]
        return self.name

    def to_output(self) -> Output | None:
        """The Tasks-style :class:`~audioshake_async.models.Output` (None without a link)."""
        if not self.link:
            return None
        return Output(self.stem, self.extension, self.link)


@attrs.frozen
class StatusInfo:
    """``statusInfo`` of a job (swagger: ``{code: number, message: string}``)."""

    code: float | int | str | None = None
    message: str | None = None


@attrs.frozen
class Job:
    """A legacy job: one model (``metadata.name``) in one format on one asset."""

    id: str
    status: str = "created"
    metadata: dict[str, Any] = attrs.field(factory=dict)
    asset_id: str | None = None
    client_id: str | None = None
    request_id: str | None = None
    license_id: str | None = None
    callback_url: str | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    status_info: StatusInfo | None = None
    error: Any = None
    error_message: str | None = None
    source_asset: LegacyAsset | None = None
    output_assets: tuple[OutputAsset, ...] = ()

    @property
    def model(self) -> str | None:
        """``metadata.name``: the model the job runs."""
        value = self.metadata.get("name")
        return value if isinstance(value, str) else None

    @property
    def format(self) -> str | None:
        """``metadata.format``: the output format asked for."""
        value = self.metadata.get("format")
        return value if isinstance(value, str) else None

    @property
    def client_token(self) -> str | None:
        """The batch engine's token carried in ``metadata.clientToken``, if any."""
        value = self.metadata.get(TOKEN_KEY)
        return value if isinstance(value, str) else None

    @property
    def is_completed(self) -> bool:
        """True once the job finished with outputs."""
        return self.status == COMPLETED_STATUS

    @property
    def is_failed(self) -> bool:
        """True when the job ended in ``failed`` or ``error``."""
        return self.status in FAILED_STATUSES

    @property
    def is_terminal(self) -> bool:
        """True once the job will not change any more."""
        return self.is_completed or self.is_failed

    @property
    def failure_message(self) -> str | None:
        """Why the job failed, from ``errorMessage``, ``error`` or ``statusInfo.message``."""
        if not self.is_failed:
            return None
        if self.error_message:
            return self.error_message
        if isinstance(self.error, str) and self.error:
            return self.error
        if isinstance(self.error, dict) and isinstance(self.error.get("message"), str):
            return str(self.error["message"])
        if self.status_info is not None and self.status_info.message:
            return self.status_info.message
        return None

    @property
    def outputs(self) -> tuple[Output, ...]:
        """The downloadable outputs as Tasks-style outputs (``vocals.wav`` -> vocals, wav)."""
        return tuple(o for o in (a.to_output() for a in self.output_assets) if o is not None)


@attrs.frozen
class LegacyUsageMonth:
    """One month of ``GET /usage`` (``totalMinutes`` is a number here, unlike Tasks)."""

    month: str
    total_jobs: int | None = None
    total_minutes: float | None = None


@attrs.frozen
class LegacyUsage:
    """``GET /usage``: the last three months of the account."""

    client_id: str | None = None
    usage: tuple[LegacyUsageMonth, ...] = ()


# --------------------------------------------------------------------------- parsing


def _unwrap(data: Any, key: str) -> Any:
    # Documented envelopes ({"job": ...}); accept a bare object too.
    if isinstance(data, dict) and isinstance(data.get(key), dict):
        return data[key]
    return data


def _dict_list(container: Mapping[str, Any], *keys: str) -> list[dict[str, Any]] | None:
    for key in keys:
        value = container.get(key)
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
    return None


def _output_asset(raw: dict[str, Any]) -> dict[str, Any] | None:
    item = dict(raw)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        link = item.get("link")
        if not isinstance(link, str) or not link:
            return None
        # A nameless output is still downloadable: name it after the link's last segment.
        item["name"] = unquote(urlsplit(link).path.rsplit("/", 1)[-1]) or "output"
    return item


def _clean_timestamp(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is None:
        return
    try:
        parse_datetime(value)
    except (TypeError, ValueError, AttributeError):
        # A timestamp in an unexpected format must not make the whole job unreadable.
        body.pop(key)


def parse_job(data: Any) -> Job:
    """A :class:`Job` from ``POST /job``, ``GET /job/{id}`` or a callback body, any variant."""
    raw = _unwrap(data, "job")
    if not isinstance(raw, dict):
        raise errors.ResponseParseError(f"expected a job object, got {type(raw).__name__}")
    body = dict(raw)
    source = body.get("sourceAsset")
    outputs = _dict_list(body, "outputAssets", "stemAssets")
    if outputs is None and isinstance(source, dict):
        # One documented example nests the outputs inside the source asset.
        outputs = _dict_list(source, "outputAssets", "stemAssets")
    body["outputAssets"] = [o for o in map(_output_asset, outputs or []) if o is not None]
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        metadata = body.get("stemMetadata")
    body["metadata"] = dict(metadata) if isinstance(metadata, dict) else {}
    status = body.get("status")
    body["status"] = status.strip().lower() if isinstance(status, str) and status else "created"
    info = body.get("statusInfo")
    if info is not None and not isinstance(info, dict):
        body["statusInfo"] = {"message": str(info)}
    if not isinstance(source, dict) or not isinstance(source.get("id"), str):
        body.pop("sourceAsset", None)
    for key in ("errorMessage",):
        if body.get(key) is not None and not isinstance(body[key], str):
            body[key] = str(body[key])
    for key in ("createdAt", "startedAt", "updatedAt"):
        _clean_timestamp(body, key)
    return structure_as(body, Job, "job")


def parse_legacy_asset(data: Any) -> LegacyAsset:
    """A :class:`LegacyAsset` from an upload response."""
    return structure_as(_unwrap(data, "asset"), LegacyAsset, "asset")


def parse_legacy_usage(data: Any) -> LegacyUsage:
    """``GET /usage`` (a bare list of months is accepted too)."""
    if isinstance(data, list):
        data = {"usage": data}
    return structure_as(data, LegacyUsage, "usage")


# --------------------------------------------------------------------------- client


def _require_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip() or "/" in value or value in (".", ".."):
        raise errors.ValidationError(f"{what} must be a non-empty id, got {value!r}")


def _require_http_url(value: str, what: str) -> None:
    if not isinstance(value, str) or urlsplit(value).scheme.lower() not in ("http", "https"):
        shown = redact_url(value) if isinstance(value, str) else repr(value)
        raise errors.ValidationError(f"{what} must be an http(s) URL, got {shown!r}")


def _clean_token(token: str | None) -> str:
    value = (token if token is not None else os.environ.get(ENV_LEGACY_TOKEN) or "").strip()
    # People paste the whole header value; the transport adds "Bearer " itself.
    if value.lower().startswith("bearer "):
        value = value[7:].strip()
    if not value:
        raise errors.ConfigurationError(
            f"no legacy token: pass token= or set {ENV_LEGACY_TOKEN} (legacy tokens come from "
            "support@audioshake.ai; new integrations use the Tasks API)"
        )
    return value


class LegacyClient:
    """Async client of the deprecated Jobs API; emits a :class:`DeprecationWarning` once.

    Use ``async with LegacyClient() as client:``. ``token`` and ``base_url`` fall back to
    ``AUDIOSHAKE_LEGACY_TOKEN`` and ``AUDIOSHAKE_LEGACY_BASE_URL`` (default
    ``https://groovy.audioshake.ai``). Same transport as the Tasks client: one shared rate
    limiter, retries with ``Retry-After``, the token only ever sent to the API's origin. A
    ``session`` you pass is used and left open; otherwise the client owns one and closes it.
    """

    def __init__(
        self,
        token: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        rate_limit: float | None = DEFAULT_RATE_LIMIT,
        session: aiohttp.ClientSession | None = None,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        connection_limit: int = 100,
        trust_env: bool = False,
        not_found_retries: int = DEFAULT_NOT_FOUND_RETRIES,
    ) -> None:
        _warn_deprecated()
        secret = _clean_token(token)
        if timeout <= 0 or not math.isfinite(timeout):
            raise errors.ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if max_retries < 0:
            raise errors.ConfigurationError(f"max_retries must be >= 0, got {max_retries!r}")
        if rate_limit is not None and not (rate_limit > 0 and math.isfinite(rate_limit)):
            raise errors.ConfigurationError(f"rate_limit must be positive, got {rate_limit!r}")
        if not_found_retries < 0:
            raise errors.ConfigurationError("not_found_retries must be >= 0")
        url = base_url or os.environ.get(ENV_LEGACY_BASE_URL) or DEFAULT_LEGACY_BASE_URL
        self._transport = Transport(
            base_url=url,
            auth_headers={"Authorization": f"Bearer {secret}"},
            timeouts=Timeouts(request=timeout),
            retry=retry or RetryPolicy(max_retries=max_retries),
            rate_limit=rate_limit,
            session=session,
            connection_limit=connection_limit,
            trust_env=trust_env,
        )
        self.poll = poll or PollPolicy()
        self.not_found_retries = not_found_retries

    def __repr__(self) -> str:
        return f"LegacyClient(base_url={self._transport.base_url!r})"

    @property
    def base_url(self) -> str:
        """The Jobs API base URL in use."""
        return self._transport.base_url

    @property
    def transport(self) -> Transport:
        """The transport (session, limiter, retry policy) shared by every call."""
        return self._transport

    @property
    def request_counts(self) -> Mapping[str, int]:
        """Requests sent so far by route (retries included), e.g. ``{"GET /job/{id}": 3}``."""
        return dict(self._transport.request_counts)

    async def __aenter__(self) -> LegacyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned HTTP session (an injected one stays open)."""
        await self._transport.aclose()

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
        _require_id(asset_id, "asset_id")
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
        _require_id(job_id, "job_id")
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
        policy = poll or self.poll
        job = job_id if isinstance(job_id, Job) else None
        ident = job.id if job is not None else str(job_id)
        _require_id(ident, "job_id")
        deadline = None if timeout is None else time.monotonic() + timeout
        misses = 0
        poll_number = 0
        while job is None or not job.is_terminal:
            try:
                job = await self.get_job(ident)
            except errors.NotFoundError:
                misses += 1
                if misses > self.not_found_retries:
                    raise
                logger.info("job %s not found yet (%d); polling again", ident, misses)
            else:
                misses = 0
                if on_update is not None:
                    on_update(job)
                if job.is_terminal:
                    break
            poll_number += 1
            delay = policy.interval(poll_number, random.random())
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.TaskTimeoutError(ident, timeout or 0.0, job)
                delay = min(delay, remaining)
            await anyio.sleep(delay)
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

        return await fetch_to_file(
            self._transport,
            converted.link,
            pathlib.Path(destination),
            refresh=refresh,
            checksum=checksum,
            progress=progress,
        )

    async def download(
        self,
        job: Job | str,
        destination: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        checksum: bool = False,
    ) -> list[pathlib.Path]:
        """Download every output of a completed job into ``destination`` (``vocals.wav``...).

        Names are sanitized (a server-sent name never writes outside ``destination``); each file
        lands atomically; failures are collected into one
        :class:`~audioshake_async.errors.DownloadError` after the others are written.
        """
        from .client import plan_output_paths

        if isinstance(job, str):
            job = await self.get_job(job)
        if not job.is_completed:
            raise errors.ValidationError(f"job {job.id} is {job.status!r}, not completed")
        planned = plan_output_paths(job.outputs, pathlib.Path(destination))
        written: dict[int, pathlib.Path] = {}
        failures: list[str] = []
        limiter = anyio.CapacityLimiter(max(1, concurrency))
        finished = job

        async def one(index: int, output: Output, path: pathlib.Path) -> None:
            async with limiter:
                try:
                    done = await self.fetch_output(finished, output, path, checksum=checksum)
                except errors.AudioShakeError as exc:
                    failures.append(f"{output.filename}: {exc}")
                else:
                    written[index] = done.path

        async with anyio.create_task_group() as group:
            for index, (output, path) in enumerate(planned):
                group.start_soon(one, index, output, path)
        if failures:
            raise errors.DownloadError(
                f"{len(failures)} of {len(planned)} outputs failed: " + "; ".join(failures)
            )
        return [written[i] for i in sorted(written)]


# --------------------------------------------------------------------------- composite tasks


def target_status(legacy_status: str) -> str:
    """A legacy status in the Tasks vocabulary; an unknown one passes through (not terminal)."""
    if legacy_status in PENDING_STATUSES:
        return "processing"
    if legacy_status == COMPLETED_STATUS:
        return "completed"
    if legacy_status in FAILED_STATUSES:
        return "error"
    return legacy_status


def job_target(job: Job) -> TargetResult:
    """One job as one Tasks-style target (id = job id)."""
    status = target_status(job.status)
    error = None
    if status == "error":
        code = job.status_info.code if job.status_info is not None else None
        error = TargetError(code, job.failure_message or f"job {job.status}")
    meta = job.metadata
    variant, residual, language = meta.get("variant"), meta.get("residual"), meta.get("language")
    return TargetResult(
        id=job.id,
        model=job.model or "",
        status=status,
        formats=(job.format,) if job.format else (),
        output=job.outputs if status == "completed" else (),
        error=error,
        variant=variant if isinstance(variant, str) else None,
        residual=residual if isinstance(residual, bool) else None,
        language=language if isinstance(language, str) else None,
    )


@attrs.frozen
class _Rejected:
    """A job the API refused to create (a definite 4xx): shown as a failed target."""

    marker: str
    model: str
    format: str
    variant: str | None
    message: str

    def target(self) -> TargetResult:
        return TargetResult(
            id=self.marker,
            model=self.model,
            status="error",
            formats=(self.format,),
            error=TargetError(None, self.message),
            variant=self.variant,
        )


JobKey = tuple[str, "str | None", str]


def _marker(key: JobKey) -> str:
    # "!" never appears in a job id and quote() escapes it (and "+") inside the parts.
    model, variant, fmt = key
    return "!" + "!".join(quote(part or "", safe="") for part in (model, fmt, variant))


def _parse_marker(part: str) -> JobKey:
    model, fmt, variant = (unquote(p) for p in [*part[1:].split("!"), "", ""][:3])
    return model, variant or None, fmt


def split_task_id(task_id: str) -> list[str]:
    """The parts of a composite id: job ids, and ``!``-markers of jobs refused at creation."""
    if not isinstance(task_id, str) or not task_id.startswith(COMPOSITE_PREFIX):
        raise errors.ValidationError(f"not a legacy composite task id: {task_id!r}")
    parts = task_id[len(COMPOSITE_PREFIX) :].split("+")
    if not parts or any(not p or "/" in p for p in parts):
        raise errors.ValidationError(f"malformed legacy composite task id: {task_id!r}")
    return parts


def composite_task(jobs: Sequence[Job | _Rejected], token: str | None = None) -> Task:
    """The jobs of one input as ONE Tasks-style task whose targets are the jobs."""
    parts = [j.marker if isinstance(j, _Rejected) else j.id for j in jobs]
    targets = tuple(j.target() if isinstance(j, _Rejected) else job_target(j) for j in jobs)
    real = [j for j in jobs if isinstance(j, Job)]
    token = token or next((j.client_token for j in real if j.client_token), None)
    created = [j.created_at for j in real if j.created_at is not None]
    updated = [j.updated_at for j in real if j.updated_at is not None]
    done = bool(targets) and all(t.is_terminal for t in targets)
    return Task(
        id=COMPOSITE_PREFIX + "+".join(parts),
        targets=targets,
        created_at=min(created) if created else None,
        completed_at=max(updated) if done and updated else None,
        client_id=next((j.client_id for j in real if j.client_id), None),
        asset_id=next((j.asset_id for j in real if j.asset_id), None),
        metadata=json.dumps({"client_token": token}, separators=(",", ":")) if token else None,
    )


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
    source_lifetime = 72 * 3600.0

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

    def __repr__(self) -> str:
        return f"LegacyProvider({self.client!r})"

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
        parts: list[Job | _Rejected] = []
        for key, target, fmt, _ in plan:
            if key in created:
                job_id = created[key]
                parts.append(self._pending.get(job_id) or _placeholder(job_id, key, token))
            else:
                parts.append(
                    _Rejected(_marker(key), target.model, fmt, target.variant, refused[key])
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
        found: dict[int, Job | _Rejected] = {}
        failures: list[errors.AudioShakeError] = []

        async def one(index: int, job_id: str) -> None:
            try:
                found[index] = await self._get_job(job_id)
            except errors.AudioShakeError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for index, part in enumerate(parts):
                if part.startswith("!"):
                    model, variant, fmt = _parse_marker(part)
                    found[index] = _Rejected(
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

    async def fetch_output(
        self, task: Task, output: Output, destination: pathlib.Path, *, checksum: bool
    ) -> DownloadedFile:
        """Stream one output to disk; an expired link is refreshed from its job."""
        job_id = next((t.id for t in task.targets if output in t.output), None)
        if job_id is None:
            raise errors.DownloadError(f"{output.filename} belongs to no job of {task.id}")
        return await self.client.fetch_output(job_id, output, destination, checksum=checksum)

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


# --------------------------------------------------------------------------- CLI


def check_legacy_targets(targets: Sequence[Target]) -> None:
    """Raise ValidationError for a model or format the Jobs API does not offer (no request)."""
    for target in targets:
        formats = LEGACY_MODELS.get(target.model)
        if formats is None:
            known = ", ".join(sorted(LEGACY_MODELS))
            raise errors.ValidationError(
                f"unknown model {target.model!r} for the legacy Jobs API (available: {known})"
            )
        bad = [f for f in target.formats if f not in formats]
        if bad:
            raise errors.ValidationError(
                f"model {target.model!r} cannot output {', '.join(bad)} on the legacy Jobs API "
                f"(it offers: {', '.join(formats)})"
            )


def _ledger_path(args: argparse.Namespace) -> pathlib.Path | None:
    # Next to the engine's journal, so both resume together; none without a journal.
    if getattr(args, "no_journal", False):
        return None
    journal = getattr(args, "journal", None)
    if journal is None:
        out = getattr(args, "out", None)
        if out is None:
            return None
        journal = os.path.join(out, ".audioshake-journal.sqlite")
    return pathlib.Path(str(journal) + ".legacy-jobs")


async def _checked_provider(
    client: LegacyClient, args: argparse.Namespace, usage_error: type[Exception]
) -> LegacyProvider:
    try:
        # The cheapest authenticated call: a refused token fails here, before any upload.
        await client.usage()
    except errors.AuthenticationError:
        raise usage_error("the legacy token was refused (401)") from None
    return LegacyProvider(client, ledger=_ledger_path(args))


@contextlib.asynccontextmanager
async def open_cli_provider(
    args: argparse.Namespace, targets: Sequence[Target]
) -> AsyncIterator[BatchProvider]:
    """``run --api legacy``: a ready :class:`LegacyProvider`, the token checked first.

    With ``--emulator`` a local legacy emulator serves the run. Otherwise the token comes from
    ``--api-key`` or ``AUDIOSHAKE_LEGACY_TOKEN`` and the base URL from ``--base-url``,
    ``AUDIOSHAKE_LEGACY_BASE_URL`` or groovy. Each job takes one model and one format, so every
    ``-m`` x ``-f`` pair becomes one job. Problems raise the CLI's ``UsageError`` (exit 2).
    """
    from .cli import UsageError

    if not targets:
        raise UsageError("give at least one model with -m/--model")
    try:
        # Before the token check and any upload: a typo must not cost a run.
        check_legacy_targets(targets)
    except errors.ValidationError as exc:
        raise UsageError(str(exc)) from None
    if getattr(args, "emulator", False):
        try:
            from .emulator.legacy import LegacyEmulator
        except ImportError as exc:  # pragma: no cover - the emulator extra is missing
            raise UsageError(
                "the emulator needs extra packages: pip install "
                f"'audioshake-async[emulator]' ({exc})"
            ) from None
        async with LegacyEmulator(delay=args.emulator_delay) as emulator:
            client = _cli_client(emulator.token, emulator.base_url, args, UsageError)
            async with client:
                yield await _checked_provider(client, args, UsageError)
        return
    token = getattr(args, "api_key", None) or os.environ.get(ENV_LEGACY_TOKEN)
    if not token or not token.strip():
        raise UsageError(
            f"no legacy token: set {ENV_LEGACY_TOKEN}, pass --api-key, or use --emulator"
        )
    base_url = (
        getattr(args, "base_url", None)
        or os.environ.get(ENV_LEGACY_BASE_URL)
        or DEFAULT_LEGACY_BASE_URL
    )
    async with _cli_client(token, base_url, args, UsageError) as client:
        yield await _checked_provider(client, args, UsageError)


def _cli_client(
    token: str, base_url: str, args: argparse.Namespace, usage_error: type[Exception]
) -> LegacyClient:
    # Not a warnings filter: an ignored warning would still count as the one per process.
    reset = _DEPRECATION_SUPPRESSED.set(True)
    try:
        return LegacyClient(token, base_url, rate_limit=args.rate_limit)
    except errors.ConfigurationError as exc:
        raise usage_error(str(exc)) from None
    finally:
        _DEPRECATION_SUPPRESSED.reset(reset)
