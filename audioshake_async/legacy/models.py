"""The Jobs API's vocabulary: jobs, assets, usage, statuses and the model list."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .. import errors
from ..models import Output, Target

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
