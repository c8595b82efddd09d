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

from .client import MusicAI
from .files import check_upload, extension_from_content_type, extension_from_url
from .models import (
    CUSTOM_STORAGE,
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    FAILED,
    METADATA_KEY,
    QUEUED,
    STARTED,
    SUCCEEDED,
    Application,
    Job,
    JobDownload,
    JobError,
    JobFailedError,
    Workflow,
    parse_job,
)
from .provider import MusicAIProvider

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
    "check_upload",
    "extension_from_content_type",
    "extension_from_url",
    "parse_job",
]
