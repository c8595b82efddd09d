"""The :class:`MusicAIEmulator` facade: starts/stops both hosts and exposes test helpers."""

from __future__ import annotations

import asyncio
import random
import ssl
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
from aiohttp import web

from ..files import remove_tree
from ..http_common import start_site
from ..state import iso_timestamp
from .api import PREFIX, ApiRoutes
from .config import STARTUP_ONLY, MusicAIConfig
from .processing import JobRunner
from .state import STATUSES, MusicAIState
from .storage import StorageHost
from .workflows import MusicAIWorkflow


class MusicAIEmulator:
    """A local Music.AI API and storage host; ``async with MusicAIEmulator() as emu:``.

    Knobs are the fields of :class:`MusicAIConfig` (``delay``, ``workflows``, ``tls``,
    ``fail_rate``...). ``emu.base_url`` ends in ``/v1``; ``emu.api_key`` is what clients send.
    """

    def __init__(
        self,
        api_key: str = "musicai-key",
        delay: float = 0.2,
        workflows: Iterable[MusicAIWorkflow] | None = None,
        tls: bool = False,
        **knobs: Any,
    ) -> None:
        config = MusicAIConfig(api_key=api_key, delay=delay, workflows=workflows, tls=tls, **knobs)
        self._state = MusicAIState(config)
        self._jobs = JobRunner(self._state)
        self._api = ApiRoutes(self._state, self._jobs)
        self._storage = StorageHost(self._state)
        self._runners: list[web.AppRunner] = []
        self._ca: Any = None
        self._base_url = ""

    @property
    def config(self) -> MusicAIConfig:
        """Current knobs."""
        return self._state.config

    @config.setter
    def config(self, value: MusicAIConfig) -> None:
        self._state.config = value

    @property
    def request_log(self) -> deque[tuple[str, list[tuple[str, str]], list[str]]]:
        """The last API requests: (route, query items, header names)."""
        return self._state.request_log

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> MusicAIEmulator:
        """Start the storage host and the API. Returns ``self``."""
        state = self._state
        if state.workdir is not None:
            raise RuntimeError("emulator already started")
        cfg = state.config
        seed = cfg.seed
        state.rng = random.Random(f"{seed}:faults") if seed is not None else random.Random()
        state.ids = random.Random(f"{seed}:ids") if seed is not None else random.Random()
        state.workdir = Path(tempfile.mkdtemp(prefix="musicai-emulator-", dir=cfg.workdir))
        state.started_at = iso_timestamp(time.time())
        try:
            server_ssl = self._make_tls() if cfg.tls else None
            self._jobs.open(cfg.dsp_workers)
            state.http = aiohttp.ClientSession(trust_env=False)
            scheme = "https" if cfg.tls else "http"
            runners = self._runners
            storage = await start_site(
                self._storage.app(), cfg.host, cfg.storage_port, runners, server_ssl
            )
            state.storage_url = f"{scheme}://127.0.0.1:{storage}"
            api = await start_site(self._api.app(), cfg.host, cfg.port, runners, server_ssl)
            self._base_url = f"{scheme}://127.0.0.1:{api}{PREFIX}"
        except BaseException:
            await self.aclose()
            raise
        return self

    def _make_tls(self) -> ssl.SSLContext:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("tls=True needs the trustme package: pip install trustme") from exc
        workdir = self._state.running()
        self._ca = trustme.CA()
        certificate = self._ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self._ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
        return context

    async def aclose(self) -> None:
        """Stop both servers and the processing, remove the temp directory."""
        state = self._state
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self._jobs.aclose()
        if state.http is not None:
            await state.http.close()
            state.http = None
        if state.workdir is not None:
            await remove_tree(state.workdir)
            state.workdir = None

    async def __aenter__(self) -> MusicAIEmulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ public surface

    @property
    def base_url(self) -> str:
        """API base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        self._state.running()
        return self._base_url

    @property
    def storage_url(self) -> str:
        """Origin of the signed upload and result URLs (another port than the API)."""
        self._state.running()
        return self._state.storage_url

    @property
    def api_key(self) -> str:
        """The key clients must send, raw, in ``Authorization``."""
        return self.config.api_key

    @property
    def ca_path(self) -> Path | None:
        """The CA certificate (PEM) to trust, e.g. as ``REQUESTS_CA_BUNDLE``; None without TLS."""
        return self._state.running() / "ca.pem" if self._ca is not None else None

    def client_ssl_context(self) -> ssl.SSLContext:
        """An SSL context trusting this emulator's certificate (for aiohttp clients)."""
        if self._ca is None:
            raise RuntimeError("the emulator was started without tls=True")
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context

    def configure(self, **knobs: Any) -> MusicAIConfig:
        """Change knobs at run time (``rate_limit_burst`` re-arms the 429 burst)."""
        frozen = sorted(STARTUP_ONLY & set(knobs))
        if frozen and self._state.workdir is not None:
            raise ValueError(f"knob(s) can only be set before start: {', '.join(frozen)}")
        self.config = attrs.evolve(self.config, **knobs)
        if "rate_limit_burst" in knobs:
            self._api.arm_burst(self.config.rate_limit_burst)
        return self.config

    def expire_links(self) -> None:
        """Invalidate every upload and result URL handed out so far."""
        self._state.put_signer.expire_all()
        self._state.get_signer.expire_all()

    def stats(self) -> dict[str, Any]:
        """Counters: requests per route, jobs per metadata, key headers seen on storage..."""
        state = self._state
        counters = state.counters
        by_status = Counter(job.status for job in state.jobs.values())
        return {
            "requests": dict(state.requests),
            "storage_requests": dict(state.storage_requests),
            "jobs_created": counters["jobs_created"],
            "jobs_by_status": {status: by_status.get(status, 0) for status in STATUSES},
            "jobs_per_metadata": dict(state.per_metadata),
            "duplicate_jobs": sum(n - 1 for n in state.per_metadata.values() if n > 1),
            "uploads": counters["uploads"],
            "upload_bytes": counters["upload_bytes"],
            "auth_failures": counters["auth_failures"],
            "storage_denied": counters["storage_denied"],
            "storage_key_headers": dict(state.key_headers),
            "storage_api_key_seen": counters["storage_api_key_seen"],
            "faults": dict(state.faults),
        }

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's JSON as ``GET /job/{id}`` returns it (``KeyError`` if unknown)."""
        return self._state.job_json(self._state.jobs[job_id])

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job's JSON by id, in creation order."""
        return {job_id: self._state.job_json(job) for job_id, job in self._state.jobs.items()}

    def upload_info(self, url: str) -> dict[str, Any] | None:
        """``{"size", "sha256", "content_type"}`` of the upload behind an upload/download URL."""
        parts = urlsplit(url).path.split("/")
        blob = self._state.blobs.get(parts[2]) if len(parts) > 2 else None
        if blob is None:
            return None
        return {"size": blob.size, "sha256": blob.sha256, "content_type": blob.content_type}

    def output_path(self, job_id: str, key: str) -> Path:
        """Local path of one result file of a job."""
        job = self._state.jobs[job_id]
        entry = (job.result or {}).get(key)
        if entry is None or entry[0] != "file":
            raise KeyError(key)
        return self._state.files[entry[1]].path

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every job is terminal."""
        runners = [j.runner for j in self._state.jobs.values() if j.runner and not j.runner.done()]
        if runners:
            _, pending = await asyncio.wait(runners, timeout=timeout)
            if pending:
                raise TimeoutError(f"{len(pending)} job(s) still running after {timeout} s")
