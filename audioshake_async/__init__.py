"""asyncio-native client and concurrent batch engine for the AudioShake API.

Quick start::

    async with AudioShake() as client:
        asset = await client.assets.upload("song.wav")
        task = await client.tasks.create(asset_id=asset.id, targets=[Target("vocals", ["wav"])])
        task = await client.tasks.wait(task.id)
        files = await client.download(task, "stems")
"""

from ._version import __version__
from .core.download import DownloadedFile, DownloadLimits
from .core.http import PollPolicy, RetryPolicy
from .core.ratelimit import Limiter
from .core.ratelimit_pg import PostgresRateLimiter
from .errors import (
    AmbiguousRequestError,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AudioShakeError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DownloadError,
    InsufficientCreditsError,
    JournalBusyError,
    JournalError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ResponseParseError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    UnprocessableEntityError,
    ValidationError,
)
from .models import (
    Asset,
    Model,
    ModelInput,
    Output,
    Target,
    TargetError,
    TargetResult,
    TargetStatus,
    Task,
    UsageMonth,
    Webhook,
)
from .tasks.client import AudioShake

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AmbiguousRequestError",
    "Asset",
    "AudioShake",
    "AudioShakeError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "DownloadError",
    "DownloadLimits",
    "DownloadedFile",
    "InsufficientCreditsError",
    "JournalBusyError",
    "JournalError",
    "Limiter",
    "Model",
    "ModelInput",
    "NotFoundError",
    "Output",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PollPolicy",
    "PostgresRateLimiter",
    "RateLimitError",
    "ResponseParseError",
    "RetryPolicy",
    "ServerError",
    "Target",
    "TargetError",
    "TargetResult",
    "TargetStatus",
    "Task",
    "TaskFailedError",
    "TaskTimeoutError",
    "UnprocessableEntityError",
    "UsageMonth",
    "ValidationError",
    "Webhook",
    "__version__",
]
