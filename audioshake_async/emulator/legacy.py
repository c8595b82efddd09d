"""A local emulator of AudioShake's legacy Jobs API (``groovy``), on its own loopback ports.

Routes (seed 002, reference §6), all behind ``Authorization: Bearer <token>`` (401 otherwise):

- ``POST /upload`` and ``/upload/``: multipart field ``file``, streamed to disk in constant
  memory (the Tasks emulator's ``POST /assets`` handler, reused as is);
- ``POST /upload/link`` (and the older ``/upload/audio-link``): ``{"link", "name"?}``; the link
  is fetched when a job runs, from loopback hosts only;
- ``POST /job`` (and ``/job/``): ``{"metadata": {"name", "format", ...}, "assetId",
  "callbackUrl"?}`` -> ``{"job": {...}}`` with status ``queued`` (``initial_status``);
- ``GET /job/{id}`` -> ``{"job": {...}}``; ``outputAssets`` (``[{name: "vocals.wav", id,
  fileType, format, link}]``) once ``completed``; ``statusInfo``/``error`` once failed;
- ``GET /usage`` -> ``{"clientId", "usage": [{"month", "totalJobs", "totalMinutes"}]}``.

Processing is the Tasks emulator's: each job runs as a one-target task through
:class:`~audioshake_async.emulator.processing.Processor`, so outputs are real files made by the
DSP stand-in (:mod:`~audioshake_async.emulator.dsp`) and served by the same signed, expiring
CDN (:mod:`~audioshake_async.emulator.cdn`) on a second port, which counts any request
carrying an ``Authorization`` header (a client leaking its token).

Inferred, not documented [INFER]: error bodies (Fastify's ``{statusCode, error, message}``),
the callback payload (the job in its ``{"job": ...}`` envelope, POSTed on every status change:
``processing``, then ``completed``/``failed``), the ``processing`` transition (half-way through
``delay``), the failure fields (``statusInfo: {code, message}`` and ``error``), ``totalJobs``
(every job created that month). Knobs reproduce the doc variants: ``initial_status``
(``queued``/``created``), ``failure_status`` (``failed``/``error``), ``output_key``
(``outputAssets``/``stemAssets``/``nested`` under ``sourceAsset``) and ``not_found_reads`` (the
brief 404 right after creation). :meth:`LegacyEmulator.script` queues per-route faults
(``"drop"``, ``"drop_after"``, a status such as ``"503"``) consumed in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import random
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from .catalog import CATALOG, MIME_TYPES, format_of
from .cdn import create_cdn_app
from .config import EmulatorConfig
from .errors import ApiError, error_response
from .faults import FaultInjector
from .files import FileRegistry, content_type_for, remove_tree
from .http_common import drop, is_loopback_url, read_json, route_template, start_site
from .links import LinkSigner
from .processing import Processor
from .runtime import Runtime
from .state import COMPLETED, ERROR, Asset, Store, Target, Task, iso_timestamp
from .uploads import AssetUploads
from .validation import is_http_url

__all__ = ["LegacyEmulator", "LegacyEmulatorConfig"]

#: Routes as :meth:`LegacyEmulator.stats` and :meth:`LegacyEmulator.script` name them.
LEGACY_ROUTES = (
    "POST /upload",
    "POST /upload/link",
    "POST /job",
    "GET /job/{id}",
    "GET /usage",
)
OUTPUT_KEYS = ("outputAssets", "stemAssets", "nested")
USER_AGENT = "audioshake-legacy-emulator-callbacks"


def _status_knob(allowed: tuple[str, ...]) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {allowed}, got {value!r}")

    return check


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _str_set(value: Iterable[str] | str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    return frozenset({value}) if isinstance(value, str) else frozenset(value)


@attrs.frozen(kw_only=True)
class LegacyEmulatorConfig:
    """Knobs of the legacy emulator (times in seconds)."""

    #: The Bearer token clients must send.
    token: str = "legacy-token"
    host: str = "127.0.0.1"
    port: int = 0
    cdn_host: str = "127.0.0.1"
    cdn_port: int = 0
    seed: int | None = None
    #: Seconds from creation until a job is terminal; ``processing`` from half-way.
    delay: float = attrs.field(default=0.2, validator=_non_negative)
    #: Status of a new job: ``queued`` (legacy page) or ``created`` (data-model pages).
    initial_status: str = attrs.field(
        default="queued", validator=_status_knob(("queued", "created"))
    )
    #: Status of a failed job: clients see both.
    failure_status: str = attrs.field(default="failed", validator=_status_knob(("failed", "error")))
    #: Where outputs appear: ``outputAssets``, ``stemAssets`` (older docs) or ``nested`` inside
    #: ``sourceAsset`` (one documented example).
    output_key: str = attrs.field(default="outputAssets", validator=_status_knob(OUTPUT_KEYS))
    #: ``GET /job/{id}`` answers 404 this many times for each new job (seen in the wild).
    not_found_reads: int = attrs.field(default=0, validator=_non_negative)
    #: Models whose jobs always fail.
    error_models: frozenset[str] = attrs.field(default=frozenset(), converter=_str_set)
    #: ``Retry-After`` seconds sent with a scripted 429.
    retry_after: float | None = 0.0
    link_ttl: float = attrs.field(default=3600.0, validator=_non_negative)
    asset_ttl: float = attrs.field(default=72 * 3600.0, validator=_non_negative)
    max_upload_bytes: int = attrs.field(default=2 * 1024**3, validator=_non_negative)
    #: Retries of a callback delivery that failed (doubling ``callback_backoff``).
    callback_retries: int = attrs.field(default=3, validator=_non_negative)
    callback_backoff: float = attrs.field(default=0.05, validator=_non_negative)
    callback_timeout: float = attrs.field(default=5.0, validator=_non_negative)
    dsp_workers: int = 2

    def runtime_config(self) -> EmulatorConfig:
        """The Tasks emulator's config for the shared parts (processing, CDN, uploads)."""
        return EmulatorConfig(
            api_key="unused-by-the-legacy-emulator",
            host=self.host,
            port=self.port,
            cdn_host=self.cdn_host,
            cdn_port=self.cdn_port,
            seed=self.seed,
            delay=self.delay,
            max_upload_bytes=self.max_upload_bytes,
            asset_ttl=self.asset_ttl,
            link_ttl=self.link_ttl,
            rate_limit=None,
            dsp_workers=self.dsp_workers,
        )


