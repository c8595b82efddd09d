"""Music.AI's vocabulary: jobs, workflows, the application, statuses."""

from __future__ import annotations

import builtins
import datetime as dt
import pathlib
from collections.abc import Mapping
from typing import Any

import attrs

from .. import errors
from ..core.http import structure_as

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


def is_url(value: Any) -> bool:
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
        return {k: v for k, v in (self.result or {}).items() if is_url(v)}

    @property
    def values(self) -> dict[str, Any]:
        """The ``result`` entries that are not URLs (``"bpm": "64"``, ``"[custom storage]"``)."""
        return {k: v for k, v in (self.result or {}).items() if not is_url(v)}


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

    def __reduce__(self) -> Any:
        return (type(self), (self.job,))

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


def items_of(data: Any, key: str) -> builtins.list[Any]:
    # ``GET /job`` is documented both as a bare array (the example) and as ``{"jobs": [...]}``
    # (the field table): accept either.
    if isinstance(data, dict) and isinstance(data.get(key), list):
        data = data[key]
    if not isinstance(data, list):
        raise errors.ResponseParseError(f"expected a list of {key}, got {type(data).__name__}")
    return data


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
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


def remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Store in a small cache of at most ``CACHE_LIMIT`` entries, dropping the oldest."""
    cache[key] = value
    if len(cache) > CACHE_LIMIT:
        del cache[next(iter(cache))]  # dicts keep insertion order: the oldest entry
