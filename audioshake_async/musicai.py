"""Music.AI: an asyncio client of the Music.AI API, and its provider for the batch engine.

Built on the same :class:`~audioshake_async.core.transport.Transport` as the AudioShake client, so
it inherits one pooled session, the shared client-side rate limiter, retries with
``Retry-After`` on idempotent calls, this package's error classes, and the rule that the API key
goes to the API origin only (never to the signed storage host that takes uploads and serves
results).

    async with MusicAI() as client:                          # $MUSICAI_API_KEY
        input_url = await client.upload("song.wav")
        job_id = await client.jobs.create("song", "my-workflow", {"inputUrl": input_url})
        job = await client.jobs.wait(job_id)
        saved = await client.download(job, "out/song")

The API's shape (from the reference): ``GET /upload`` hands out a signed ``uploadUrl`` (PUT the
raw bytes there) and a ``downloadUrl`` (pass it as ``params.inputUrl``); a job runs a workflow
``QUEUED -> STARTED -> SUCCEEDED | FAILED``; a succeeded job's ``result`` maps each output name
to a URL, or to a plain value (``"bpm": "64"``, ``"[custom storage]"``).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import json
import math
import mimetypes
import os
import pathlib
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiohttp
import anyio
import anyio.to_thread
import attrs
from multidict import MultiDict

from . import errors
from .client import plan_output_paths
from .core.download import DownloadedFile, DownloadProgress, fetch_to_file
from .core.http import DEFAULT_RATE_LIMIT, PollPolicy, RetryPolicy, structure_as
from .core.transport import Retry, Timeouts, Transport
from .core.upload import ChunkedPayload, ProgressCallback, prepare_upload
from .models import DOCUMENTED_INPUT_EXTENSIONS, Output, Target, TargetError, TargetResult, Task

if TYPE_CHECKING:
    import argparse

    from .batch.provider import BatchProvider

__all__ = [
    "CUSTOM_STORAGE",
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "FAILED",
    "METADATA_KEY",
    "QUEUED",
    "STARTED",
    "SUCCEEDED",
    "Application",
    "Job",
    "JobDownload",
    "JobError",
    "JobFailedError",
    "MusicAI",
    "MusicAIProvider",
    "Workflow",
    "open_cli_provider",
    "parse_job",
]

ENV_API_KEY = "MUSICAI_API_KEY"
ENV_BASE_URL = "MUSICAI_BASE_URL"
DEFAULT_BASE_URL = "https://api.music.ai/v1"
#: ``size`` of ``GET /job`` and ``GET /workflow`` pages: the documented default (no maximum is
#: documented, so nothing larger is asked for).
PAGE_SIZE = 100
#: Key of the job ``metadata`` object under which the batch engine's metadata string travels
#: (Music.AI metadata is an object of scalar values, not a string).
METADATA_KEY = "audioshakeAsync"
#: The ``result`` value of an output sent to ``copyResultsTo`` (no URL is returned for it).
CUSTOM_STORAGE = "[custom storage]"
#: File holding the non-URL values of a job's ``result``, beside the downloaded files.
RESULT_JSON = "result.json"

QUEUED = "QUEUED"
STARTED = "STARTED"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
TERMINAL = frozenset({SUCCEEDED, FAILED})
#: Failure codes the reference says are worth submitting again.
RETRYABLE_CODES = frozenset({"INTERNAL_ERROR", "TIMEOUT"})

#: Entries kept in the small per-client caches (probed extensions, values awaiting their
#: ``result.json``); the oldest go first, and a dropped entry only costs a request again.
CACHE_LIMIT = 4096
#: Reads of a job that may return an older record before an output is declared gone.
STALE_READ_ATTEMPTS = 4

# Content types whose extension ``mimetypes`` gets wrong or does not know (``audio/x-wav``
# has no guess on some systems; ``audio/mpeg`` guesses ``.mp2`` on others).
_EXTENSIONS = {
    "audio/wav": "wav",
    "audio/wave": "wav",
    "audio/x-wav": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/aiff": "aiff",
    "audio/x-aiff": "aiff",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/aac": "aac",
    "audio/ogg": "ogg",
    "audio/opus": "opus",
    "audio/midi": "mid",
    "audio/x-midi": "mid",
    "application/json": "json",
    "text/plain": "txt",
    "application/zip": "zip",
}


# --------------------------------------------------------------------------- models


@attrs.frozen
class JobError:
    """Why a job ``FAILED``: ``code`` is ``BAD_INPUT``, ``TIMEOUT`` or ``INTERNAL_ERROR``."""

    code: str | None = None
    title: str | None = None
    message: str | None = None

    def describe(self) -> str:
        """``"BAD_INPUT: File not found."``: code and the most specific text available."""
        text = self.message or self.title or "no detail"
        return f"{self.code}: {text}" if self.code else text


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


@attrs.frozen(hash=False)
class Job:
    """A workflow job as ``GET /job/{id}`` and ``GET /job`` return it."""

    id: str
    status: str = QUEUED
    name: str | None = None
    app: str | None = None
    #: The workflow slug (an older shape sends ``{"id", "name"}``; see :func:`parse_job`).
    workflow: str | None = None
    batch_name: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    workflow_params: dict[str, Any] = attrs.field(factory=dict)
    #: Output name -> URL (a file) or plain value; ``None`` until the job succeeds.
    result: dict[str, Any] | None = None
    error: JobError | None = None
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None

    @property
    def is_done(self) -> bool:
        """True once ``SUCCEEDED`` or ``FAILED``."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        """True when the job ``SUCCEEDED``."""
        return self.status == SUCCEEDED

    @property
    def files(self) -> dict[str, str]:
        """The ``result`` entries that are URLs: output name -> URL."""
        return {k: v for k, v in (self.result or {}).items() if _is_url(v)}

    @property
    def values(self) -> dict[str, Any]:
        """The ``result`` entries that are not URLs (``"bpm": "64"``, ``"[custom storage]"``)."""
        return {k: v for k, v in (self.result or {}).items() if not _is_url(v)}


@attrs.frozen
class Workflow:
    """A workflow from ``GET /workflow``; ``slug`` is what ``jobs.create`` takes."""

    id: str
    slug: str | None = None
    name: str | None = None
    description: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


@attrs.frozen
class Application:
    """The application (API key) from ``GET /application``."""

    id: str
    name: str | None = None


@attrs.frozen
class JobDownload:
    """What :meth:`MusicAI.download` wrote: a file per URL output, and ``result.json``."""

    #: Output name -> path of the downloaded file.
    files: dict[str, pathlib.Path]
    #: The non-URL values of ``result`` (also written to ``result_json``).
    values: dict[str, Any]
    result_json: pathlib.Path | None = None


class JobFailedError(errors.AudioShakeError):
    """A job ended ``FAILED``; ``job.error`` holds the documented ``{code, title, message}``."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.code = job.error.code if job.error else None
        detail = job.error.describe() if job.error else "no error detail"
        super().__init__(f"job {job.id} failed: {detail}")

    @property
    def retryable(self) -> bool:
        """True for ``INTERNAL_ERROR`` and ``TIMEOUT``: submitting the job again may work."""
        return self.code in RETRYABLE_CODES