@attrs.define(eq=False)
class _LinkAsset:
    """An asset registered from a URL (``POST /upload/link``)."""

    id: str
    name: str
    link: str
    format: str
    created_at: float


@attrs.define(eq=False)
class _Job:
    """A legacy job and the one-target task that processes it."""

    id: str
    task: Task
    asset_id: str
    metadata: dict[str, Any]
    callback_url: str | None
    created_at: float
    request_id: str
    phase: str
    not_found_left: int
    started_at: float | None = None
    updated_at: float = 0.0
    processing_timer: asyncio.TimerHandle | None = None
    #: The last callback delivery: the next one waits for it, so they arrive in order.
    last_delivery: asyncio.Task[None] | None = None

    @property
    def target(self) -> Target:
        return self.task.targets[0]


def _advertised(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _route(request: web.Request) -> str:
    template = route_template(request)
    if template.endswith("/") and len(template) > 1:
        template = template[:-1]  # "/upload/" and "/upload" are one route
    if template == "/upload/audio-link":
        template = "/upload/link"
    return f"{request.method} {template}"


class LegacyEmulator:
    """The legacy Jobs API plus its CDN on loopback: ``async with LegacyEmulator() as emu:``.

    Knobs are the fields of :class:`LegacyEmulatorConfig` (``LegacyEmulator(delay=0)``).
    """

    def __init__(self, config: LegacyEmulatorConfig | None = None, /, **knobs: Any) -> None:
        base = config or LegacyEmulatorConfig()
        self._config = attrs.evolve(base, **knobs) if knobs else base
        self._rt: Runtime | None = None
        self._processor: Processor | None = None
        self._uploads: AssetUploads | None = None
        self._runners: list[web.AppRunner] = []
        self._base_url = ""
        self._jobs: dict[str, _Job] = {}
        self._by_task: dict[str, _Job] = {}
        self._links: dict[str, _LinkAsset] = {}
        self._script: dict[str, deque[str]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._counts: Counter[str] = Counter()
        self._callbacks: Counter[str] = Counter()
        self._jobs_by_token: Counter[str] = Counter()

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> LegacyEmulator:
        """Start the CDN and the API servers; returns ``self``."""
        if self._rt is not None:
            raise RuntimeError("legacy emulator already started")
        cfg = self._config
        seed = cfg.seed

        def rng(purpose: str) -> random.Random:
            return random.Random(f"{seed}:{purpose}") if seed is not None else random.Random()

        store = Store(rng("ids"), clock=time.time)
        rt = Runtime(
            config=cfg.runtime_config(),
            store=store,
            faults=FaultInjector(store.stats, rng("faults")),
            signer=LinkSigner(),
            files=FileRegistry(),
            workdir=Path(tempfile.mkdtemp(prefix="audioshake-legacy-emulator-")),
        )
        self._rt = rt
        try:
            rt.http = aiohttp.ClientSession(trust_env=False)
            self._processor = Processor(rt, self._on_terminal)
            self._uploads = AssetUploads(rt)
            cdn_port = await start_site(
                create_cdn_app(rt), cfg.cdn_host, cfg.cdn_port, self._runners
            )
            rt.cdn_base_url = f"http://{_advertised(cfg.cdn_host)}:{cdn_port}"
            api_port = await start_site(self._app(), cfg.host, cfg.port, self._runners)
            self._base_url = f"http://{_advertised(cfg.host)}:{api_port}"
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stop both servers, processing and callback deliveries; remove the temp dir."""
        rt = self._rt
        if rt is None:
            return
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        for job in self._jobs.values():
            if job.processing_timer is not None:
                job.processing_timer.cancel()
        if self._processor is not None:
            await self._processor.aclose()
        for delivery in list(self._deliveries):
            delivery.cancel()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        if rt.http is not None:
            await rt.http.close()
        await remove_tree(rt.workdir)
        self._rt = None
        self._processor = None
        self._uploads = None

    async def __aenter__(self) -> LegacyEmulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _runtime(self) -> Runtime:
        if self._rt is None:
            raise RuntimeError("legacy emulator is not running (use 'async with')")
        return self._rt

    # --- addresses and knobs -------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """API base URL (``http://127.0.0.1:<port>``)."""
        self._runtime()
        return self._base_url

    @property
    def cdn_url(self) -> str:
        """CDN base URL (output links start with it)."""
        return self._runtime().cdn_base_url

    @property
    def token(self) -> str:
        """The Bearer token clients must send."""
        return self._config.token

    @property
    def config(self) -> LegacyEmulatorConfig:
        """Current knobs."""
        return self._config

    def configure(self, **knobs: Any) -> LegacyEmulatorConfig:
        """Change knobs at run time (socket and seed knobs only matter before start)."""
        self._config = attrs.evolve(self._config, **knobs)
        if self._rt is not None:
            shared = self._config.runtime_config()
            # Sockets, seed and the thread pool are fixed once started: keep them.
            self._rt.config = self._rt.config.evolve(
                delay=shared.delay,
                max_upload_bytes=shared.max_upload_bytes,
                asset_ttl=shared.asset_ttl,
                link_ttl=shared.link_ttl,
            )
        return self._config

    def script(self, route: str, *outcomes: str) -> None:
        """Queue outcomes for the next requests on ``route`` (``"POST /job"``...), in order.

        ``"ok"`` serves normally; ``"drop"`` closes the connection unanswered; ``"drop_after"``
        serves (a job is created) then closes the connection; a number answers that status.
        """
        if route not in LEGACY_ROUTES:
            raise ValueError(f"unknown route {route!r}; known: {', '.join(LEGACY_ROUTES)}")
        for outcome in outcomes:
            if outcome not in ("ok", "drop", "drop_after") and not outcome.isdigit():
                raise ValueError(f"unknown outcome {outcome!r}")
        self._script.setdefault(route, deque()).extend(outcomes)

    def expire_links(self) -> None:
        """Invalidate every download link handed out so far."""
        self._runtime().signer.expire_all()

    def expire_assets(self) -> int:
        """Make every uploaded asset expired now; returns how many were live."""
        return self._runtime().store.expire_all_assets()

    # --- introspection -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters: requests per route, jobs, callbacks, and CDN token leaks."""
        rt = self._runtime()
        s = rt.store.stats
        statuses = Counter(self._status(job) for job in self._jobs.values())
        return {
            "requests": dict(sorted(s.requests.items())),
            "responses": dict(sorted(s.responses.items())),
            "jobs_created": len(self._jobs),
            "jobs": dict(statuses),
            "jobs_by_client_token": dict(self._jobs_by_token),
            "duplicate_jobs": {k: n for k, n in self._jobs_by_token.items() if n > 1},
            "assets_created": s.assets_created + len(self._links),
            "bytes_uploaded": s.bytes_uploaded,
            "not_found_served": self._counts["not_found_served"],
            "faults": {k: v for k, v in self._counts.items() if k.startswith("fault:")},
            "callbacks": dict(self._callbacks),
            "cdn_requests": s.cdn_requests,
            "cdn_denied": s.cdn_denied,
            "cdn_key_leaks": s.cdn_key_leaks,
            "cdn_key_leak_headers": sorted(s.cdn_key_leak_headers),
        }

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's JSON as ``GET /job/{id}`` returns it (without the envelope)."""
        return self._render(self._jobs[job_id])

    def output_digests(self, job_id: str) -> dict[str, str]:
        """sha256 per output file of a job, keyed by ``<name>.<format>``."""
        return {o.filename: o.sha256 for o in self._jobs[job_id].target.outputs}

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every job is terminal and every callback delivery is over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._runtime()
        assert self._processor is not None
        await self._processor.wait_idle(timeout)
        while self._deliveries:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._deliveries)} callback deliveries pending")
            await asyncio.wait(set(self._deliveries), timeout=remaining)

    # --- HTTP ----------------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024 * 1024)
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
        stats = self._runtime().store.stats
        route = _route(request)
        stats.requests[route] += 1
        queue = self._script.get(route)
        outcome = queue.popleft() if queue else "ok"
        if outcome != "ok":
            self._counts[f"fault:{outcome}"] += 1
        if outcome == "drop":
            return drop(request)
        if outcome.isdigit():
            status = int(outcome)
            headers = {}
            if status == 429 and self._config.retry_after is not None:
                headers["Retry-After"] = f"{self._config.retry_after:g}"
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
        return hmac.compare_digest(value.strip().encode(), self._config.token.encode())

    # --- uploads -------------------------------------------------------------------------
    @staticmethod
    def _asset_json(
        asset_id: str, name: str, fmt: str, link: str, file_type: str | None = None
    ) -> dict[str, Any]:
        mime = file_type or MIME_TYPES.get(fmt, "application/octet-stream").split(";")[0]
        return {"name": name, "id": asset_id, "fileType": mime, "format": fmt, "link": link}

    def _file_asset_json(self, asset: Asset) -> dict[str, Any]:
        rt = self._runtime()
        # The seed's example names the asset without its extension ("song" for song.mp3).
        stem = PurePosixPath(asset.name).stem or asset.name
        return self._asset_json(asset.id, stem, asset.format, rt.asset_link(asset), asset.mime_type)

    async def _upload(self, request: web.Request) -> web.Response:
        """``POST /upload``: the Tasks emulator's streamed upload, answered the legacy way."""
        assert self._uploads is not None
        asset = await self._uploads.receive(request)
        return web.json_response(self._file_asset_json(asset))

    async def _upload_link(self, request: web.Request) -> web.Response:
        """``POST /upload/link``: ``{"link", "name"?}``; fetched when a job runs."""
        body = await read_json(request)
        if not isinstance(body, dict) or "link" not in body:
            raise ApiError(400, "body must have required property 'link'")
        link = body["link"]
        if not is_http_url(link):
            raise ApiError(400, "body/link must be an http or https URL")
        filename = PurePosixPath(link.split("?", 1)[0]).name
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "body/name must be string")
        fmt = format_of(filename, None)
        if fmt is None:
            raise ApiError(400, f"Unsupported file format: {filename or link}")
        rt = self._runtime()
        asset = _LinkAsset(
            rt.store.ids.new(), name or PurePosixPath(filename).stem, link, fmt, rt.clock()
        )
        self._links[asset.id] = asset
        return web.json_response(self._asset_json(asset.id, asset.name, fmt, link))

    # --- jobs ----------------------------------------------------------------------------
    async def _create_job(self, request: web.Request) -> web.Response:
        """``POST /job``: validate, create a one-target task, start processing."""
        body = await read_json(request)
        rt = self._runtime()
        cfg = self._config
        if not isinstance(body, dict):
            raise ApiError(400, "body must be object")
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            raise ApiError(400, "body must have required property 'metadata'")
        model, fmt = metadata.get("name"), metadata.get("format")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "body/metadata must have required property 'name'")
        if not isinstance(fmt, str) or not fmt:
            raise ApiError(400, "body/metadata must have required property 'format'")
        spec = CATALOG.get(model)
        if spec is None:
            raise ApiError(400, f"body/metadata/name: unknown model '{model}'")
        if spec.access != "enabled":
            raise ApiError(403, f"Model '{model}' requires access")
        if fmt not in spec.output_formats:
            allowed = ", ".join(spec.output_formats)
            raise ApiError(400, f"model '{model}' does not support format '{fmt}' ({allowed})")
        asset_id = body.get("assetId")
        if not isinstance(asset_id, str) or not asset_id:
            raise ApiError(400, "body must have required property 'assetId'")
        callback = body.get("callbackUrl")
        if callback is not None and not is_http_url(callback):
            raise ApiError(400, "body/callbackUrl must be an http or https URL")
        link_asset = self._links.get(asset_id)
        if link_asset is None and rt.store.live_asset(asset_id) is None:
            raise ApiError(404, "Cannot find asset")
        variant = metadata.get("variant")
        residual = metadata.get("residual")
        language = metadata.get("language")
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
            formats=[fmt],
            residual=residual if isinstance(residual, bool) and spec.is_audio else None,
            variant=variant if isinstance(variant, str) and variant in spec.variants else None,
            language=language if isinstance(language, str) else None,
            due=cfg.delay,
            forced_error=forced,
        )
        task = Task(
            id=store.ids.new(),
            created_at=now,
            client_id=store.client_id,
            targets=[target],
            asset_id=None if link_asset is not None else asset_id,
            url=link_asset.link if link_asset is not None else None,
        )
        job = _Job(
            id=store.ids.new(),
            task=task,
            asset_id=asset_id,
            metadata=dict(metadata),
            callback_url=callback,
            created_at=now,
            request_id=store.ids.new(),
            phase=cfg.initial_status,
            not_found_left=int(cfg.not_found_reads),
            updated_at=now,
        )
        self._jobs[job.id] = job
        self._by_task[task.id] = job
        token = metadata.get("clientToken")
        if isinstance(token, str):
            self._jobs_by_token[f"{token}:{model}:{fmt}"] += 1
        assert self._processor is not None
        self._processor.submit(task)
        loop = asyncio.get_running_loop()
        job.processing_timer = loop.call_later(cfg.delay / 2, self._start_processing, job)
        return web.json_response({"job": self._render(job)})

    def _start_processing(self, job: _Job) -> None:
        job.processing_timer = None
        if job.target.terminal:
            return
        now = self._runtime().clock()
        job.phase, job.started_at, job.updated_at = "processing", now, now
        self._notify(job)

    def _on_terminal(self, task: Task, target: Target) -> None:
        job = self._by_task.get(task.id)
        if job is None:
            return
        if job.processing_timer is not None:
            # Finished before "processing" was announced: one terminal change, in order.
            job.processing_timer.cancel()
            job.processing_timer = None
        now = self._runtime().clock()
        job.started_at = job.started_at or job.created_at
        job.updated_at = now
        self._notify(job)

    async def _get_job(self, request: web.Request) -> web.Response:
        """``GET /job/{id}`` in its envelope (a brief 404 first with ``not_found_reads``)."""
        job = self._jobs.get(request.match_info["id"])
        if job is None:
            raise ApiError(404, "Job not found")
        if job.not_found_left > 0:
            job.not_found_left -= 1
            self._counts["not_found_served"] += 1
            raise ApiError(404, "Job not found")
        return web.json_response({"job": self._render(job)})

    async def _usage(self, request: web.Request) -> web.Response:
        """``GET /usage``: jobs and minutes of the last three months with activity."""
        months: dict[str, list[float]] = {}
        for job in self._jobs.values():
            bucket = months.setdefault(iso_timestamp(job.created_at)[:7], [0, 0.0])
            bucket[0] += 1
            if job.target.status == COMPLETED:
                bucket[1] += (job.target.duration or 0.0) / 60.0
        usage = [
            {"month": m, "totalJobs": int(v[0]), "totalMinutes": round(v[1], 2)}
            for m, v in sorted(months.items(), reverse=True)[:3]
        ]
        store = self._runtime().store
        return web.json_response({"clientId": store.client_id, "usage": usage})

    # --- rendering -----------------------------------------------------------------------
    def _status(self, job: _Job) -> str:
        status = job.target.status
        if status == COMPLETED:
            return "completed"
        if status == ERROR:
            return self._config.failure_status
        return job.phase

    def _source_json(self, job: _Job) -> dict[str, Any] | None:
        link_asset = self._links.get(job.asset_id)
        if link_asset is not None:
            return self._asset_json(
                link_asset.id, link_asset.name, link_asset.format, link_asset.link
            )
        asset = self._runtime().store.assets.get(job.asset_id)
        return self._file_asset_json(asset) if asset is not None else None

    def _render(self, job: _Job) -> dict[str, Any]:
        rt = self._runtime()
        target = job.target
        status = self._status(job)
        out: dict[str, Any] = {
            "id": job.id,
            "clientId": rt.store.client_id,
            "requestId": job.request_id,
            "createdAt": iso_timestamp(job.created_at),
            "updatedAt": iso_timestamp(job.updated_at),
            "status": status,
            "statusInfo": {},
            "metadata": dict(job.metadata),
            "assetId": job.asset_id,
        }
        if job.started_at is not None:
            out["startedAt"] = iso_timestamp(job.started_at)
        if job.callback_url is not None:
            out["callbackUrl"] = job.callback_url
        source = self._source_json(job)
        if source is not None:
            out["sourceAsset"] = source
        if target.status == ERROR and target.error is not None:
            out["statusInfo"] = {
                "code": target.error.get("code"),
                "message": target.error.get("message"),
            }
            out["error"] = target.error.get("message")
        if target.status == COMPLETED:
            outputs = [
                {
                    "name": o.filename,
                    "id": o.file_id,
                    "fileType": content_type_for(o.filename).split(";")[0],
                    "format": o.format,
                    "link": rt.output_link(o),
                }
                for o in target.outputs
            ]
            key = self._config.output_key
            if key == "nested" and source is not None:
                out["sourceAsset"] = {**source, "outputAssets": outputs}
            else:
                out["stemAssets" if key == "stemAssets" else "outputAssets"] = outputs
        return out

    # --- callbacks ([INFER]) -------------------------------------------------------------
    def _notify(self, job: _Job) -> None:
        if job.callback_url is None:
            return
        if not is_loopback_url(job.callback_url):
            # The emulator never calls out of the machine.
            self._callbacks["skipped_not_loopback"] += 1
            return
        # Snapshot now: the delivery carries the state of *its* change.
        payload = json.dumps({"job": self._render(job)}).encode()
        previous = job.last_delivery
        sender = asyncio.get_running_loop().create_task(
            self._deliver(job.callback_url, payload, previous),
            name=f"audioshake-legacy-callback-{job.id}",
        )
        job.last_delivery = sender
        self._deliveries.add(sender)
        sender.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, payload: bytes, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            # In order per job: "processing" never lands after "completed".
            with contextlib.suppress(Exception):
                await asyncio.shield(previous)
        http = self._runtime().http
        assert http is not None
        cfg = self._config
        self._callbacks["deliveries_attempted"] += 1
        for attempt in range(int(cfg.callback_retries) + 1):
            if attempt:
                self._callbacks["retries"] += 1
                await asyncio.sleep(cfg.callback_backoff * 2 ** (attempt - 1))
            self._callbacks["attempts"] += 1
            try:
                async with http.post(
                    url,
                    data=payload,
                    headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
                    timeout=aiohttp.ClientTimeout(total=cfg.callback_timeout or None),
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self._callbacks["deliveries_succeeded"] += 1
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass  # retried like a non-2xx answer
        self._callbacks["deliveries_failed"] += 1
