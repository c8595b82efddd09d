"""Typed models of the AudioShake Tasks API.

Attributes are snake_case; the JSON field names are derived by the converter in ``_convert``.
Only ``id`` (and for tasks ``targets``) are required when parsing responses: the webhook payload
example omits most other fields, so every other field is optional and unknown fields are ignored.
No I/O and no serialization code live here.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import attrs

from . import errors

__all__ = [
    "DOCUMENTED_INPUT_EXTENSIONS",
    "MAX_METADATA_LENGTH",
    "MAX_TARGETS_PER_TASK",
    "MAX_UPLOAD_BYTES",
    "Asset",
    "Model",
    "ModelInput",
    "Output",
    "Target",
    "TargetError",
    "TargetResult",
    "TargetStatus",
    "Task",
    "UsageMonth",
    "Webhook",
    "merge_task_snapshot",
    "validate_targets",
]

#: Documented ceiling of ``POST /assets`` ("Maximum file size is 2GB").
MAX_UPLOAD_BYTES = 2 * 1024**3
#: Documented by the Create Task reference (older guides said 10; the server is the judge).
MAX_TARGETS_PER_TASK = 20
#: Documented maximum length of the ``metadata`` string.
MAX_METADATA_LENGTH = 4096

#: Documented input formats (the "Supported formats" page): audio, video and alignment transcripts.
DOCUMENTED_INPUT_EXTENSIONS: dict[str, str] = {
    ".wav": "audio/wav",
    ".aiff": "audio/aiff",
    ".aif": "audio/aiff",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".aac": "audio/aac",
    ".m4a": "audio/mp4",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".json": "application/json",
    ".txt": "text/plain",
}


class TargetStatus(str, enum.Enum):
    """The documented target statuses; unknown strings are kept as plain ``str``."""

    PROCESSING = "processing"
    COMPLETED = "completed"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


#: Statuses after which a target never changes. ``failed`` is not documented for Tasks but
#: real clients see or expect it (legacy habit), so it is accepted as an alias of ``error``.
TERMINAL_STATUSES = frozenset({"completed", "error", "failed"})
ERROR_STATUSES = frozenset({"error", "failed"})


def _as_str_tuple(value: str | Sequence[str]) -> tuple[str, ...]:
    # A lone string is one format, not a sequence of one-letter formats.
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class Target:
    """One model target requested in ``POST /tasks``.

    ``Target("vocals", ["wav"])`` asks for the vocals stem as WAV. ``variant`` selects e.g.
    ``high_quality``; ``language``, ``transcript_url`` and ``transcript_asset_id`` serve the
    transcription and alignment models.
    """

    model: str
    formats: tuple[str, ...] = attrs.field(default=("wav",), converter=_as_str_tuple)
    residual: bool | None = None
    variant: str | None = None
    language: str | None = None
    transcript_url: str | None = None
    transcript_asset_id: str | None = None


@attrs.frozen
class Output:
    """One downloadable file of a completed target: ``<name>.<format>`` at a signed ``link``."""

    name: str
    format: str
    link: str

    @property
    def filename(self) -> str:
        """The file name the output is saved under (before sanitizing)."""
        return f"{self.name}.{self.format}"


@attrs.frozen
class TargetError:
    """The documented ``{code, message}`` error of a failed target."""

    code: float | int | str | None = None
    message: str | None = None


@attrs.frozen
class TargetResult:
    """A target as reported by the service, with its status and outputs."""

    id: str
    model: str = ""
    status: str = "processing"
    formats: tuple[str, ...] = ()
    output: tuple[Output, ...] = ()
    cost: float | None = None
    error: TargetError | None = None
    duration: float | None = None
    residual: bool | None = None
    variant: str | None = None
    language: str | None = None
    transcript_url: str | None = None
    transcript_asset_id: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the target is ``completed`` or ``error`` (or the ``failed`` alias)."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_completed(self) -> bool:
        """True when the target finished with outputs."""
        return self.status == TargetStatus.COMPLETED.value

    @property
    def is_error(self) -> bool:
        """True when the target failed."""
        return self.status in ERROR_STATUSES


@attrs.frozen
class Task:
    """A processing task: one source and its targets, each finishing on its own."""

    id: str
    targets: tuple[TargetResult, ...] = ()
    created_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    client_id: str | None = None
    cost: float | None = None
    asset_id: str | None = None
    url: str | None = None
    metadata: str | None = None

    @property
    def is_done(self) -> bool:
        """True when every target is terminal (not merely the first one)."""
        return bool(self.targets) and all(t.is_terminal for t in self.targets)

    @property
    def succeeded(self) -> bool:
        """True when done and no target failed."""
        return self.is_done and not any(t.is_error for t in self.targets)

    @property
    def failed_targets(self) -> tuple[TargetResult, ...]:
        """Targets that ended in error."""
        return tuple(t for t in self.targets if t.is_error)

    @property
    def outputs(self) -> tuple[Output, ...]:
        """Every output of every completed target."""
        return tuple(o for t in self.targets if t.is_completed for o in t.output)

    def target(self, target_id: str) -> TargetResult | None:
        """The target with this id, if present."""
        return next((t for t in self.targets if t.id == target_id), None)


@attrs.frozen
class Asset:
    """An uploaded file, usable as ``asset_id`` for 72 hours."""

    id: str
    format: str | None = None
    name: str | None = None
    link: str | None = None
    mime_type: str | None = None


@attrs.frozen
class ModelInput:
    """One input slot of a model and the task fields and formats it accepts."""

    id: str
    description: str | None = None
    required: bool | None = None
    task_fields: tuple[str, ...] = ()
    formats: dict[str, tuple[str, ...]] = attrs.field(factory=dict)


@attrs.frozen
class Model:
    """A model from ``GET /models``; ``id`` is the value passed as ``Target.model``."""

    id: str
    name: str | None = None
    category: str | None = None
    description: str | None = None
    access: str | None = None
    credits_per_minute: float | None = None
    inputs: tuple[ModelInput, ...] = ()
    output_formats: tuple[str, ...] = ()
    limits: dict[str, Any] = attrs.field(factory=dict)
    supported_languages: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        """False for gated (``request_access``) models."""
        return self.access in (None, "enabled")


@attrs.frozen
class UsageMonth:
    """One row of ``GET /tasks/statistics?name=usage``; minutes arrive as a string."""

    month: str
    total_targets: int | None = None
    total_minutes: Decimal | None = None


@attrs.frozen
class Webhook:
    """A registered webhook (``POST /webhooks``: the shape is inferred, not documented)."""

    id: str
    url: str | None = None
    created_at: dt.datetime | None = None


def merge_task_snapshot(old: Task | None, new: Task) -> Task:
    """Keep the newer view of each target: a stale snapshot never un-finishes a target.

    Deliveries and polls can arrive out of order; a target seen terminal stays terminal.
    """
    if old is None or old.id != new.id:
        return new
    known = {t.id: t for t in old.targets}
    merged = []
    changed = False
    for target in new.targets:
        previous = known.get(target.id)
        if previous is not None and previous.is_terminal and not target.is_terminal:
            merged.append(previous)
            changed = True
        else:
            merged.append(target)
    if not changed:
        return new
    return attrs.evolve(
        new, targets=tuple(merged), completed_at=new.completed_at or old.completed_at
    )


def validate_targets(targets: Sequence[Target]) -> tuple[Target, ...]:
    """Check a target list before ``POST /tasks``: 1..20 targets, each with a model and formats."""
    if isinstance(targets, Target):
        targets = [targets]
    result = tuple(targets)
    if not result:
        raise errors.ValidationError("a task needs at least one target")
    if len(result) > MAX_TARGETS_PER_TASK:
        raise errors.ValidationError(
            f"a task takes at most {MAX_TARGETS_PER_TASK} targets, got {len(result)}"
        )
    seen: set[tuple[str, str | None]] = set()
    for target in result:
        if not isinstance(target, Target):
            raise errors.ValidationError(f"targets must be Target objects, got {target!r}")
        if not target.model or not target.model.strip():
            raise errors.ValidationError("a target needs a model name")
        if not target.formats or any(not f or not f.strip() for f in target.formats):
            raise errors.ValidationError(f"target {target.model!r} needs at least one format")
        if len(set(target.formats)) != len(target.formats):
            raise errors.ValidationError(f"target {target.model!r} repeats a format")
        key = (target.model, target.variant)
        if key in seen:
            raise errors.ValidationError(f"target {target.model!r} appears twice in one task")
        seen.add(key)
        if target.transcript_url and target.transcript_asset_id:
            raise errors.ValidationError(
                "give either transcript_url or transcript_asset_id, not both"
            )
    return result