def parse_job(data: Any) -> Job:
    """A :class:`Job` from a response, tolerating the older ``"workflow": {"id", "name"}``."""
    if isinstance(data, dict):
        workflow = data.get("workflow")
        if isinstance(workflow, dict):
            slug = workflow.get("slug") or workflow.get("name") or workflow.get("id")
            data = {**data, "workflow": str(slug) if slug is not None else None}
        status = data.get("status")
        if isinstance(status, str) and status != status.upper():
            data = {**data, "status": status.upper()}
    return structure_as(data, Job, "job")


def _items(data: Any, key: str) -> builtins.list[Any]:
    # ``GET /job`` is documented both as a bare array (the example) and as ``{"jobs": [...]}``
    # (the field table): accept either.
    if isinstance(data, dict) and isinstance(data.get(key), list):
        data = data[key]
    if not isinstance(data, list):
        raise errors.ResponseParseError(f"expected a list of {key}, got {type(data).__name__}")
    return data


def _check_id(value: str, what: str = "job_id") -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value or value in (".", ".."):
        raise errors.ValidationError(f"{what} must be a non-empty id, got {value!r}")
    return value


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise errors.ValidationError("metadata is an object of string, number or boolean values")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise errors.ValidationError(
                f"metadata[{key!r}]: values must be strings, numbers or booleans"
            )
    return dict(metadata)


# --------------------------------------------------------------------------- file names


