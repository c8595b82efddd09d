"""One composite Task per input: the jobs of one asset as the targets of one task."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from urllib.parse import quote, unquote

import attrs

from .. import errors
from ..models import TargetError, TargetResult, Task
from .models import COMPLETED_STATUS, COMPOSITE_PREFIX, FAILED_STATUSES, PENDING_STATUSES, Job

logger = logging.getLogger("audioshake_async.legacy")


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
class Rejected:
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


def job_marker(key: JobKey) -> str:
    # "!" never appears in a job id and quote() escapes it (and "+") inside the parts.
    model, variant, fmt = key
    return "!" + "!".join(quote(part or "", safe="") for part in (model, fmt, variant))


def parse_job_marker(part: str) -> JobKey:
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


def composite_task(jobs: Sequence[Job | Rejected], token: str | None = None) -> Task:
    """The jobs of one input as ONE Tasks-style task whose targets are the jobs."""
    parts = [j.marker if isinstance(j, Rejected) else j.id for j in jobs]
    targets = tuple(j.target() if isinstance(j, Rejected) else job_target(j) for j in jobs)
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
