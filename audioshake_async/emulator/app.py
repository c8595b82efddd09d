"""The API server: the AudioShake Tasks/Assets/Models/Webhooks routes plus ``/_emulator/``.

Every API route requires ``x-api-key``. A middleware applies, in order: per-route request
counting, injected latency, rate limiting (burst knob, then the token bucket), connection
drops, injected 5xx, authentication, then the handler. Errors always use the
``{"statusCode", "error", "message"}`` envelope, including aiohttp's own 404/405/413.

``/_emulator/*`` is introspection the real API does not have: no key, no faults, no rate
limit, and only answered to loopback clients.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Protocol

from aiohttp import web

from .catalog import models_json
from .config import EmulatorConfig
from .errors import ApiError, error_response
from .http_common import (
    MAX_JSON_BODY,
    Dropped,
    drop,
    is_loopback,
    read_json,
    route_template,
)
from .processing import Processor
from .runtime import Runtime
from .state import Asset, Target, Task
from .uploads import AssetUploads
from .validation import check_credits, parse_int_param, parse_task, parse_webhook

logger = logging.getLogger("audioshake_async.emulator")


#: Every API route as ``stats()["requests"]`` and ``fault_routes`` name it, in
#: registration order.
API_ROUTES = (
    "POST /assets",
    "GET /assets",
    "GET /assets/{id}",
    "POST /tasks",
    "GET /tasks",
    "GET /tasks/statistics",
    "GET /tasks/{id}",
    "GET /models",
    "POST /webhooks",
    "GET /webhooks",
    "DELETE /webhooks/{id}",
)


class Control(Protocol):
    """What the introspection routes need from the emulator facade."""

    def stats(self) -> dict[str, Any]:
        """Counters as JSON."""
        ...

    def configure(self, **knobs: Any) -> EmulatorConfig:
        """Change knobs at run time."""
        ...

    def expire_links(self) -> None:
        """Invalidate every issued link."""
        ...

    def expire_assets(self) -> int:
        """Expire every asset now."""
        ...

    def output_digests(self, task_id: str) -> dict[str, str]:
        """sha256 per output file of a task."""
        ...


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"Route {request.method}:{request.path} not found"
    elif exc.status == 413:
        message = "Request body is too large"
    else:
        message = exc.reason
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return error_response(exc.status, message, headers)


def route_name(request: web.Request) -> str:
    """``"POST /tasks"``: method plus route template, the key of ``stats()["requests"]``."""
    return f"{request.method} {route_template(request)}"


class ApiHandlers:
    """Route handlers of the API server."""

    def __init__(self, rt: Runtime, processor: Processor, control: Control) -> None:
        self.rt = rt
        self.processor = processor
        self.control = control
        self.uploads = AssetUploads(rt)

    # --- middleware ----------------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counting, faults, rate limiting and authentication (see module docstring)."""
        if request.path.startswith("/_emulator/"):
            if not is_loopback(request.remote):
                return error_response(403, "emulator introspection is loopback-only")
            return await self._call(request, handler)
        stats = self.rt.store.stats
        stats.requests[route_name(request)] += 1
        response = await self._guarded(request, handler)
        if not isinstance(response, Dropped):
            stats.responses[str(response.status)] += 1
        return response

    async def _call(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            return _from_http_exception(request, exc)
        except Exception:
            # A bug or an environment failure (disk full...): clients still get the envelope
            # the API documents, not aiohttp's bare text 500.
            logger.exception("emulator: %s %s failed", request.method, request.path)
            return error_response(500, "Internal Server Error")
        return response

    async def _guarded(self, request: web.Request, handler: Any) -> web.StreamResponse:
        cfg = self.rt.config
        faults = self.rt.faults
        targeted = faults.applies_to(cfg, route_name(request))
        if targeted and cfg.latency > 0:
            faults.record("latency")
            await asyncio.sleep(cfg.latency)
        if faults.rate_limited(cfg):
            headers = {}
            if cfg.retry_after is not None:
                headers["Retry-After"] = _format_seconds(cfg.retry_after)
            return error_response(429, "Rate limit exceeded", headers)
        if targeted and faults.roll(cfg.drop_rate):
            faults.record("drop")
            return drop(request)
        if targeted and faults.roll(cfg.fail_rate):
            faults.record("fail")
            status = faults.fail_status(cfg)
            return error_response(status, f"Emulated server error ({status})")
        key = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(key.encode(), cfg.api_key.encode()):
            return error_response(401, "Invalid API key")
        return await self._call(request, handler)

    # --- assets --------------------------------------------------------------------------
    def _live_asset(self, asset_id: str) -> Asset:
        asset = self.rt.store.live_asset(asset_id)
        if asset is None:
            raise ApiError(404, "Cannot find asset")
        return asset

    async def upload_asset(self, request: web.Request) -> web.Response:
        """``POST /assets``: the file streamed to disk (see :class:`~.uploads.AssetUploads`)."""
        asset = await self.uploads.receive(request)
        return web.json_response(asset.upload_json(self.rt.asset_link(asset)))

    async def list_assets(self, request: web.Request) -> web.Response:
        """``GET /assets``: bare array, no links (as documented)."""
        await self.uploads.sweep_expired_assets()
        return web.json_response([a.list_json() for a in self.rt.store.assets.values()])

    async def get_asset(self, request: web.Request) -> web.Response:
        """``GET /assets/{id}``: with ``mimeType`` and a fresh signed ``link``."""
        asset = self._live_asset(request.match_info["id"])
        return web.json_response(asset.get_json(self.rt.asset_link(asset)))

    # --- tasks ---------------------------------------------------------------------------
    async def create_task(self, request: web.Request) -> web.Response:
        """``POST /tasks``: validate, create (all targets ``processing``), start processing."""
        body = await read_json(request)
        cfg = self.rt.config
        parsed = parse_task(body, cfg.max_targets)
        check_credits(cfg.credits)
        if cfg.max_active_tasks is not None:
            active = sum(1 for t in self.rt.store.tasks.values() if not t.done)
            if active >= cfg.max_active_tasks:
                retry = None if cfg.retry_after is None else {"Retry-After": f"{cfg.retry_after:g}"}
                raise ApiError(429, "Too many tasks in progress", retry)
        if parsed.asset_id is not None:
            self._live_asset(parsed.asset_id)
        for target_request in parsed.targets:
            if target_request.transcript_asset_id is not None:
                self._live_asset(target_request.transcript_asset_id)
        store = self.rt.store
        faults = self.rt.faults
        targets = []
        for t in parsed.targets:
            forced = None
            if t.model in cfg.error_models:
                forced = f"Emulated failure: model '{t.model}' is in error_models"
            elif faults.roll(cfg.target_error_rate):
                forced = "Emulated processing failure (target_error_rate)"
            targets.append(
                Target(
                    id=store.ids.new(),
                    model=t.model,
                    formats=list(t.formats),
                    residual=t.residual,
                    variant=t.variant,
                    language=t.language,
                    transcript_url=t.transcript_url,
                    transcript_asset_id=t.transcript_asset_id,
                    due=cfg.delay + faults.uniform(cfg.jitter),
                    forced_error=forced,
                )
            )
        task = Task(
            id=store.ids.new(),
            created_at=self.rt.clock(),
            client_id=store.client_id,
            targets=targets,
            asset_id=parsed.asset_id,
            url=parsed.url,
            metadata=parsed.metadata,
        )
        body_out = self.rt.render_task(task)
        # Shared, not copied: nothing mutates it, json_response serializes it right away.
        task.creation_snapshot = body_out
        store.add_task(task)
        self.processor.submit(task)
        if faults.drop_after_create(cfg):
            # The ambiguous case: the task exists, but the client never learns its id.
            return drop(request)
        return web.json_response(body_out)

    def _task(self, task_id: str) -> Task:
        task = self.rt.store.tasks.get(task_id)
        if task is None:
            raise ApiError(404, "Cannot find task")
        return task

    async def get_task(self, request: web.Request) -> web.Response:
        """``GET /tasks/{id}``: fresh links on every call; sometimes stale (``stale_rate``)."""
        task = self._task(request.match_info["id"])
        progressed = any(t.terminal for t in task.targets)
        if progressed and self.rt.faults.roll(self.rt.config.stale_rate):
            self.rt.faults.record("stale")
            return web.json_response(task.creation_snapshot)
        return web.json_response(self.rt.render_task(task))

    async def list_tasks(self, request: web.Request) -> web.Response:
        """``GET /tasks?skip&take``: bare array, newest first."""
        skip = parse_int_param(request.query, "skip", 0, 0)
        take = parse_int_param(request.query, "take", 10, 1, 100)
        page = self.rt.store.newest_tasks(skip, take)
        return web.json_response([self.rt.render_task(t) for t in page])

    async def statistics(self, request: web.Request) -> web.Response:
        """``GET /tasks/statistics?name=usage|distribution``."""
        name = request.query.get("name", "usage")
        if name == "usage":
            return web.json_response(self.rt.store.usage())
        if name == "distribution":
            return web.json_response(self.rt.store.distribution())
        raise ApiError(400, "querystring/name must be equal to one of the allowed values")

    async def models(self, request: web.Request) -> web.Response:
        """``GET /models``."""
        return web.json_response(models_json())

    # --- webhooks ([INFER] shape) --------------------------------------------------------
    async def create_webhook(self, request: web.Request) -> web.Response:
        """``POST /webhooks`` with ``{"url"}`` -> ``{"id", "url", "createdAt"}`` ([INFER])."""
        url = parse_webhook(await read_json(request))
        return web.json_response(self.rt.store.add_webhook(url).to_json())

    async def list_webhooks(self, request: web.Request) -> web.Response:
        """``GET /webhooks``: bare array ([INFER])."""
        return web.json_response([w.to_json() for w in self.rt.store.webhooks.values()])

    async def delete_webhook(self, request: web.Request) -> web.Response:
        """``DELETE /webhooks/{id}``: 204, or 404 when unknown ([INFER])."""
        if self.rt.store.webhooks.pop(request.match_info["id"], None) is None:
            raise ApiError(404, "Cannot find webhook")
        return web.Response(status=204)

    # --- introspection -------------------------------------------------------------------
    async def emu_stats(self, request: web.Request) -> web.Response:
        """``GET /_emulator/stats``."""
        return web.json_response(self.control.stats())

    async def emu_get_config(self, request: web.Request) -> web.Response:
        """``GET /_emulator/config``: current knobs."""
        return web.json_response(self.rt.config.to_json())

    async def emu_set_config(self, request: web.Request) -> web.Response:
        """``POST /_emulator/config`` with a JSON object of knobs; answers the new knobs."""
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "body must be an object of knobs")
        try:
            cfg = self.control.configure(**body)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, str(exc)) from None
        return web.json_response(cfg.to_json())

    async def emu_expire_links(self, request: web.Request) -> web.Response:
        """``POST /_emulator/expire-links``: every link handed out so far becomes invalid."""
        self.control.expire_links()
        return web.json_response({"expired": True})

    async def emu_expire_assets(self, request: web.Request) -> web.Response:
        """``POST /_emulator/expire-assets``: every asset is expired now."""
        return web.json_response({"expired": self.control.expire_assets()})

    async def emu_outputs(self, request: web.Request) -> web.Response:
        """``GET /_emulator/tasks/{id}/outputs``: sha256 per ``<name>.<format>``."""
        task_id = request.match_info["id"]
        if task_id not in self.rt.store.tasks:
            raise ApiError(404, "Cannot find task")
        return web.json_response(self.control.output_digests(task_id))


