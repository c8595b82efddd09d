"""Checks of what clients send to the Music.AI API, and the errors they answer.

Error bodies are undocumented; the job error triple ``{code, title, message}`` is the
likeliest shape, so every refusal here carries a status, a code and a message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from aiohttp import web

from ..errors import reason
from .state import STATUSES
from .workflows import MusicAIWorkflow

_JOB_ID = re.compile(r"^[0-9a-fA-F-]{8,64}$")


class HttpError(Exception):
    """A request refused with ``status`` and the ``{code, title, message}`` body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The ``{code, title, message}`` answer every Music.AI error uses here."""
    body = {"code": code, "title": reason(status), "message": message}
    return web.json_response(body, status=status, headers=headers)


@attrs.frozen
class JobRequest:
    """A valid ``POST /job`` body."""

    name: str
    workflow: MusicAIWorkflow
    params: dict[str, Any]
    metadata: dict[str, Any]
    copy_to: dict[str, str]


def parse_job(raw: bytes, workflows: Sequence[MusicAIWorkflow]) -> JobRequest:
    """Check a ``POST /job`` body against the configured ``workflows``."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise HttpError(400, "INVALID_FIELDS", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "INVALID_FIELDS", "body must be a JSON object")
    name, slug, params = body.get("name"), body.get("workflow"), body.get("params")
    if not isinstance(name, str) or not name.strip():
        raise HttpError(400, "INVALID_FIELDS", "name is required")
    if not isinstance(slug, str) or not slug:
        raise HttpError(400, "INVALID_FIELDS", "workflow is required")
    if not isinstance(params, dict):
        raise HttpError(400, "INVALID_FIELDS", "params must be an object")
    workflow = next((w for w in workflows if w.slug == slug), None)
    if workflow is None:
        raise HttpError(404, "WORKFLOW_NOT_FOUND", f"Workflow {slug!r} not found")
    if not isinstance(params.get("inputUrl"), str) or not params["inputUrl"]:
        raise HttpError(422, "INVALID_PARAMS", "params.inputUrl is required")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in metadata.values()
    ):
        raise HttpError(400, "INVALID_FIELDS", "metadata values are strings/numbers/booleans")
    copy_to = body.get("copyResultsTo") or {}
    outputs = {key for key, _ in workflow.outputs}
    if not isinstance(copy_to, dict) or not all(
        k in outputs and isinstance(v, str) for k, v in copy_to.items()
    ):
        raise HttpError(422, "INVALID_PARAMS", "copyResultsTo maps file outputs to URLs")
    return JobRequest(name, workflow, params, metadata, copy_to)


def check_job_id(job_id: str) -> None:
    """Refuse an id that cannot be a job id (400, before looking it up)."""
    if not _JOB_ID.match(job_id):
        raise HttpError(400, "INVALID_ID", "Invalid job ID format")


def parse_paging(request: web.Request) -> tuple[int, int]:
    """``(page, size)`` from the query string (defaults 0 and 100)."""
    try:
        page = int(request.query.get("page", "0"))
        size = int(request.query.get("size", "100"))
    except ValueError:
        raise HttpError(400, "INVALID_PARAMS", "page and size are integers") from None
    if page < 0 or not 1 <= size <= 1000:
        raise HttpError(400, "INVALID_PARAMS", "page >= 0 and 1 <= size <= 1000")
    return page, size


def parse_statuses(request: web.Request) -> list[str]:
    """The repeatable ``status`` filter of ``GET /job``."""
    statuses = request.query.getall("status", [])
    if any(s not in STATUSES for s in statuses):
        raise HttpError(400, "INVALID_PARAMS", f"status is one of {', '.join(STATUSES)}")
    return statuses
