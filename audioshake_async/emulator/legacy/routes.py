"""The legacy Jobs API routes, behind ``Authorization: Bearer <token>``.

A middleware counts each request under its route name, serves the next scripted outcome
(:meth:`~.server.LegacyEmulator.script`), authenticates, then calls the handler. Errors use
Fastify's ``{statusCode, error, message}`` envelope [INFER].
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from ..errors import ApiError, error_response
from ..http_common import MAX_JSON_BODY, drop, read_json, route_template
from ..processing import Processor
from ..state import COMPLETED, Target, Task, iso_timestamp
from ..uploads import AssetUploads
from .events import JobEvents
from .state import Job, LegacyState, LinkAsset, asset_json
from .validation import parse_job, parse_link

#: Routes as :meth:`~.server.LegacyEmulator.stats` and ``script`` name them.
LEGACY_ROUTES = (
    "POST /upload",
    "POST /upload/link",
    "POST /job",
    "GET /job/{id}",
    "GET /usage",
)


def _route(request: web.Request) -> str:
    template = route_template(request)
    if template.endswith("/") and len(template) > 1:
        template = template[:-1]  # "/upload/" and "/upload" are one route
    if template == "/upload/audio-link":
        template = "/upload/link"
    return f"{request.method} {template}"


class LegacyRoutes:
    """Route handlers of the legacy API (built at start, when the runtime exists)."""

    def __init__(
        self,
        state: LegacyState,
        processor: Processor,
        uploads: AssetUploads,
        events: JobEvents,
    ) -> None:
        self._state = state
        self._processor = processor
        self._uploads = uploads
        self._events = events

    def app(self) -> web.Application:
        """The API application."""
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_JSON_BODY)
        r = app.router
        for path in ("/upload", "/upload/"):
            r.add_post(path, self._upload)
        for path in ("/upload/link", "/upload/audio-link"):
            r.add_post(path, self._upload_link)
        for path in ("/job", "/job/"):
            r.add_post(path, self._create_job)
        r.add_get("/job/{id}", self._get_job)
        r.add_get("/usage", self._usage)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        state = self._state
        stats = state.runtime().store.stats
        route = _route(request)
        stats.requests[route] += 1
        queue = state.script.get(route)
        outcome = queue.popleft() if queue else "ok"
        if outcome != "ok":
            state.counts[f"fault:{outcome}"] += 1
        if outcome == "drop":
            return drop(request)
        if outcome.isdigit():
            status = int(outcome)
            headers = {}
            if status == 429 and state.config.retry_after is not None:
                headers["Retry-After"] = f"{state.config.retry_after:g}"
            stats.responses[str(status)] += 1
            return error_response(status, f"Scripted failure ({status})", headers)
        if not self._authorized(request):
            stats.responses["401"] += 1
            return error_response(401, "Unauthorized: invalid or missing Bearer token")
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPException as exc:
            message = (
                f"Route {request.method}:{request.path} not found"
                if exc.status == 404
                else exc.reason
            )
            response = error_response(exc.status, message)
        if outcome == "drop_after":
            # The ambiguous case: the work is done, the client never learns about it.
            return drop(request)
        stats.responses[str(response.status)] += 1
        return response

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode(), self._state.config.token.encode())

    async def _upload(self, request: web.Request) -> web.Response:
        """``POST /upload``: the Tasks emulator's streamed upload, answered the legacy way."""
        asset = await self._uploads.receive(request)
        return web.json_response(self._state.file_asset_json(asset))

    async def _upload_link(self, request: web.Request) -> web.Response:
        """``POST /upload/link``: ``{"link", "name"?}``; fetched when a job runs."""
        parsed = parse_link(await read_json(request))
        rt = self._state.runtime()
        asset = LinkAsset(rt.store.ids.new(), parsed.name, parsed.link, parsed.format, rt.clock())
        self._state.links[asset.id] = asset
        return web.json_response(asset_json(asset.id, asset.name, asset.format, asset.link))

    async def _create_job(self, request: web.Request) -> web.Response:
        """``POST /job``: validate, create a one-target task, start processing."""
        body = await read_json(request)
        state = self._state
        rt = state.runtime()
        cfg = state.config
        parsed = parse_job(body)
        link_asset = state.links.get(parsed.asset_id)
        if link_asset is None and rt.store.live_asset(parsed.asset_id) is None:
            raise ApiError(404, "Cannot find asset")
        model = parsed.model
        forced = (
            f"Emulated failure: model '{model}' is in error_models"
            if (model in cfg.error_models)
            else None
        )
        store = rt.store
        now = rt.clock()
        target = Target(
            id=store.ids.new(),
            model=model,
            formats=[parsed.format],
            residual=parsed.residual,
            variant=parsed.variant,
            language=parsed.language,
            due=cfg.delay,
            forced_error=forced,
        )
        task = Task(
            id=store.ids.new(),
            created_at=now,
            client_id=store.client_id,
            targets=[target],
            asset_id=None if link_asset is not None else parsed.asset_id,
            url=link_asset.link if link_asset is not None else None,
        )
        job = Job(
            id=store.ids.new(),
            task=task,
            asset_id=parsed.asset_id,
            metadata=parsed.metadata,
            callback_url=parsed.callback_url,
            created_at=now,
            request_id=store.ids.new(),
            phase=cfg.initial_status,
            not_found_left=int(cfg.not_found_reads),
            updated_at=now,
        )
        state.jobs[job.id] = job
        state.by_task[task.id] = job
        token = parsed.metadata.get("clientToken")
        if isinstance(token, str):
            state.jobs_by_token[f"{token}:{model}:{parsed.format}"] += 1
        self._processor.submit(task)
        self._events.created(job)
        return web.json_response({"job": state.job_json(job)})

    async def _get_job(self, request: web.Request) -> web.Response:
        """``GET /job/{id}`` in its envelope (a brief 404 first with ``not_found_reads``)."""
        job = self._state.jobs.get(request.match_info["id"])
        if job is None:
            raise ApiError(404, "Job not found")
        if job.not_found_left > 0:
            job.not_found_left -= 1
            self._state.counts["not_found_served"] += 1
            raise ApiError(404, "Job not found")
        return web.json_response({"job": self._state.job_json(job)})

    async def _usage(self, request: web.Request) -> web.Response:
        """``GET /usage``: jobs and minutes of the last three months with activity."""
        months: dict[str, list[float]] = {}
        for job in self._state.jobs.values():
            bucket = months.setdefault(iso_timestamp(job.created_at)[:7], [0, 0.0])
            bucket[0] += 1
            if job.target.status == COMPLETED:
                bucket[1] += (job.target.duration or 0.0) / 60.0
        usage = [
            {"month": m, "totalJobs": int(v[0]), "totalMinutes": round(v[1], 2)}
            for m, v in sorted(months.items(), reverse=True)[:3]
        ]
        store = self._state.runtime().store
        return web.json_response({"clientId": store.client_id, "usage": usage})