def extension_from_url(url: str) -> str | None:
    """The extension of the URL path's last segment (``.../vocals.wav?sig`` -> ``wav``), if any."""
    # Plain string cuts rather than urlsplit: this runs for every output of every job of every
    # list page the batch engine reads, and the URLs come from the API, not from a user.
    path = url.split("?", 1)[0].split("#", 1)[0]
    if "://" in path:
        path = path.split("://", 1)[1]
    if "/" not in path:
        return None
    last = path.rsplit("/", 1)[-1]
    if "%" in last:
        last = unquote(last)
    stem, dot, ext = last.rpartition(".")
    if dot and stem and 1 <= len(ext) <= 8 and ext.isalnum():
        return ext.lower()
    return None


def extension_from_content_type(content_type: str | None) -> str | None:
    """``audio/x-wav; charset=...`` -> ``wav``; None when unknown or generic."""
    if not content_type:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in _EXTENSIONS:
        return _EXTENSIONS[kind]
    if kind == "application/octet-stream":
        return None
    guessed = mimetypes.guess_extension(kind)
    return guessed.lstrip(".") if guessed else None


def _content_type_for(name: str) -> str:
    ext = os.path.splitext(name.lower())[1]
    return (
        DOCUMENTED_INPUT_EXTENSIONS.get(ext)
        or mimetypes.guess_type(name)[0]
        or "application/octet-stream"
    )


def check_upload(filename: str, size: int) -> str:
    """Music.AI's rule for an upload: not empty. It documents no list of input types and no
    size cap (the workflow judges the file), so any type goes, with a guessed content type."""
    if size <= 0:
        raise errors.ValidationError(f"{filename!r} is empty")
    return _content_type_for(filename)


