"""What the API, the storage host and the job runner of one Music.AI emulator share.

:class:`MusicAIState` holds the jobs, the uploads, the served files, the two link signers
and the counters; each part of the emulator receives it, none of them the facade.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from ..files import FileEntry
from ..links import LinkSigner
from ..state import iso_timestamp
from .config import MusicAIConfig
from .workflows import MusicAIWorkflow

QUEUED, STARTED, SUCCEEDED, FAILED = "QUEUED", "STARTED", "SUCCEEDED", "FAILED"
STATUSES = (QUEUED, STARTED, SUCCEEDED, FAILED)
ERROR_TITLES = {
    "BAD_INPUT": "Invalid input",
    "TIMEOUT": "Timeout",
    "INTERNAL_ERROR": "Internal error",
}
CUSTOM_STORAGE = "[custom storage]"
#: The file name of every upload slot on the storage host.
UPLOAD_NAME = "input"


@attrs.define(eq=False)
class Blob:
    """An uploaded input on the storage host."""

    path: Path
    size: int
    sha256: str
    content_type: str


@attrs.define(eq=False)
class Job:
    """A job as the emulator keeps it (rendered to JSON by :meth:`MusicAIState.job_json`)."""

    id: str
    seq: int
    name: str
    workflow: MusicAIWorkflow
    params: dict[str, Any]
    metadata: dict[str, Any]
    copy_to: dict[str, str]
    created: float
    forced_failure: bool
    status: str = QUEUED
    started: float | None = None
    completed: float | None = None
    error: dict[str, str] | None = None
    #: key -> ("file", file id, url file name) or ("value", text).
    result: dict[str, tuple[str, ...]] | None = None
    runner: asyncio.Task[None] | None = None


@attrs.define(eq=False)
class MusicAIState:
    """Mutable shared state of one Music.AI emulator (created with it, reset by no one)."""

    config: MusicAIConfig
    jobs: dict[str, Job] = attrs.Factory(dict)
    #: Upload slots by file id: ``None`` until the PUT completes.
    blobs: dict[str, Blob | None] = attrs.Factory(dict)
    #: Result files by file id.
    files: dict[str, FileEntry] = attrs.Factory(dict)
    put_signer: LinkSigner = attrs.Factory(LinkSigner)
    get_signer: LinkSigner = attrs.Factory(LinkSigner)
    rng: random.Random = attrs.Factory(random.Random)
    ids: random.Random = attrs.Factory(random.Random)
    workdir: Path | None = None
    http: aiohttp.ClientSession | None = None
    storage_url: str = ""
    started_at: str = ""
    counters: Counter[str] = attrs.Factory(Counter)
    requests: Counter[str] = attrs.Factory(Counter)
    storage_requests: Counter[str] = attrs.Factory(Counter)
    faults: Counter[str] = attrs.Factory(Counter)
    per_metadata: Counter[str] = attrs.Factory(Counter)
    key_headers: Counter[str] = attrs.Factory(Counter)
    #: The last API requests: (route, query items, header names).
    request_log: deque[tuple[str, list[tuple[str, str]], list[str]]] = attrs.Factory(
        lambda: deque(maxlen=2000)
    )

    def running(self) -> Path:
        """The work directory; ``RuntimeError`` when the emulator is not running."""
        if self.workdir is None:
            raise RuntimeError("emulator is not running (use 'async with MusicAIEmulator()')")
        return self.workdir

    def sign(self, signer: LinkSigner, file_id: str, filename: str) -> str:
        """A storage-host URL signed by ``signer``, valid for ``link_ttl`` from now."""
        expires = int(time.time() + self.config.link_ttl)
        return signer.sign(self.storage_url, file_id, filename, expires)

    def job_json(self, job: Job) -> dict[str, Any]:
        """The job as ``GET /job/{id}`` answers it, with freshly signed result URLs."""
        result = None
        if job.status == SUCCEEDED and job.result is not None:
            result = {}
            for key, entry in job.result.items():
                if entry[0] == "file":
                    result[key] = self.sign(self.get_signer, entry[1], entry[2])
                else:
                    result[key] = entry[1]
        return {
            "id": job.id,
            "app": self.config.app_name,
            "name": job.name,
            "workflow": job.workflow.slug,
            "status": job.status,
            "batchName": None,
            "workflowParams": job.params,
            "metadata": job.metadata,
            "result": result,
            "error": job.error,
            "createdAt": iso_timestamp(job.created),
            "startedAt": iso_timestamp(job.started) if job.started is not None else None,
            "completedAt": iso_timestamp(job.completed) if job.completed is not None else None,
        }
