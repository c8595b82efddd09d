"""Music.AI's resources: ``/job`` and ``/workflow``."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from multidict import MultiDict

from .. import errors
from ..core.http import PollPolicy, require_id, structure_as
from ..core.service import poll_until, walk_pages
from ..core.transport import Retry, Transport
from .models import (
    FAILED,
    PAGE_SIZE,
    TERMINAL,
    Job,
    JobFailedError,
    Workflow,
    check_metadata,
    items_of,
    parse_job,
)

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
        checked = check_metadata(metadata)
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
        require_id(job_id, "job_id")
        data = await self._transport.request("GET", f"/job/{job_id}", route="GET /job/{id}")
        return parse_job(data)

    async def status(self, job_id: str) -> str:
        """``GET /job/{id}/status``: ``QUEUED``, ``STARTED``, ``SUCCEEDED`` or ``FAILED``."""
        require_id(job_id, "job_id")
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
        return [parse_job(item) for item in items_of(data, "jobs")]

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

        async def fetch(number: int) -> builtins.list[Job]:
            return await self.page(
                page=number, size=page_size, status=status, workflow=workflow, batch_name=batch_name
            )

        async for job in walk_pages(fetch, _job_id, page_size=page_size, limit=limit):
            yield job

    async def delete(self, job_id: str) -> None:
        """``DELETE /job/{id}`` (irreversible)."""
        require_id(job_id, "job_id")
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
        require_id(job_id, "job_id")

        async def read(_: Job | None) -> Job | None:
            status = await self.status(job_id)
            if on_status is not None:
                on_status(status)
            # The full record can lag the status endpoint: poll on until it agrees.
            return await self.get(job_id) if status in TERMINAL else None

        job = await poll_until(
            read, _is_done, ident=job_id, policy=poll or self._poll, timeout=timeout
        )
        if raise_on_error and job.status == FAILED:
            raise JobFailedError(job)
        return job


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
        return [structure_as(item, Workflow, "workflow") for item in items_of(data, "workflows")]

    async def list(self, *, page_size: int = PAGE_SIZE) -> builtins.list[Workflow]:
        """Every workflow, walking the pages until a short one."""

        async def fetch(number: int) -> builtins.list[Workflow]:
            return await self.page(page=number, size=page_size)

        return [w async for w in walk_pages(fetch, _workflow_id, page_size=page_size)]


def _job_id(job: Job) -> str:
    return job.id


def _workflow_id(workflow: Workflow) -> str:
    return workflow.id


def _is_done(job: Job) -> bool:
    return job.is_done