def _write_json_atomic(path: pathlib.Path, data: Any) -> tuple[int, str]:
    """Write ``data`` as JSON through a hidden temp file and a rename (runs in a thread)."""
    raw = (json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.part")
    try:
        with open(part, "wb") as handle:
            handle.write(raw)
        os.replace(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    return len(raw), hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------- resources


class JobsResource:
    """``/job``: create workflow jobs, read, list, delete and wait for them."""

    def __init__(self, transport: Transport, poll: PollPolicy) -> None:
        self._transport = transport
        self._poll = poll

    async def create(
        self,
        name: str,
        workflow: str,
        params: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
        copy_results_to: Mapping[str, str] | None = None,
    ) -> str:
        """``POST /job``; returns the new job's id.

        Billable and without an idempotency key, so never retried once the request may have
        been sent: such an outcome raises :class:`~audioshake_async.errors.AmbiguousRequestError`
        (look the job up by its ``metadata`` before creating it again).
        """
        if not isinstance(name, str) or not name.strip():
            raise errors.ValidationError("a job needs a non-empty name")
        if not isinstance(workflow, str) or not workflow.strip():
            raise errors.ValidationError("a job needs a workflow slug")
        if not isinstance(params, Mapping):
            raise errors.ValidationError("params is an object (e.g. {'inputUrl': ...})")
        body: dict[str, Any] = {"name": name, "workflow": workflow, "params": dict(params)}
        checked = _check_metadata(metadata)
        if checked is not None:
            body["metadata"] = checked
        if copy_results_to is not None:
            if not all(isinstance(v, str) for v in copy_results_to.values()):
                raise errors.ValidationError("copy_results_to maps output names to upload URLs")
            body["copyResultsTo"] = dict(copy_results_to)
        data = await self._transport.request(
            "POST", "/job", route="POST /job", json_body=body, retry=Retry.BEFORE_SEND
        )
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise errors.ResponseParseError("POST /job answered without a job id")
        return str(data["id"])

    async def get(self, job_id: str) -> Job:
        """``GET /job/{id}``: the full record, with fresh result URLs."""
        _check_id(job_id)
        data = await self._transport.request("GET", f"/job/{job_id}", route="GET /job/{id}")
        return parse_job(data)

    async def status(self, job_id: str) -> str:
        """``GET /job/{id}/status``: ``QUEUED``, ``STARTED``, ``SUCCEEDED`` or ``FAILED``."""
        _check_id(job_id)
        data = await self._transport.request(
            "GET", f"/job/{job_id}/status", route="GET /job/{id}/status"
        )
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise errors.ResponseParseError("GET /job/{id}/status answered without a status")
        return str(data["status"]).upper()

    async def page(
        self,
        *,
        page: int = 0,
        size: int = PAGE_SIZE,
        status: Sequence[str] | None = None,
        workflow: Sequence[str] | None = None,
        batch_name: str | None = None,
    ) -> builtins.list[Job]:
        """One page of ``GET /job`` (in the server's order: by creation date)."""
        if page < 0 or size < 1:
            raise errors.ValidationError(f"page must be >= 0 and size >= 1, got {page}, {size}")
        # Repeated keys (?status=QUEUED&status=STARTED): a plain dict would keep one value.
        params: MultiDict[str] = MultiDict()
        for value in _as_values(status, "status"):
            params.add("status", value.upper())
        for value in _as_values(workflow, "workflow"):
            params.add("workflow", value)
        if batch_name is not None:
            params.add("batchName", batch_name)
        params.add("page", str(page))
        params.add("size", str(size))
        data = await self._transport.request("GET", "/job", route="GET /job", params=params)
        return [parse_job(item) for item in _items(data, "jobs")]

    async def list(
        self,
        *,
        status: Sequence[str] | None = None,
        workflow: Sequence[str] | None = None,
        batch_name: str | None = None,
        page_size: int = PAGE_SIZE,
        limit: int | None = None,
    ) -> AsyncIterator[Job]:
        """Every job matching the filters, page after page until a short page; each job once."""
        seen: set[str] = set()
        number = 0
        yielded = 0
        while True:
            jobs = await self.page(
                page=number, size=page_size, status=status, workflow=workflow, batch_name=batch_name
            )
            for job in jobs:
                # A job created meanwhile shifts the pages: skip the repeats.
                if job.id in seen:
                    continue
                seen.add(job.id)
                yield job
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if len(jobs) < page_size:
                return
            number += 1

    async def delete(self, job_id: str) -> None:
        """``DELETE /job/{id}`` (irreversible)."""
        _check_id(job_id)
        await self._transport.request("DELETE", f"/job/{job_id}", route="DELETE /job/{id}")

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        raise_on_error: bool = False,
        poll: PollPolicy | None = None,
        on_status: Callable[[str], Any] | None = None,
    ) -> Job:
        """Poll ``GET /job/{id}/status`` with backoff until terminal; return the full job.

        Polls start at ``poll.initial_interval`` and back off to ``poll.max_interval`` (with
        jitter), through the client's rate limiter; a failed poll is retried by the transport
        rather than ending the wait. ``timeout`` (seconds) raises
        :class:`~audioshake_async.errors.TaskTimeoutError`; a ``FAILED`` job is returned as is
        unless ``raise_on_error``, which raises :class:`JobFailedError`.
        """
        _check_id(job_id)
        policy = poll or self._poll
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Job | None = None
        poll_number = 0
        while True:
            status = await self.status(job_id)
            if on_status is not None:
                on_status(status)
            if status in TERMINAL:
                last = await self.get(job_id)
                # The full record can lag the status endpoint: poll on until it agrees.
                if last.is_done:
                    break
            poll_number += 1
            delay = policy.interval(poll_number, random.random())
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.TaskTimeoutError(job_id, timeout or 0.0, last)
                delay = min(delay, remaining)
            await anyio.sleep(delay)
        assert last is not None
        if raise_on_error and last.status == FAILED:
            raise JobFailedError(last)
        return last


def _as_values(values: Sequence[str] | str | None, what: str) -> builtins.list[str]:
    if values is None:
        return []
    # A lone string is one filter value, not a sequence of one-letter values.
    items = [values] if isinstance(values, str) else list(values)
    for item in items:
        if not isinstance(item, str) or not item:
            raise errors.ValidationError(f"{what} filters are non-empty strings, got {item!r}")
    return items


class WorkflowsResource:
    """``/workflow``: the workflows of the account."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def page(self, *, page: int = 0, size: int = PAGE_SIZE) -> builtins.list[Workflow]:
        """One page of ``GET /workflow``."""
        if page < 0 or size < 1:
            raise errors.ValidationError(f"page must be >= 0 and size >= 1, got {page}, {size}")
        data = await self._transport.request(
            "GET", "/workflow", route="GET /workflow", params={"page": page, "size": size}
        )
        return [structure_as(item, Workflow, "workflow") for item in _items(data, "workflows")]

    async def list(self, *, page_size: int = PAGE_SIZE) -> builtins.list[Workflow]:
        """Every workflow, walking the pages until a short one."""
        found: dict[str, Workflow] = {}
        number = 0
        while True:
            workflows = await self.page(page=number, size=page_size)
            for workflow in workflows:
                found.setdefault(workflow.id, workflow)
            if len(workflows) < page_size:
                return builtins.list(found.values())
            number += 1


# --------------------------------------------------------------------------- the client


class MusicAI:
    """Async client of the Music.AI API.

    Use it as ``async with MusicAI() as client:`` and share one instance (one connection pool,
    one rate limiter). ``api_key`` and ``base_url`` fall back to ``MUSICAI_API_KEY`` and
    ``MUSICAI_BASE_URL`` (default ``https://api.music.ai/v1``). The key is sent raw in
    ``Authorization`` (no ``Bearer``), to the API's origin only.

    ``rate_limit`` defaults to 60 requests/s: Music.AI documents no limit, so this is a polite
    cap, not a documented one; 429 answers are honoured (``Retry-After``) either way.
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
        rate_limit: float | None = DEFAULT_RATE_LIMIT,
        session: aiohttp.ClientSession | None = None,
        poll: PollPolicy | None = None,
        connection_limit: int = 100,
        trust_env: bool = False,
        retry: RetryPolicy | None = None,
        upload_content_type: str | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        if not key or not key.strip():
            raise errors.ConfigurationError(
                f"no Music.AI API key: pass api_key= or set {ENV_API_KEY}"
            )
        if timeout <= 0 or not math.isfinite(timeout):
            raise errors.ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if max_retries < 0:
            raise errors.ConfigurationError(f"max_retries must be >= 0, got {max_retries!r}")
        if rate_limit is not None and not (rate_limit > 0 and math.isfinite(rate_limit)):
            raise errors.ConfigurationError(f"rate_limit must be positive, got {rate_limit!r}")
        url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        self._transport = Transport(
            base_url=url,
            # The raw key, no "Bearer" (the reference and both official SDKs).
            auth_headers={"Authorization": key.strip()},
            timeouts=Timeouts(request=timeout),
            retry=retry or RetryPolicy(max_retries=max_retries),
            rate_limit=rate_limit,
            session=session,
            connection_limit=connection_limit,
            trust_env=trust_env,
        )
        self.poll = poll or PollPolicy()
        self.upload_content_type = upload_content_type
        self.jobs = JobsResource(self._transport, self.poll)
        self.workflows = WorkflowsResource(self._transport)
        #: Extension of extension-less result URLs, found from their Content-Type once.
        self._probed: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return f"MusicAI(base_url={self._transport.base_url!r})"

    @property
    def base_url(self) -> str:
        """The API base URL in use."""
        return self._transport.base_url

    @property
    def transport(self) -> Transport:
        """The transport (session, limiter, retry policy) shared by every call."""
        return self._transport

    @property
    def request_counts(self) -> Mapping[str, int]:
        """Requests sent so far by route (retries included), e.g. ``{"GET /job/{id}": 12}``."""
        return dict(self._transport.request_counts)

    async def __aenter__(self) -> MusicAI:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned HTTP session (an injected one stays open)."""
        await self._transport.aclose()

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
            _is_url(data.get(k)) for k in ("uploadUrl", "downloadUrl")
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
        _remember(self._probed, key, found)
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

        async def refresh() -> str:
            # A read can return a record that does not list the output yet: look a few times.
            for attempt in range(1, STALE_READ_ATTEMPTS + 1):
                fresh = await self.jobs.get(job_id)
                url = fresh.files.get(output.name)
                if url is not None:
                    return url
                if attempt < STALE_READ_ATTEMPTS:
                    await anyio.sleep(self._transport.retry.delay(attempt, random.random()))
            raise errors.DownloadError(f"job {job_id} no longer lists output {output.name!r}")

        return await fetch_to_file(
            self._transport,
            output.link,
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
        concurrency: int = 8,
        checksum: bool = False,
    ) -> JobDownload:
        """Download every URL output of a ``SUCCEEDED`` job into ``destination``, concurrently.

        Each file is ``<output name>.<ext>`` (the name sanitized, so a key like ``Kick drum``
        or ``../x`` stays a plain file inside ``destination``; the extension from the URL path
        or the Content-Type), streamed to a hidden part file and renamed into place when
        complete, with retries, Range resume and URL refresh. Values that are not URLs
        (``"bpm": "64"``, ``"[custom storage]"``) go to ``result.json`` beside the files. If
        some files fail the others are still written, and
        :class:`~audioshake_async.errors.DownloadError` lists the failures.
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
            await anyio.to_thread.run_sync(_write_json_atomic, result_json, values)
        files: dict[str, pathlib.Path] = {}
        failures: builtins.list[str] = []
        limiter = anyio.CapacityLimiter(max(1, concurrency))
        job_id = job.id

        async def one(output: Output, path: pathlib.Path) -> None:
            async with limiter:
                try:
                    done = await self.fetch_output(job_id, output, path, checksum=checksum)
                except errors.AudioShakeError as exc:
                    failures.append(f"{output.name}: {exc}")
                else:
                    files[output.name] = done.path

        async with anyio.create_task_group() as group:
            for output, path in planned:
                group.start_soon(one, output, path)
        if failures:
            raise errors.DownloadError(
                f"{len(failures)} of {len(planned)} outputs failed: " + "; ".join(failures)
            )
        ordered = {o.name: files[o.name] for o, _ in planned}
        return JobDownload(ordered, values, result_json)


# --------------------------------------------------------------------------- batch provider

#: Link of the synthetic output that carries a job's non-URL values into ``result.json``.
_VALUES_SCHEME = "musicai-values:"
_STATUS_TO_TARGET = {SUCCEEDED: "completed", FAILED: "error"}


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    if len(cache) > CACHE_LIMIT:
        del cache[next(iter(cache))]  # dicts keep insertion order: the oldest entry


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
                _remember(self._values, job.id, values)
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

    async def fetch_output(
        self, task: Task, output: Output, destination: pathlib.Path, *, checksum: bool
    ) -> DownloadedFile:
        """Stream one output to disk (URL refreshed via ``GET /job/{id}`` when expired), or
        write the non-URL values as ``result.json``."""
        if not output.link.startswith(_VALUES_SCHEME):
            return await self.client.fetch_output(task.id, output, destination, checksum=checksum)
        values = self._values.pop(task.id, None)
        if values is None:
            values = (await self.client.jobs.get(task.id)).values
        size, digest = await anyio.to_thread.run_sync(_write_json_atomic, destination, values)
        return DownloadedFile(destination, size, digest if checksum else None)

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, by route."""
        return dict(self.client.request_counts)


# --------------------------------------------------------------------------- CLI


@contextlib.asynccontextmanager
async def open_cli_provider(
    args: argparse.Namespace, targets: Sequence[Target]
) -> AsyncIterator[BatchProvider]:
    """``run --provider musicai``: a ready provider, the workflow checked before any upload.

    With ``--emulator`` a local Music.AI emulator serves the run; otherwise the key comes from
    ``--api-key`` or ``MUSICAI_API_KEY`` and the base URL from ``--base-url``,
    ``MUSICAI_BASE_URL`` or the default. Problems raise the CLI's ``UsageError`` (exit 2).
    """
    from .cli import UsageError

    workflow = targets[0].model if targets else ""
    if args.emulator:
        try:
            from .emulator.musicai import MusicAIEmulator
        except ImportError as exc:  # pragma: no cover - the emulator extra is missing
            raise UsageError(
                f"the emulator needs extra packages: pip install "
                f"'audioshake-async[emulator]' ({exc})"
            ) from None
        async with (
            MusicAIEmulator(delay=args.emulator_delay) as emulator,
            MusicAI(emulator.api_key, emulator.base_url, rate_limit=args.rate_limit) as client,
        ):
            yield await _checked_provider(client, workflow, UsageError)
        return
    key = args.api_key or os.environ.get(ENV_API_KEY)
    if not key:
        raise UsageError(f"no API key: set {ENV_API_KEY}, pass --api-key, or use --emulator")
    base_url = args.base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
    async with MusicAI(key, base_url, rate_limit=args.rate_limit) as client:
        yield await _checked_provider(client, workflow, UsageError)


async def _checked_provider(
    client: MusicAI, workflow: str, usage_error: type[Exception]
) -> MusicAIProvider:
    try:
        workflows = await client.workflows.list()
    except errors.AuthenticationError:
        raise usage_error("the Music.AI API key was refused (401)") from None
    slugs = sorted(w.slug for w in workflows if w.slug)
    if workflow not in slugs:
        known = ", ".join(slugs) or "none"
        raise usage_error(f"unknown workflow {workflow!r} (available: {known})")
    return MusicAIProvider(client, workflow=workflow)
