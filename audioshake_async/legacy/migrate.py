"""Turn legacy Jobs API requests into equivalent Tasks API requests. No I/O.

The legacy API runs one model in one format per job; the Tasks API runs many models per task
(``targets``), each with a list of ``formats``. :func:`migrate_jobs` groups ``POST /job``
bodies by ``assetId`` into ``POST /tasks`` bodies (mapping of the vendor's migration guide,
seed 000):

=============================  =============================================================
Jobs API                       Tasks API
=============================  =============================================================
``metadata.name``              ``targets[].model``
``metadata.format``            ``targets[].formats[]`` (merged per model)
``metadata.variant``           ``targets[].variant``
``metadata.residual``          ``targets[].residual``
``metadata.language``          ``targets[].language``
``assetId``                    ``assetId`` (of a file uploaded with ``POST /assets``)
``callbackUrl`` (per job)      a webhook registered once (reported, not carried)
=============================  =============================================================

Nothing is dropped silently: every field without an equivalent (unknown keys,
``otherSourceAssets``, extra ``metadata`` keys), every merge, every split (at most 20 targets
per task; the same model twice with different options needs a second task) and every
``callbackUrl`` is reported as a :class:`MigrationNote`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from .. import errors
from ..models import MAX_TARGETS_PER_TASK, Target
from ..tasks.wire import build_create_task_body

__all__ = [
    "MigrationNote",
    "MigrationResult",
    "TaskRequest",
    "migrate_jobs",
]

#: Output formats documented for the Tasks API (model-dependent).
TASKS_FORMATS = frozenset({"wav", "mp3", "flac", "aiff", "mp4", "json", "srt", "txt"})
#: ``metadata`` keys that map onto target fields.
_MAPPED_METADATA = frozenset({"name", "format", "variant", "residual", "language"})
#: Fields of a job *response* (an exported job record): not part of a request, ignored.
_RESPONSE_FIELDS = frozenset(
    {
        "id",
        "clientId",
        "requestId",
        "licenseId",
        "status",
        "statusInfo",
        "createdAt",
        "startedAt",
        "updatedAt",
        "sourceAsset",
        "outputAssets",
        "stemAssets",
        "error",
        "errorMessage",
    }
)
_REQUEST_FIELDS = frozenset({"metadata", "stemMetadata", "assetId", "callbackUrl"})

ERROR, WARNING, ACTION, INFO = "error", "warning", "action", "info"


@attrs.frozen
class MigrationNote:
    """Something the conversion could not carry over, changed, or asks you to do.

    ``level`` is ``error`` (the job was not converted), ``warning`` (dropped or changed),
    ``action`` (a step to take by hand) or ``info``; ``jobs`` are indexes into the input list.
    """

    level: str
    message: str
    jobs: tuple[int, ...] = ()

    def __str__(self) -> str:
        where = ""
        if self.jobs:
            label = "job" if len(self.jobs) == 1 else "jobs"
            where = f"{label} {', '.join(map(str, self.jobs))}: "
        return f"{self.level}: {where}{self.message}"


@attrs.frozen
class TaskRequest:
    """One ``POST /tasks`` request and the legacy jobs it replaces."""

    asset_id: str
    targets: tuple[Target, ...]
    jobs: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``POST /tasks`` body (validated like the client validates it)."""
        return build_create_task_body(targets=self.targets, asset_id=self.asset_id)