def create_api_app(rt: Runtime, processor: Processor, control: Control) -> web.Application:
    """Build the API application."""
    h = ApiHandlers(rt, processor, control)
    # Uploads stream through request.multipart(), which client_max_size does not limit;
    # it only bounds the JSON bodies read with request.read().
    app = web.Application(middlewares=[h.middleware], client_max_size=MAX_JSON_BODY)
    r = app.router
    api = {
        "POST /assets": h.upload_asset,
        "GET /assets": h.list_assets,
        "GET /assets/{id}": h.get_asset,
        "POST /tasks": h.create_task,
        "GET /tasks": h.list_tasks,
        "GET /tasks/statistics": h.statistics,
        "GET /tasks/{id}": h.get_task,
        "GET /models": h.models,
        "POST /webhooks": h.create_webhook,
        "GET /webhooks": h.list_webhooks,
        "DELETE /webhooks/{id}": h.delete_webhook,
    }
    # API_ROUTES order matters: /tasks/statistics must come before /tasks/{id}.
    for name in API_ROUTES:
        method, path = name.split(" ", 1)
        if method == "GET":
            r.add_get(path, api[name])
        else:
            r.add_route(method, path, api[name])
    r.add_get("/_emulator/stats", h.emu_stats)
    r.add_get("/_emulator/config", h.emu_get_config)
    r.add_post("/_emulator/config", h.emu_set_config)
    r.add_post("/_emulator/expire-links", h.emu_expire_links)
    r.add_post("/_emulator/expire-assets", h.emu_expire_assets)
    r.add_get("/_emulator/tasks/{id}/outputs", h.emu_outputs)
    return app
