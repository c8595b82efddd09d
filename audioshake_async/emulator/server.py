"""The :class:`Emulator` facade: starts/stops both servers and exposes test helpers."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from .app import API_ROUTES, create_api_app
from .cdn import create_cdn_app
from .config import STARTUP_ONLY_KNOBS, EmulatorConfig
from .faults import FaultInjector
from .files import FileRegistry, remove_tree
from .http_common import start_site
from .links import LinkSigner
from .processing import Processor
from .runtime import Runtime
from .state import Store, Target, Task
from .webhooks import WebhookDispatcher


def _advertised_host(host: str) -> str:
    # A wildcard bind address is not something a client can connect to.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _checked(config: EmulatorConfig) -> EmulatorConfig:
    # A typo in fault_routes would silently disable the fault: refuse it instead.
    unknown = sorted((config.fault_routes or frozenset()) - set(API_ROUTES))
    if unknown:
        raise ValueError(f"unknown fault_routes {unknown}; known routes: {', '.join(API_ROUTES)}")
    return config


class TasksView(Mapping[str, dict[str, Any]]):
    """Read-only mapping ``task id -> task JSON`` (rendered on access, with fresh links)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def __getitem__(self, task_id: str) -> dict[str, Any]:
        return self._rt.render_task(self._rt.store.tasks[task_id])

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rt.store.tasks))

    def __len__(self) -> int:
        return len(self._rt.store.tasks)