@attrs.frozen
class MigrationResult:
    """The converted requests, the notes, and the callback URLs to register as webhooks."""

    requests: tuple[TaskRequest, ...]
    notes: tuple[MigrationNote, ...]
    webhook_urls: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every job was converted (no ``error`` note)."""
        return not any(n.level == ERROR for n in self.notes)

    def to_json(self) -> list[dict[str, Any]]:
        """Every ``POST /tasks`` body, in order."""
        return [request.to_json() for request in self.requests]


@attrs.define
class _Merged:
    """A target being assembled from one or more jobs."""

    model: str
    variant: str | None
    residual: bool | None
    language: str | None
    formats: list[str]
    jobs: list[int]

    def target(self) -> Target:
        return Target(
            self.model,
            tuple(self.formats),
            residual=self.residual,
            variant=self.variant,
            language=self.language,
        )


def _job_list(data: Any) -> list[Any]:
    """The job requests in ``data``: a list, ``{"jobs": [...]}`` or a single job."""
    if isinstance(data, Mapping) and isinstance(data.get("jobs"), list):
        return list(data["jobs"])
    if isinstance(data, Mapping):
        return [data]
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return list(data)
    raise errors.ValidationError(
        f'expected a list of legacy job requests (or {{"jobs": [...]}}), got {type(data).__name__}'
    )


def _optional(
    metadata: Mapping[str, Any], key: str, kind: type, index: int, notes: list[MigrationNote]
) -> Any:
    value = metadata.get(key)
    if value is None or isinstance(value, kind):
        return value
    notes.append(
        MigrationNote(
            WARNING,
            f"metadata.{key}={value!r} is not a {kind.__name__}; dropped",
            (index,),
        )
    )
    return None


def _formats(raw: Any, index: int, notes: list[MigrationNote]) -> list[str] | None:
    if raw is None:
        notes.append(MigrationNote(WARNING, "no metadata.format; wav assumed", (index,)))
        return ["wav"]
    values = raw if isinstance(raw, list) else [raw]
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        notes.append(
            MigrationNote(ERROR, f"metadata.format={raw!r} is not a format; skipped", (index,))
        )
        return None
    formats = [v.strip().lower() for v in values]
    unknown = [f for f in formats if f not in TASKS_FORMATS]
    if unknown:
        notes.append(
            MigrationNote(
                WARNING,
                f"format {', '.join(unknown)} is not a documented Tasks API output format "
                f"({', '.join(sorted(TASKS_FORMATS))}); kept, the server decides",
                (index,),
            )
        )
    return formats


def migrate_jobs(
    jobs: Iterable[Any] | Mapping[str, Any], *, max_targets: int = MAX_TARGETS_PER_TASK
) -> MigrationResult:
    """Convert legacy ``POST /job`` bodies into ``POST /tasks`` bodies grouped by asset.

    ``jobs`` is a list of job request objects (``{"metadata": {"name", "format"}, "assetId",
    "callbackUrl"?}``), ``{"jobs": [...]}`` or one job; ``{"job": {...}}`` envelopes and
    exported job records (with ``id``, ``status``...) are accepted too. Returns the requests
    (at most ``max_targets`` targets each) and the notes; raises
    :class:`~audioshake_async.errors.ValidationError` only when ``jobs`` is not a list at all.
    """
    if max_targets < 1:
        raise errors.ValidationError("max_targets must be at least 1")
    items = _job_list(jobs if not isinstance(jobs, Mapping) else dict(jobs))
    notes: list[MigrationNote] = []
    by_asset: dict[str, list[_Merged]] = {}
    callbacks: dict[str, list[int]] = {}
    ignored_response_fields: dict[str, list[int]] = {}
    for index, raw in enumerate(items):
        if isinstance(raw, Mapping) and isinstance(raw.get("job"), Mapping) and len(raw) == 1:
            raw = raw["job"]  # a response envelope
        if not isinstance(raw, Mapping):
            notes.append(
                MigrationNote(ERROR, f"not a job object ({type(raw).__name__}); skipped", (index,))
            )
            continue
        for key in raw:
            if key in _RESPONSE_FIELDS:
                ignored_response_fields.setdefault(key, []).append(index)
            elif key == "otherSourceAssets":
                notes.append(
                    MigrationNote(
                        WARNING,
                        "otherSourceAssets has no Tasks API equivalent and was dropped; for "
                        "alignment with your own transcript, upload it with POST /assets and "
                        "pass it as targets[].transcriptAssetId (or transcriptUrl)",
                        (index,),
                    )
                )
            elif key not in _REQUEST_FIELDS:
                notes.append(
                    MigrationNote(
                        WARNING, f"field {key!r} has no Tasks API equivalent; dropped", (index,)
                    )
                )
        metadata = raw.get("metadata")
        if not isinstance(metadata, Mapping) and isinstance(raw.get("stemMetadata"), Mapping):
            metadata = raw["stemMetadata"]  # the oldest docs' name for the same object
        if not isinstance(metadata, Mapping):
            notes.append(MigrationNote(ERROR, "no metadata object; skipped", (index,)))
            continue
        model = metadata.get("name")
        if not isinstance(model, str) or not model.strip():
            notes.append(MigrationNote(ERROR, "no metadata.name (the model); skipped", (index,)))
            continue
        model = model.strip()
        asset_id = raw.get("assetId")
        if not isinstance(asset_id, str) or not asset_id.strip():
            notes.append(MigrationNote(ERROR, "no assetId; skipped", (index,)))
            continue
        formats = _formats(metadata.get("format"), index, notes)
        if formats is None:
            continue
        variant = _optional(metadata, "variant", str, index, notes)
        residual = _optional(metadata, "residual", bool, index, notes)
        language = _optional(metadata, "language", str, index, notes)
        extra = sorted(set(metadata) - _MAPPED_METADATA)
        if extra:
            notes.append(
                MigrationNote(
                    WARNING,
                    f"metadata {', '.join(extra)} has no target equivalent; dropped (the task's "
                    "own `metadata` string, up to 4096 characters, can carry your data)",
                    (index,),
                )
            )
        callback = raw.get("callbackUrl")
        if isinstance(callback, str) and callback.strip():
            callbacks.setdefault(callback.strip(), []).append(index)
        elif callback is not None:
            notes.append(MigrationNote(WARNING, f"callbackUrl={callback!r} ignored", (index,)))
        targets = by_asset.setdefault(asset_id.strip(), [])
        same = next(
            (
                t
                for t in targets
                if (t.model, t.variant, t.residual, t.language)
                == (model, variant, residual, language)
            ),
            None,
        )
        if same is None:
            targets.append(_Merged(model, variant, residual, language, formats, [index]))
            continue
        repeated = [f for f in formats if f in same.formats]
        if repeated:
            notes.append(
                MigrationNote(
                    INFO,
                    f"repeats {model} as {', '.join(repeated)} (job {same.jobs[0]}); one target "
                    "output covers both",
                    (index,),
                )
            )
        same.formats.extend(f for f in formats if f not in same.formats)
        same.jobs.append(index)

    requests = _split(by_asset, max_targets, notes)
    for field, where in sorted(ignored_response_fields.items()):
        notes.append(
            MigrationNote(
                INFO, f"response field {field!r} ignored (not part of a request)", tuple(where)
            )
        )
    for url, where in callbacks.items():
        notes.append(
            MigrationNote(
                ACTION,
                f"callbackUrl {url} -> register it once as a webhook (POST /webhooks, or the "
                "dashboard: Settings > Webhook URL) instead of per request; a delivery is the "
                "full task object (no envelope), sent as each target finishes",
                tuple(where),
            )
        )
    if requests:
        notes.append(
            MigrationNote(
                ACTION,
                "assetId values come from Jobs API uploads: upload the files with POST /assets "
                "(header x-api-key, host api.audioshake.ai) and use the ids it returns; assets "
                "expire after 72 hours",
            )
        )
        notes.append(
            MigrationNote(
                INFO,
                "responses are flat task objects: read response.id (not response.job.id); "
                "each target has its own status (processing, completed, error) and outputs",
            )
        )
    return MigrationResult(tuple(requests), tuple(notes), tuple(callbacks))


def _split(
    by_asset: Mapping[str, list[_Merged]], max_targets: int, notes: list[MigrationNote]
) -> list[TaskRequest]:
    """Targets of each asset into as few requests as allowed (in order of first appearance)."""
    requests: list[TaskRequest] = []
    for asset_id, merged in by_asset.items():
        groups: list[list[_Merged]] = []
        for target in merged:
            # A task takes each (model, variant) once and at most max_targets targets.
            home = next(
                (
                    g
                    for g in groups
                    if len(g) < max_targets
                    and all((t.model, t.variant) != (target.model, target.variant) for t in g)
                ),
                None,
            )
            if home is None:
                home = []
                groups.append(home)
            home.append(target)
        if len(groups) > 1:
            reasons = []
            if len(merged) > max_targets:
                reasons.append(f"a task takes at most {max_targets} targets")
            if len({(t.model, t.variant) for t in merged}) < len(merged):
                reasons.append("a task takes each model once (options differed between jobs)")
            notes.append(
                MigrationNote(
                    WARNING,
                    f"asset {asset_id}: {len(merged)} targets split into {len(groups)} tasks "
                    f"({'; '.join(reasons)})",
                    tuple(sorted(i for t in merged for i in t.jobs)),
                )
            )
        for group in groups:
            requests.append(
                TaskRequest(
                    asset_id,
                    tuple(t.target() for t in group),
                    tuple(sorted(i for t in group for i in t.jobs)),
                )
            )
    return requests
