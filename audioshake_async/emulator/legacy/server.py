"""The :class:`LegacyEmulator` facade: starts/stops both servers and exposes test helpers."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from aiohttp import web

from ..cdn import create_cdn_app
from ..faults import FaultInjector
from ..files import FileRegistry, remove_tree
from ..http_common import start_site
from ..links import LinkSigner
from ..processing import Processor
from ..runtime import Runtime
from ..state import Store
from ..uploads import AssetUploads
from .config import LegacyEmulatorConfig
from .events import JobEvents
from .routes import LEGACY_ROUTES, LegacyRoutes
from .state import LegacyState


def _advertised(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


class LegacyEmulator:
    """The legacy Jobs API plus its CDN on loopback: ``async with LegacyEmulator() as emu:``.

    Knobs are the fields of :class:`LegacyEmulatorConfig` (``LegacyEmulator(delay=0)``).
    """

    def __init__(self, config: LegacyEmulatorConfig | None = None, /, **knobs: Any) -> None:
        base = config or LegacyEmulatorConfig()
        self._state = LegacyState(attrs.evolve(base, **knobs) if knobs else base)
        self._events = JobEvents(self._state)
        self._processor: Processor | None = None
        self._runners: list[web.AppRunner] = []
        self._base_url = ""

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> LegacyEmulator:
        """Start the CDN and the API servers; returns ``self``."""
        state = self._state
        if state.rt is not None:
            raise RuntimeError("legacy emulator already started")
        cfg = state.config
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
        state.rt = rt
        try:
            rt.http = aiohttp.ClientSession(trust_env=False)
            self._processor = Processor(rt, self._events.on_terminal)
            routes = LegacyRoutes(state, self._processor, AssetUploads(rt), self._events)
            cdn_port = await start_site(
                create_cdn_app(rt), cfg.cdn_host, cfg.cdn_port, self._runners
            )
            rt.cdn_base_url = f"http://{_advertised(cfg.cdn_host)}:{cdn_port}"
            api_port = await start_site(routes.app(), cfg.host, cfg.port, self._runners)
            self._base_url = f"http://{_advertised(cfg.host)}:{api_port}"
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stop both servers, processing and callback deliveries; remove the temp dir."""
        rt = self._state.rt
        if rt is None:
            return
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self._events.cancel_timers()
        if self._processor is not None:
            await self._processor.aclose()
        await self._events.aclose()
        if rt.http is not None:
            await rt.http.close()
        await remove_tree(rt.workdir)
        self._state.rt = None
        self._processor = None

    async def __aenter__(self) -> LegacyEmulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- addresses and knobs -------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """API base URL (``http://127.0.0.1:<port>``)."""
        self._state.runtime()
        return self._base_url

    @property
    def cdn_url(self) -> str:
        """CDN base URL (output links start with it)."""
        return self._state.runtime().cdn_base_url

    @property
    def token(self) -> str:
        """The Bearer token clients must send."""
        return self._state.config.token

    @property
    def config(self) -> LegacyEmulatorConfig:
        """Current knobs."""
        return self._state.config

    def configure(self, **knobs: Any) -> LegacyEmulatorConfig:
        """Change knobs at run time (socket and seed knobs only matter before start)."""
        state = self._state
        state.config = attrs.evolve(state.config, **knobs)
        if state.rt is not None:
            shared = state.config.runtime_config()
            # Sockets, seed and the thread pool are fixed once started: keep them.
            state.rt.config = state.rt.config.evolve(
                delay=shared.delay,
                max_upload_bytes=shared.max_upload_bytes,
                asset_ttl=shared.asset_ttl,
                link_ttl=shared.link_ttl,
            )
        return state.config

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
        self._state.script.setdefault(route, deque()).extend(outcomes)

    def expire_links(self) -> None:
        """Invalidate every download link handed out so far."""
        self._state.runtime().signer.expire_all()

    def expire_assets(self) -> int:
        """Make every uploaded asset expired now; returns how many were live."""
        return self._state.runtime().store.expire_all_assets()

    # --- introspection -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters: requests per route, jobs, callbacks, and CDN token leaks."""
        state = self._state
        s = state.runtime().store.stats
        statuses = Counter(state.status(job) for job in state.jobs.values())
        return {
            "requests": dict(sorted(s.requests.items())),
            "responses": dict(sorted(s.responses.items())),
            "jobs_created": len(state.jobs),
            "jobs": dict(statuses),
            "jobs_by_client_token": dict(state.jobs_by_token),
            "duplicate_jobs": {k: n for k, n in state.jobs_by_token.items() if n > 1},
            "assets_created": s.assets_created + len(state.links),
            "bytes_uploaded": s.bytes_uploaded,
            "not_found_served": state.counts["not_found_served"],
            "faults": {k: v for k, v in state.counts.items() if k.startswith("fault:")},
            "callbacks": dict(state.callbacks),
            "cdn_requests": s.cdn_requests,
            "cdn_denied": s.cdn_denied,
            "cdn_key_leaks": s.cdn_key_leaks,
            "cdn_key_leak_headers": sorted(s.cdn_key_leak_headers),
        }

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's JSON as ``GET /job/{id}`` returns it (without the envelope)."""
        return self._state.job_json(self._state.jobs[job_id])

    def output_digests(self, job_id: str) -> dict[str, str]:
        """sha256 per output file of a job, keyed by ``<name>.<format>``."""
        return {o.filename: o.sha256 for o in self._state.jobs[job_id].target.outputs}

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every job is terminal and every callback delivery is over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._state.runtime()
        assert self._processor is not None
        await self._processor.wait_idle(timeout)
        await self._events.wait_idle(max(0.0, deadline - loop.time()))