class Emulator:
    """A local AudioShake API (plus CDN) on loopback, for tests and offline development.

    ``Emulator(**knobs)`` or ``Emulator(config, **overrides)``; knobs are the fields of
    :class:`EmulatorConfig`. Use as ``async with Emulator(delay=0) as emu: ...`` inside any
    running asyncio loop.
    """

    def __init__(self, config: EmulatorConfig | None = None, /, **knobs: Any) -> None:
        base = config if config is not None else EmulatorConfig()
        self._initial = _checked(base.evolve(**knobs) if knobs else base)
        self._rt: Runtime | None = None
        self._processor: Processor | None = None
        self._webhooks: WebhookDispatcher | None = None
        self._runners: list[web.AppRunner] = []
        self._base_url = ""

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> Emulator:
        """Start the CDN and API servers. Returns ``self``."""
        if self._rt is not None:
            raise RuntimeError("emulator already started")
        cfg = self._initial
        seed = cfg.seed

        def rng(purpose: str) -> random.Random:
            # Separate streams: adding an id draw must not shift every later fault decision.
            return random.Random(f"{seed}:{purpose}") if seed is not None else random.Random()

        store = Store(rng("ids"), clock=time.time)
        workdir = Path(tempfile.mkdtemp(prefix="audioshake-emulator-"))
        rt = Runtime(
            config=cfg,
            store=store,
            faults=FaultInjector(
                store.stats,
                rng("faults"),
                burst=cfg.rate_limit_burst,
                drops_after_create=cfg.drop_after_create,
            ),
            signer=LinkSigner(),
            files=FileRegistry(),
            workdir=workdir,
        )
        self._rt = rt
        try:
            rt.http = aiohttp.ClientSession(trust_env=False)
            self._webhooks = WebhookDispatcher(rt)
            self._processor = Processor(rt, self._on_terminal)
            # The CDN first: links handed out by the API need its real port.
            cdn_port = await start_site(
                create_cdn_app(rt), cfg.cdn_host, cfg.cdn_port, self._runners
            )
            rt.cdn_base_url = f"http://{_advertised_host(cfg.cdn_host)}:{cdn_port}"
            api_app = create_api_app(rt, self._processor, self)
            api_port = await start_site(api_app, cfg.host, cfg.port, self._runners)
            self._base_url = f"http://{_advertised_host(cfg.host)}:{api_port}"
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Stop both servers, cancel processing and deliveries, remove the temp dir."""
        rt = self._rt
        if rt is None:
            return
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._processor is not None:
            await self._processor.aclose()
        if self._webhooks is not None:
            await self._webhooks.aclose()
        if rt.http is not None:
            await rt.http.close()
        # Forgotten before the slow part: a cancelled removal still leaves a closed emulator.
        self._rt = None
        self._processor = None
        self._webhooks = None
        await remove_tree(rt.workdir)

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _on_terminal(self, task: Task, target: Target) -> None:
        if self._webhooks is not None:
            self._webhooks.notify(task, target)

    def _runtime(self) -> Runtime:
        if self._rt is None:
            raise RuntimeError("emulator is not running (use 'async with Emulator() as emu')")
        return self._rt

    # --- addresses -----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """API base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        self._runtime()
        return self._base_url

    @property
    def cdn_url(self) -> str:
        """CDN base URL (download links start with it)."""
        return self._runtime().cdn_base_url

    @property
    def api_key(self) -> str:
        """The key clients must send as ``x-api-key``."""
        return self.config.api_key

    @property
    def config(self) -> EmulatorConfig:
        """Current knobs."""
        return self._rt.config if self._rt is not None else self._initial

    @property
    def workdir(self) -> Path:
        """Temp directory holding uploads and outputs (removed on close)."""
        return self._runtime().workdir

    # --- control -------------------------------------------------------------------------
    def configure(self, **knobs: Any) -> EmulatorConfig:
        """Change knobs at run time (validated; unknown names raise ``TypeError``).

        ``rate_limit_burst=N`` re-arms "the next N requests answer 429" and
        ``drop_after_create=N`` "the next N task creations drop their answer". Socket, seed and
        thread-pool knobs can only be set before start (``ValueError`` afterwards).
        """
        rt = self._rt
        if rt is None:
            self._initial = _checked(self._initial.evolve(**knobs))
            return self._initial
        frozen = sorted(STARTUP_ONLY_KNOBS & set(knobs))
        if frozen:
            raise ValueError(f"knob(s) can only be set before start: {', '.join(frozen)}")
        rt.config = _checked(rt.config.evolve(**knobs))
        if "rate_limit_burst" in knobs:
            rt.faults.arm_burst(rt.config.rate_limit_burst)
        if "drop_after_create" in knobs:
            rt.faults.arm_drops_after_create(rt.config.drop_after_create)
        return rt.config

    def expire_links(self) -> None:
        """Invalidate every download link issued so far (tasks hand out fresh ones)."""
        self._runtime().signer.expire_all()

    def expire_assets(self) -> int:
        """Make every asset expired now; returns how many were live."""
        return self._runtime().store.expire_all_assets()

    # --- introspection -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters (same JSON as ``GET /_emulator/stats``)."""
        rt = self._runtime()
        out = rt.store.snapshot_stats()
        out["rate_limit_burst_remaining"] = rt.faults.burst_remaining
        out["drop_after_create_remaining"] = rt.faults.drops_after_create_remaining
        out["credits_remaining"] = rt.config.credits
        out["processing_tasks"] = self._processor.busy if self._processor else 0
        out["webhooks"]["pending"] = self._webhooks.busy if self._webhooks else 0
        return out

    @property
    def tasks(self) -> Mapping[str, dict[str, Any]]:
        """Read-only view ``task id -> task JSON``."""
        return TasksView(self._runtime())

    def task(self, task_id: str) -> dict[str, Any]:
        """One task's JSON as ``GET /tasks/{id}`` returns it (``KeyError`` if unknown)."""
        return self.tasks[task_id]

    def output_digests(self, task_id: str) -> dict[str, str]:
        """sha256 of every output file of a task, keyed by ``"<name>.<format>"``."""
        task = self._runtime().store.tasks[task_id]
        return {o.filename: o.sha256 for t in task.targets for o in t.outputs}

    def output_path(self, task_id: str, filename: str) -> Path:
        """Local path of one output file (``"<name>.<format>"``) of a task."""
        task = self._runtime().store.tasks[task_id]
        for target in task.targets:
            for out in target.outputs:
                if out.filename == filename:
                    return out.path
        raise KeyError(filename)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every task is terminal and every webhook delivery is done."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._runtime()
        assert self._processor is not None and self._webhooks is not None
        await self._processor.wait_idle(timeout)
        await self._webhooks.wait_idle(max(0.0, deadline - loop.time()))

    async def wait_for_task(self, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until ``task_id`` has ``completedAt`` set; returns its JSON."""
        rt = self._runtime()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            task = rt.store.tasks[task_id]
            if task.completed_at is not None:
                return rt.render_task(task)
            if loop.time() >= deadline:
                raise TimeoutError(f"task {task_id} not complete after {timeout} s")
            await asyncio.sleep(0.005)
