"""The Music.AI API routes (under ``/v1``), behind the raw key in ``Authorization``.

A middleware applies, in order: request counting, the 429 burst and token bucket, injected
5xx (``http_fail_rate``), authentication, then the handler. Every success is ``200``.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Any

import attrs
from aiohttp import web

from ..faults import TokenBucket
from ..files import new_file_id
from .processing import JobRunner
from .state import UPLOAD_NAME, Job, MusicAIState
from .validation import (
    HttpError,
    check_job_id,
    error_response,
    parse_job,
    parse_paging,
    parse_statuses,
)

PREFIX = "/v1"
#: Every API route, as ``stats()["requests"]`` names it.
API_ROUTES = (
    "GET /upload",
    "POST /job",
    "GET /job",
    "GET /job/{id}",
    "GET /job/{id}/status",
    "DELETE /job/{id}",
    "GET /workflow",
    "GET /application",
)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    template = resource.canonical if resource is not None else "<unmatched>"
    return f"{request.method} {template.removeprefix(PREFIX)}"


class ApiRoutes:
    """Route handlers of the API, and the rate limiting and faults in front of them."""

    def __init__(self, state: MusicAIState, jobs: JobRunner) -> None:
        self._state = state
        self._jobs = jobs
        self._bucket = TokenBucket()
        self._burst = state.config.rate_limit_burst
        self._seq = 0
        self._last_created_ms = 0

    def arm_burst(self, count: int) -> None:
        """The next ``count`` requests answer 429."""
        self._burst = count

    def app(self) -> web.Application:
        """The API application."""
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 20)
        r = app.router
        r.add_get(f"{PREFIX}/upload", self._upload_urls)
        r.add_post(f"{PREFIX}/job", self._create_job)
        r.add_get(f"{PREFIX}/job", self._list_jobs)
        r.add_get(f"{PREFIX}/job/{{id}}", self._get_job)
        r.add_get(f"{PREFIX}/job/{{id}}/status", self._job_status)
        r.add_delete(f"{PREFIX}/job/{{id}}", self._delete_job)
        r.add_get(f"{PREFIX}/workflow", self._list_workflows)
        r.add_get(f"{PREFIX}/application", self._application)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        state = self._state
        route = _route(request)
        state.requests[route] += 1
        state.request_log.append((route, list(request.query.items()), list(request.headers)))
        cfg = state.config
        if self._burst > 0 or (
            cfg.rate_limit is not None
            and not self._bucket.try_acquire(cfg.rate_limit, max(1.0, cfg.rate_limit))
        ):
            kind = "rate_limit_burst" if self._burst > 0 else "rate_limited"
            self._burst = max(0, self._burst - 1)
            state.faults[kind] += 1
            headers = {} if cfg.retry_after is None else {"Retry-After": f"{cfg.retry_after:g}"}
            return error_response(429, "RATE_LIMITED", "Too many requests", headers)
        targeted = cfg.fault_routes is None or route in cfg.fault_routes
        if targeted and cfg.http_fail_rate > 0 and state.rng.random() < cfg.http_fail_rate:
            state.faults["http_fail"] += 1
            status = state.rng.choice(cfg.fail_statuses)
            return error_response(status, "INTERNAL_ERROR", f"Emulated server error ({status})")
        key = request.headers.get("Authorization", "")
        if not hmac.compare_digest(key.encode(), cfg.api_key.encode()):
            state.counters["auth_failures"] += 1
            return error_response(401, "UNAUTHORIZED", "Missing or invalid API key")
        try:
            response: web.StreamResponse = await handler(request)
        except HttpError as exc:
            return error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            code = "NOT_FOUND" if exc.status == 404 else "ERROR"
            return error_response(exc.status, code, exc.reason)
        return response

    async def _upload_urls(self, request: web.Request) -> web.Response:
        state = self._state
        file_id = new_file_id()
        # A slot: the download URL works once the PUT has completed.
        state.blobs[file_id] = None
        return web.json_response(
            {
                "uploadUrl": state.sign(state.put_signer, file_id, UPLOAD_NAME),
                "downloadUrl": state.sign(state.get_signer, file_id, UPLOAD_NAME),
            }
        )

    async def _create_job(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        parsed = parse_job(await request.read(), state.config.workflows)
        cfg = state.config
        self._seq += 1
        job = Job(
            id=str(uuid.UUID(int=state.ids.getrandbits(128), version=4)),
            seq=self._seq,
            name=parsed.name,
            workflow=parsed.workflow,
            params=parsed.params,
            metadata=parsed.metadata,
            copy_to=parsed.copy_to,
            created=self._next_created(),
            forced_failure=cfg.fail_rate > 0 and state.rng.random() < cfg.fail_rate,
        )
        state.jobs[job.id] = job
        state.counters["jobs_created"] += 1
        if parsed.metadata:
            state.per_metadata[json.dumps(parsed.metadata, sort_keys=True)] += 1
        self._jobs.start(job)
        if state.config.drop_after_create > 0:
            state.config = attrs.evolve(cfg, drop_after_create=cfg.drop_after_create - 1)
            state.faults["drop_after_create"] += 1
            if request.transport is not None:
                request.transport.close()
        return web.json_response({"id": job.id})

    def _next_created(self) -> float:
        # Strictly increasing at the millisecond resolution of ``createdAt``: the order of
        # jobs created in one burst stays visible to clients.
        millis = max(int(time.time() * 1000), self._last_created_ms + 1)
        self._last_created_ms = millis
        return millis / 1000

    def _find(self, request: web.Request) -> Job:
        job_id = request.match_info["id"]
        check_job_id(job_id)
        job = self._state.jobs.get(job_id)
        if job is None:
            raise HttpError(404, "JOB_NOT_FOUND", "Job not found")
        return job

    async def _get_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._state.job_json(self._find(request)))

    async def _job_status(self, request: web.Request) -> web.Response:
        job = self._find(request)
        return web.json_response({"id": job.id, "status": job.status})

    async def _delete_job(self, request: web.Request) -> web.Response:
        state = self._state
        job = self._find(request)
        del state.jobs[job.id]
        if job.runner is not None:
            job.runner.cancel()
        for entry in (job.result or {}).values():
            if entry[0] == "file":
                state.files.pop(entry[1], None)
        return web.json_response({"id": job.id})

    async def _list_jobs(self, request: web.Request) -> web.Response:
        state = self._state
        page, size = parse_paging(request)
        statuses = parse_statuses(request)
        workflows = request.query.getall("workflow", [])
        batch = request.query.get("batchName")
        jobs = [
            job
            for job in state.jobs.values()
            if (not statuses or job.status in statuses)
            and (not workflows or job.workflow.slug in workflows)
            and (batch is None or batch == "")  # jobs made through the API have no batch
        ]
        if state.config.list_order == "newest":
            jobs.reverse()
        body: Any = [state.job_json(job) for job in jobs[page * size : (page + 1) * size]]
        if state.config.list_envelope:
            body = {"jobs": body}
        return web.json_response(body)

    async def _list_workflows(self, request: web.Request) -> web.Response:
        state = self._state
        page, size = parse_paging(request)
        chosen = state.config.workflows[page * size : (page + 1) * size]
        return web.json_response({"workflows": [w.to_json(state.started_at) for w in chosen]})

    async def _application(self, request: web.Request) -> web.Response:
        cfg = self._state.config
        app_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"musicai-emulator:{cfg.api_key}"))
        return web.json_response({"id": app_id, "name": cfg.app_name})
