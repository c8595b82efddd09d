"""A local Music.AI: the API (``/v1``) plus a separate signed storage host, on loopback.

For tests and benchmarks of Music.AI clients, ours and the official ``musicai-sdk`` alike:

- API routes (raw key in ``Authorization``, no ``Bearer``): ``GET /upload``, ``POST /job``,
  ``GET /job/{id}``, ``GET /job/{id}/status``, ``GET /job`` (filters ``status`` and
  ``workflow`` repeatable, ``batchName``, ``page``/``size``; a bare array by default, as the
  reference's example), ``DELETE /job/{id}``, ``GET /workflow``, ``GET /application``; every
  success is ``200``.
- Storage host (another port, so another origin): ``PUT /files/{id}/input`` streams an upload
  to disk in constant memory; ``GET``/``HEAD /files/{id}/{name}`` serve inputs and results with
  ``Range``. URLs are signed and expire like the AudioShake emulator's CDN links
  (:class:`~audioshake_async.emulator.links.LinkSigner`, one signer for PUT and one for GET).
  Requests carrying an API key header are counted: a client must never send it there.
- Jobs go ``QUEUED -> STARTED -> SUCCEEDED | FAILED`` in ``queue_delay + delay`` seconds.
  Results are real files made by the AudioShake emulator's DSP stand-in
  (:mod:`~audioshake_async.emulator.dsp`: vocals = mid channel, accompaniment = side, bass
  = low-pass, ...), WAV in, WAV out, plus plain values (``"bpm"``). ``FAILED`` jobs carry the
  documented ``{code, title, message}``: ``BAD_INPUT`` (nothing uploaded, undecodable input),
  ``TIMEOUT`` (an input URL the emulator will not or cannot fetch), and any code through the
  ``fail_rate``/``fail_code`` knobs. ``copyResultsTo`` outputs are PUT to the given (loopback)
  URL and reported as ``"[custom storage]"``.
- Faults: ``http_fail_rate`` (5xx), a token-bucket ``rate_limit`` and ``rate_limit_burst``
  (429 with ``Retry-After``), ``drop_after_create`` (the next N ``POST /job`` create the job,
  then close the connection unanswered), ``put_failures`` (the next N upload PUTs answer 503
  after reading the body).
- ``tls=True`` serves both hosts over HTTPS with a certificate for ``127.0.0.1`` from a CA made
  at start (``trustme``), because the official SDK only downloads ``https://`` results. Point
  ``REQUESTS_CA_BUNDLE`` at :attr:`MusicAIEmulator.ca_path`, or use
  :meth:`MusicAIEmulator.client_ssl_context` with aiohttp.

Inferred, not documented: the listing direction (``list_order``, oldest first by default: the
reference only says "sorted by creation date"), error bodies (``{code, title, message}``), URL
lifetimes (``link_ttl``, an hour), the ``bpm`` value (tempo of the drums stand-in's onsets).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import ssl
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import attrs
from aiohttp import web

from . import dsp
from .errors import reason
from .faults import TokenBucket
from .files import FileEntry, content_type_for, new_file_id, remove_tree
from .links import KEY_HEADERS, LinkSigner, s3_error
from .processing import is_loopback_url
from .state import iso_timestamp

__all__ = ["DEFAULT_WORKFLOWS", "MusicAIEmulator", "MusicAIWorkflow", "main"]

QUEUED, STARTED, SUCCEEDED, FAILED = "QUEUED", "STARTED", "SUCCEEDED", "FAILED"
STATUSES = (QUEUED, STARTED, SUCCEEDED, FAILED)
ERROR_TITLES = {
    "BAD_INPUT": "Invalid input",
    "TIMEOUT": "Timeout",
    "INTERNAL_ERROR": "Internal error",
}
CUSTOM_STORAGE = "[custom storage]"
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
PREFIX = "/v1"
UPLOAD_NAME = "input"
#: Bytes gathered from the socket before one write to disk (one thread hop per batch).
WRITE_BATCH = 1 << 20
SHUTDOWN_TIMEOUT = 0.5
_JOB_ID = re.compile(r"^[0-9a-fA-F-]{8,64}$")


@attrs.frozen
class MusicAIWorkflow:
    """A workflow: file outputs (result key -> DSP stand-in model) and plain-value outputs."""

    slug: str
    name: str
    description: str = ""
    #: ``(result key, dsp model)``: each becomes a WAV file (``dsp.separate(model, ...)``).
    outputs: tuple[tuple[str, str], ...] = ()
    #: Plain values; ``"bpm"`` is the only kind the emulator computes.
    values: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """A stable id derived from the slug."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"musicai-emulator:{self.slug}"))

    def to_json(self, created: str) -> dict[str, Any]:
        """The workflow as ``GET /workflow`` lists it."""
        return {
            "id": self.id,
            "name": self.name,
            "slug": self.slug,
            "description": self.description,
            "createdAt": created,
            "updatedAt": created,
        }


DEFAULT_WORKFLOWS = (
    MusicAIWorkflow(
        "stems",
        "Vocals and accompaniment",
        "Separates vocals from the accompaniment and estimates the tempo.",
        (("vocals", "vocals"), ("accompaniment", "instrumental")),
        ("bpm",),
    ),
    MusicAIWorkflow(
        "stem-suite",
        "Stem separation suite",
        "Vocals, bass, drums and the rest; output names with spaces, as dashboards allow.",
        (
            ("vocals", "vocals"),
            ("Bass guitar", "bass"),
            ("Drum kit", "drums"),
            ("Other instruments", "other"),
        ),
    ),
    MusicAIWorkflow(
        "beat-detection", "Extract BPM", "Tempo only: a result without files.", (), ("bpm",)
    ),
)


def _fraction(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _order(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("oldest", "newest"):
        raise ValueError(f"{attribute.name} must be 'oldest' or 'newest', got {value!r}")


def _workflows(value: Iterable[MusicAIWorkflow] | None) -> tuple[MusicAIWorkflow, ...]:
    return DEFAULT_WORKFLOWS if value is None else tuple(value)


@attrs.define
class MusicAIConfig:
    """Knobs of a :class:`MusicAIEmulator` (all faults off by default)."""

    api_key: str = "musicai-key"
    app_name: str = "Emulated application"
    #: Seconds a job is ``STARTED`` before it ends.
    delay: float = attrs.field(default=0.2, validator=_non_negative)
    #: Seconds a job stays ``QUEUED`` first.
    queue_delay: float = attrs.field(default=0.0, validator=_non_negative)
    workflows: tuple[MusicAIWorkflow, ...] = attrs.field(default=None, converter=_workflows)
    #: Fraction of jobs that end ``FAILED`` with ``fail_code`` (decided at creation, seeded).
    fail_rate: float = attrs.field(default=0.0, validator=_fraction)
    fail_code: str = "INTERNAL_ERROR"
    #: Fraction of API requests answered with a status from ``fail_statuses``.
    http_fail_rate: float = attrs.field(default=0.0, validator=_fraction)
    fail_statuses: tuple[int, ...] = (500, 502, 503)
    #: Restrict ``http_fail_rate`` to these routes (``"GET /job/{id}"``...); None = all.
    fault_routes: frozenset[str] | None = None
    #: Token-bucket requests/s over all API routes (429 above it); None = no limit.
    rate_limit: float | None = attrs.field(default=None, validator=_non_negative)
    #: The next N API requests answer 429 (re-armed when set at run time).
    rate_limit_burst: int = attrs.field(default=0, validator=_non_negative)
    #: ``Retry-After`` seconds of 429 answers (None: no header).
    retry_after: float | None = attrs.field(default=1.0, validator=_non_negative)
    #: The next N ``POST /job`` create the job, then drop the connection without answering.
    drop_after_create: int = attrs.field(default=0, validator=_non_negative)
    #: The next N upload PUTs read the whole body, then answer 503 (the client must resend).
    put_failures: int = attrs.field(default=0, validator=_non_negative)
    #: ``GET /job`` order by creation: ``"oldest"`` or ``"newest"`` first.
    list_order: str = attrs.field(default="oldest", validator=_order)
    #: Answer ``GET /job`` as ``{"jobs": [...]}`` instead of a bare array.
    list_envelope: bool = False
    #: Seconds signed upload/download URLs stay valid.
    link_ttl: float = attrs.field(default=3600.0, validator=_non_negative)
    #: Result URLs end in ``<key>.wav``; False gives extension-less names (Content-Type only).
    result_extensions: bool = True
    #: Largest accepted upload (413 above it); None = no limit.
    max_upload_bytes: int | None = attrs.field(default=None, validator=_non_negative)
    host: str = "127.0.0.1"
    port: int = 0
    storage_port: int = 0
    #: Serve both hosts over HTTPS (a CA and a certificate for 127.0.0.1 made at start).
    tls: bool = False
    seed: int | None = None
    dsp_workers: int = 2
    #: Parent directory of the emulator's temp directory (None: the system default).
    workdir: str | None = None


#: Knobs that only take effect at start.
STARTUP_ONLY = frozenset(
    {"host", "port", "storage_port", "tls", "seed", "dsp_workers", "workdir", "workflows"}
)


@attrs.define(eq=False)
class _Blob:
    """An uploaded input on the storage host."""

    path: Path
    size: int
    sha256: str
    content_type: str


@attrs.define(eq=False)
class _Job:
    id: str
    seq: int
    name: str
    workflow: MusicAIWorkflow
    params: dict[str, Any]
    metadata: dict[str, Any]
    copy_to: dict[str, str]
    created: float
    forced_failure: bool
    status: str = QUEUED
    started: float | None = None
    completed: float | None = None
    error: dict[str, str] | None = None
    #: key -> ("file", file id, url file name) or ("value", text).
    result: dict[str, tuple[str, ...]] | None = None
    runner: asyncio.Task[None] | None = None


class _Failure(Exception):
    """A job ends FAILED with this documented code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    # Error bodies are undocumented; the job error triple is the likeliest shape.
    body = {"code": code, "title": reason(status), "message": message}
    return web.json_response(body, status=status, headers=headers)


def _sniff_format(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    return "unknown"


def estimate_bpm(x: Any, rate: int) -> str:
    """Tempo of the drums stand-in's onset envelope (autocorrelation, 60-200 BPM).

    Inputs shorter than 3 s give ``"120"``: too short to measure.
    """
    import numpy as np

    hop = max(1, rate // 100)  # a 100 Hz envelope
    drums = dsp.separate("drums", x, rate).mean(axis=1)
    frames = drums.shape[0] // hop
    if frames < 300:
        return "120"
    envelope = np.abs(drums[: frames * hop]).reshape(frames, hop).mean(axis=1)
    onset = np.maximum(np.diff(envelope), 0.0)
    onset = onset - onset.mean()
    size = 1 << (2 * onset.size - 1).bit_length()
    spectrum = np.fft.rfft(onset, size)
    correlation = np.fft.irfft(spectrum * np.conj(spectrum), size)[: onset.size]
    low, high = 30, 100  # lags of 200 and 60 BPM at 100 Hz
    lag = low + int(np.argmax(correlation[low : high + 1]))
    return str(round(6000 / lag))


def _render(
    workflow: MusicAIWorkflow, src: Path, out_dir: Path
) -> tuple[list[Path], dict[str, str]]:
    """Worker-thread body: decode ``src`` once, write every file output, compute the values."""
    fmt = _sniff_format(src)
    if fmt == "unknown":
        raise dsp.DecodeError("the input is not an audio file the emulator decodes (WAV)")
    x, info = dsp.read_audio(src, fmt)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (_, model) in enumerate(workflow.outputs):
        path = out_dir / f"{index}.wav"
        dsp.write_audio(path, dsp.separate(model, x, info.rate), info, "wav")
        paths.append(path)
    values = {}
    for kind in workflow.values:
        values[kind] = estimate_bpm(x, info.rate) if kind == "bpm" else "0"
    return paths, values


def _write_blob(handle: Any, digest: Any, chunks: list[bytes]) -> None:
    handle.writelines(chunks)
    for chunk in chunks:
        digest.update(chunk)


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
        self.config = MusicAIConfig(
            api_key=api_key, delay=delay, workflows=workflows, tls=tls, **knobs
        )
        self._runners: list[web.AppRunner] = []
        self._jobs: dict[str, _Job] = {}
        self._blobs: dict[str, _Blob | None] = {}
        self._files: dict[str, FileEntry] = {}
        self._renders: dict[tuple[str, str], asyncio.Future[tuple[list[Path], dict[str, str]]]] = {}
        self._put_signer = LinkSigner()
        self._get_signer = LinkSigner()
        self._bucket = TokenBucket()
        self._burst = self.config.rate_limit_burst
        self._seq = 0
        self._last_created_ms = 0
        self._executor: ThreadPoolExecutor | None = None
        self._http: aiohttp.ClientSession | None = None
        self._workdir: Path | None = None
        self._ca: Any = None
        self._base_url = ""
        self._storage_url = ""
        self._started_at = ""
        self._rng = random.Random()
        self._ids = random.Random()
        self._counters: Counter[str] = Counter()
        self._requests: Counter[str] = Counter()
        self._storage_requests: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._per_metadata: Counter[str] = Counter()
        self._key_headers: Counter[str] = Counter()
        #: The last API requests: (route, query items, header names).
        self.request_log: deque[tuple[str, list[tuple[str, str]], list[str]]] = deque(maxlen=2000)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> MusicAIEmulator:
        """Start the storage host and the API. Returns ``self``."""
        if self._workdir is not None:
            raise RuntimeError("emulator already started")
        cfg = self.config
        seed = cfg.seed
        self._rng = random.Random(f"{seed}:faults") if seed is not None else random.Random()
        self._ids = random.Random(f"{seed}:ids") if seed is not None else random.Random()
        self._workdir = Path(tempfile.mkdtemp(prefix="musicai-emulator-", dir=cfg.workdir))
        self._started_at = iso_timestamp(time.time())
        try:
            server_ssl = self._make_tls() if cfg.tls else None
            self._executor = ThreadPoolExecutor(
                max_workers=max(1, cfg.dsp_workers), thread_name_prefix="musicai-emulator-dsp"
            )
            self._http = aiohttp.ClientSession(trust_env=False)
            scheme = "https" if cfg.tls else "http"
            storage_port = await self._serve(self._storage_app(), cfg.storage_port, server_ssl)
            self._storage_url = f"{scheme}://127.0.0.1:{storage_port}"
            api_port = await self._serve(self._api_app(), cfg.port, server_ssl)
            self._base_url = f"{scheme}://127.0.0.1:{api_port}{PREFIX}"
        except BaseException:
            await self.aclose()
            raise
        return self

    def _make_tls(self) -> ssl.SSLContext:
        try:
            import trustme
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise RuntimeError("tls=True needs the trustme package: pip install trustme") from exc
        assert self._workdir is not None
        self._ca = trustme.CA()
        certificate = self._ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate.configure_cert(context)
        self._ca.cert_pem.write_to_path(str(self._workdir / "ca.pem"))
        return context

    async def _serve(self, app: web.Application, port: int, context: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.host, port, ssl_context=context)
        await site.start()
        return int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop both servers and the processing, remove the temp directory."""
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        runners = [job.runner for job in self._jobs.values() if job.runner is not None]
        for task in runners:
            task.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)
        for future in self._renders.values():
            if future.done():
                if not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" warning
            else:
                future.cancel()
        self._renders.clear()
        if self._executor is not None:
            # Waiting matters: a render still writing into the work dir would race its removal.
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._workdir is not None:
            await remove_tree(self._workdir)
            self._workdir = None

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

    def _running(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("emulator is not running (use 'async with MusicAIEmulator()')")
        return self._workdir

    @property
    def base_url(self) -> str:
        """API base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        self._running()
        return self._base_url

    @property
    def storage_url(self) -> str:
        """Origin of the signed upload and result URLs (another port than the API)."""
        self._running()
        return self._storage_url

    @property
    def api_key(self) -> str:
        """The key clients must send, raw, in ``Authorization``."""
        return self.config.api_key

    @property
    def ca_path(self) -> Path | None:
        """The CA certificate (PEM) to trust, e.g. as ``REQUESTS_CA_BUNDLE``; None without TLS."""
        return self._running() / "ca.pem" if self._ca is not None else None

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
        if frozen and self._workdir is not None:
            raise ValueError(f"knob(s) can only be set before start: {', '.join(frozen)}")
        self.config = attrs.evolve(self.config, **knobs)
        if "rate_limit_burst" in knobs:
            self._burst = self.config.rate_limit_burst
        return self.config

    def expire_links(self) -> None:
        """Invalidate every upload and result URL handed out so far."""
        self._put_signer.expire_all()
        self._get_signer.expire_all()

    def stats(self) -> dict[str, Any]:
        """Counters: requests per route, jobs per metadata, key headers seen on storage..."""
        by_status = Counter(job.status for job in self._jobs.values())
        return {
            "requests": dict(self._requests),
            "storage_requests": dict(self._storage_requests),
            "jobs_created": self._counters["jobs_created"],
            "jobs_by_status": {status: by_status.get(status, 0) for status in STATUSES},
            "jobs_per_metadata": dict(self._per_metadata),
            "duplicate_jobs": sum(n - 1 for n in self._per_metadata.values() if n > 1),
            "uploads": self._counters["uploads"],
            "upload_bytes": self._counters["upload_bytes"],
            "auth_failures": self._counters["auth_failures"],
            "storage_denied": self._counters["storage_denied"],
            "storage_key_headers": dict(self._key_headers),
            "storage_api_key_seen": self._counters["storage_api_key_seen"],
            "faults": dict(self._faults),
        }

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's JSON as ``GET /job/{id}`` returns it (``KeyError`` if unknown)."""
        return self._render(self._jobs[job_id])

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job's JSON by id, in creation order."""
        return {job_id: self._render(job) for job_id, job in self._jobs.items()}

    def upload_info(self, url: str) -> dict[str, Any] | None:
        """``{"size", "sha256", "content_type"}`` of the upload behind an upload/download URL."""
        parts = urlsplit(url).path.split("/")
        blob = self._blobs.get(parts[2]) if len(parts) > 2 else None
        if blob is None:
            return None
        return {"size": blob.size, "sha256": blob.sha256, "content_type": blob.content_type}

    def output_path(self, job_id: str, key: str) -> Path:
        """Local path of one result file of a job."""
        job = self._jobs[job_id]
        entry = (job.result or {}).get(key)
        if entry is None or entry[0] != "file":
            raise KeyError(key)
        return self._files[entry[1]].path

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every job is terminal."""
        runners = [j.runner for j in self._jobs.values() if j.runner and not j.runner.done()]
        if runners:
            _, pending = await asyncio.wait(runners, timeout=timeout)
            if pending:
                raise TimeoutError(f"{len(pending)} job(s) still running after {timeout} s")

    # ------------------------------------------------------------------ rendering

    def _sign(self, signer: LinkSigner, file_id: str, filename: str) -> str:
        expires = int(time.time() + self.config.link_ttl)
        return signer.sign(self._storage_url, file_id, filename, expires)

    def _render(self, job: _Job) -> dict[str, Any]:
        result = None
        if job.status == SUCCEEDED and job.result is not None:
            result = {}
            for key, entry in job.result.items():
                if entry[0] == "file":
                    result[key] = self._sign(self._get_signer, entry[1], entry[2])
                else:
                    result[key] = entry[1]
        return {
            "id": job.id,
            "app": self.config.app_name,
            "name": job.name,
            "workflow": job.workflow.slug,
            "status": job.status,
            "batchName": None,
            "workflowParams": job.params,
            "metadata": job.metadata,
            "result": result,
            "error": job.error,
            "createdAt": iso_timestamp(job.created),
            "startedAt": iso_timestamp(job.started) if job.started is not None else None,
            "completedAt": iso_timestamp(job.completed) if job.completed is not None else None,
        }

    # ------------------------------------------------------------------ API app

    def _api_app(self) -> web.Application:
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

    @staticmethod
    def _route(request: web.Request) -> str:
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else "<unmatched>"
        return f"{request.method} {template.removeprefix(PREFIX)}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = self._route(request)
        self._requests[route] += 1
        self.request_log.append((route, list(request.query.items()), list(request.headers)))
        cfg = self.config
        if self._burst > 0 or (
            cfg.rate_limit is not None
            and not self._bucket.try_acquire(cfg.rate_limit, max(1.0, cfg.rate_limit))
        ):
            kind = "rate_limit_burst" if self._burst > 0 else "rate_limited"
            self._burst = max(0, self._burst - 1)
            self._faults[kind] += 1
            headers = {} if cfg.retry_after is None else {"Retry-After": f"{cfg.retry_after:g}"}
            return _error(429, "RATE_LIMITED", "Too many requests", headers)
        targeted = cfg.fault_routes is None or route in cfg.fault_routes
        if targeted and cfg.http_fail_rate > 0 and self._rng.random() < cfg.http_fail_rate:
            self._faults["http_fail"] += 1
            status = self._rng.choice(cfg.fail_statuses)
            return _error(status, "INTERNAL_ERROR", f"Emulated server error ({status})")
        key = request.headers.get("Authorization", "")
        if not hmac.compare_digest(key.encode(), cfg.api_key.encode()):
            self._counters["auth_failures"] += 1
            return _error(401, "UNAUTHORIZED", "Missing or invalid API key")
        try:
            response: web.StreamResponse = await handler(request)
        except _HttpError as exc:
            return _error(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            return _error(exc.status, "NOT_FOUND" if exc.status == 404 else "ERROR", exc.reason)
        return response

    async def _upload_urls(self, request: web.Request) -> web.Response:
        file_id = new_file_id()
        # A slot: the download URL works once the PUT has completed.
        self._blobs[file_id] = None
        return web.json_response(
            {
                "uploadUrl": self._sign(self._put_signer, file_id, UPLOAD_NAME),
                "downloadUrl": self._sign(self._get_signer, file_id, UPLOAD_NAME),
            }
        )

    async def _create_job(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _HttpError(400, "INVALID_FIELDS", "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _HttpError(400, "INVALID_FIELDS", "body must be a JSON object")
        name, slug, params = body.get("name"), body.get("workflow"), body.get("params")
        if not isinstance(name, str) or not name.strip():
            raise _HttpError(400, "INVALID_FIELDS", "name is required")
        if not isinstance(slug, str) or not slug:
            raise _HttpError(400, "INVALID_FIELDS", "workflow is required")
        if not isinstance(params, dict):
            raise _HttpError(400, "INVALID_FIELDS", "params must be an object")
        workflow = next((w for w in self.config.workflows if w.slug == slug), None)
        if workflow is None:
            raise _HttpError(404, "WORKFLOW_NOT_FOUND", f"Workflow {slug!r} not found")
        if not isinstance(params.get("inputUrl"), str) or not params["inputUrl"]:
            raise _HttpError(422, "INVALID_PARAMS", "params.inputUrl is required")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(v, (str, int, float, bool)) for v in metadata.values()
        ):
            raise _HttpError(400, "INVALID_FIELDS", "metadata values are strings/numbers/booleans")
        copy_to = body.get("copyResultsTo") or {}
        outputs = {key for key, _ in workflow.outputs}
        if not isinstance(copy_to, dict) or not all(
            k in outputs and isinstance(v, str) for k, v in copy_to.items()
        ):
            raise _HttpError(422, "INVALID_PARAMS", "copyResultsTo maps file outputs to URLs")
        cfg = self.config
        self._seq += 1
        job = _Job(
            id=str(uuid.UUID(int=self._ids.getrandbits(128), version=4)),
            seq=self._seq,
            name=name,
            workflow=workflow,
            params=params,
            metadata=metadata,
            copy_to=copy_to,
            created=self._next_created(),
            forced_failure=cfg.fail_rate > 0 and self._rng.random() < cfg.fail_rate,
        )
        self._jobs[job.id] = job
        self._counters["jobs_created"] += 1
        if metadata:
            self._per_metadata[json.dumps(metadata, sort_keys=True)] += 1
        job.runner = asyncio.get_running_loop().create_task(
            self._process(job), name=f"musicai-emulator-job-{job.id}"
        )
        if self.config.drop_after_create > 0:
            self.config = attrs.evolve(cfg, drop_after_create=cfg.drop_after_create - 1)
            self._faults["drop_after_create"] += 1
            if request.transport is not None:
                request.transport.close()
        return web.json_response({"id": job.id})

    def _next_created(self) -> float:
        # Strictly increasing at the millisecond resolution of ``createdAt``: the order of
        # jobs created in one burst stays visible to clients.
        millis = max(int(time.time() * 1000), self._last_created_ms + 1)
        self._last_created_ms = millis
        return millis / 1000

    def _find(self, request: web.Request) -> _Job:
        job_id = request.match_info["id"]
        if not _JOB_ID.match(job_id):
            raise _HttpError(400, "INVALID_ID", "Invalid job ID format")
        job = self._jobs.get(job_id)
        if job is None:
            raise _HttpError(404, "JOB_NOT_FOUND", "Job not found")
        return job

    async def _get_job(self, request: web.Request) -> web.Response:
        return web.json_response(self._render(self._find(request)))

    async def _job_status(self, request: web.Request) -> web.Response:
        job = self._find(request)
        return web.json_response({"id": job.id, "status": job.status})

    async def _delete_job(self, request: web.Request) -> web.Response:
        job = self._find(request)
        del self._jobs[job.id]
        if job.runner is not None:
            job.runner.cancel()
        for entry in (job.result or {}).values():
            if entry[0] == "file":
                self._files.pop(entry[1], None)
        return web.json_response({"id": job.id})

    @staticmethod
    def _paging(request: web.Request) -> tuple[int, int]:
        try:
            page = int(request.query.get("page", "0"))
            size = int(request.query.get("size", "100"))
        except ValueError:
            raise _HttpError(400, "INVALID_PARAMS", "page and size are integers") from None
        if page < 0 or not 1 <= size <= 1000:
            raise _HttpError(400, "INVALID_PARAMS", "page >= 0 and 1 <= size <= 1000")
        return page, size

    async def _list_jobs(self, request: web.Request) -> web.Response:
        page, size = self._paging(request)
        statuses = request.query.getall("status", [])
        if any(s not in STATUSES for s in statuses):
            raise _HttpError(400, "INVALID_PARAMS", f"status is one of {', '.join(STATUSES)}")
        workflows = request.query.getall("workflow", [])
        batch = request.query.get("batchName")
        jobs = [
            job
            for job in self._jobs.values()
            if (not statuses or job.status in statuses)
            and (not workflows or job.workflow.slug in workflows)
            and (batch is None or batch == "")  # jobs made through the API have no batch
        ]
        if self.config.list_order == "newest":
            jobs.reverse()
        body: Any = [self._render(job) for job in jobs[page * size : (page + 1) * size]]
        if self.config.list_envelope:
            body = {"jobs": body}
        return web.json_response(body)

    async def _list_workflows(self, request: web.Request) -> web.Response:
        page, size = self._paging(request)
        chosen = self.config.workflows[page * size : (page + 1) * size]
        return web.json_response({"workflows": [w.to_json(self._started_at) for w in chosen]})

    async def _application(self, request: web.Request) -> web.Response:
        app_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"musicai-emulator:{self.config.api_key}"))
        return web.json_response({"id": app_id, "name": self.config.app_name})

    # ------------------------------------------------------------------ storage app

    def _storage_app(self) -> web.Application:
        app = web.Application(middlewares=[self._storage_middleware])
        app.router.add_put("/files/{file_id}/{filename}", self._put_file)
        app.router.add_get("/files/{file_id}/{filename}", self._get_file, allow_head=True)
        return app

    @web.middleware
    async def _storage_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self._storage_requests[request.method] += 1
        for name in KEY_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                # Names only: a value is a secret and must not end up in stats or logs.
                self._key_headers[name] += 1
                if self.config.api_key in value:
                    self._counters["storage_api_key_seen"] += 1
        response: web.StreamResponse = await handler(request)
        return response

    def _check(self, signer: LinkSigner, request: web.Request) -> web.Response | None:
        problem = signer.check(
            request.match_info["file_id"],
            request.match_info["filename"],
            request.query.get("expires", ""),
            request.query.get("sig", ""),
            time.time(),
        )
        if problem is None:
            return None
        self._counters["storage_denied"] += 1
        return s3_error(403, "AccessDenied", problem)

    async def _put_file(self, request: web.Request) -> web.StreamResponse:
        denied = self._check(self._put_signer, request)
        if denied is not None:
            return denied
        file_id = request.match_info["file_id"]
        if file_id not in self._blobs or request.match_info["filename"] != UPLOAD_NAME:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if self.config.put_failures > 0:
            self.config = attrs.evolve(self.config, put_failures=self.config.put_failures - 1)
            self._faults["put_failure"] += 1
            async for _ in request.content.iter_chunked(256 * 1024):
                pass
            return s3_error(503, "SlowDown", "Please reduce your request rate.")
        limit = self.config.max_upload_bytes
        declared = request.content_length
        if limit is not None and declared is not None and declared > limit:
            response = s3_error(413, "EntityTooLarge", f"uploads are limited to {limit} bytes")
            response.force_close()
            return response
        workdir = self._running()
        final = workdir / "blobs" / file_id
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(f"{file_id}.{uuid.uuid4().hex}.part")
        loop = asyncio.get_running_loop()
        digest = hashlib.sha256()
        received = 0
        # Opened on the loop: creating a local file does not block, and the handle is closed
        # in ``finally`` whatever happens to the request.
        handle = open(part, "wb")  # noqa: ASYNC230, SIM115
        try:
            batch: list[bytes] = []
            batched = 0
            # Streamed in batches: the body never sits in memory whatever its size.
            async for chunk in request.content.iter_chunked(256 * 1024):
                batch.append(chunk)
                batched += len(chunk)
                received += len(chunk)
                if limit is not None and received > limit:
                    response = s3_error(413, "EntityTooLarge", f"uploads are limited to {limit}")
                    response.force_close()
                    return response
                if batched >= WRITE_BATCH:
                    await loop.run_in_executor(None, _write_blob, handle, digest, batch)
                    batch, batched = [], 0
            if batch:
                await loop.run_in_executor(None, _write_blob, handle, digest, batch)
        finally:
            handle.close()
            if declared is not None and received != declared:
                part.unlink(missing_ok=True)
        if declared is not None and received != declared:
            return s3_error(400, "IncompleteBody", f"got {received} of {declared} bytes")
        os.replace(part, final)
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        self._blobs[file_id] = _Blob(final, received, digest.hexdigest(), content_type)
        self._counters["uploads"] += 1
        self._counters["upload_bytes"] += received
        return web.Response(status=200)

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        denied = self._check(self._get_signer, request)
        if denied is not None:
            return denied
        file_id = request.match_info["file_id"]
        entry = self._files.get(file_id)
        if entry is None:
            blob = self._blobs.get(file_id)
            if blob is not None:
                entry = FileEntry(blob.path, UPLOAD_NAME, blob.content_type)
        if entry is None or entry.filename != request.match_info["filename"]:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return web.FileResponse(entry.path, headers={"Content-Type": entry.content_type})

    # ------------------------------------------------------------------ processing

    async def _process(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        cfg = self.config
        if cfg.queue_delay > 0:
            await asyncio.sleep(cfg.queue_delay)
        job.status, job.started = STARTED, time.time()
        due = begun + cfg.queue_delay + cfg.delay
        try:
            # The work runs while the job "processes": the delay is the processing time.
            render = asyncio.ensure_future(self._outputs(job))
            try:
                await asyncio.sleep(max(0.0, due - loop.time()))
                paths, values = await render
            finally:
                if not render.done():
                    render.cancel()
            if job.forced_failure:
                code = cfg.fail_code
                raise _Failure(code, f"Emulated failure ({ERROR_TITLES.get(code, code)})")
            result: dict[str, tuple[str, ...]] = {}
            for (key, _), path in zip(job.workflow.outputs, paths, strict=True):
                if key in job.copy_to:
                    await self._copy_out(path, job.copy_to[key])
                    result[key] = ("value", CUSTOM_STORAGE)
                    continue
                file_id = new_file_id()
                # The key names the file in the URL too, minus path separators (the key
                # itself, whatever it holds, only travels in the result map).
                plain = re.sub(r"[/\\]", "_", key)
                name = f"{plain}.wav" if cfg.result_extensions else plain
                self._files[file_id] = FileEntry(path, name, content_type_for("x.wav"))
                result[key] = ("file", file_id, name)
            for key, value in values.items():
                result[key] = ("value", value)
            job.result = result
            job.status = SUCCEEDED
        except _Failure as failure:
            title = ERROR_TITLES.get(failure.code, "Error")
            job.error = {"code": failure.code, "title": title, "message": failure.message}
            job.status = FAILED
        except Exception as exc:  # a bug in the stand-in must not leave the job running
            job.error = {
                "code": "INTERNAL_ERROR",
                "title": ERROR_TITLES["INTERNAL_ERROR"],
                "message": f"emulator internal error: {exc!r}",
            }
            job.status = FAILED
        job.completed = time.time()

    async def _outputs(self, job: _Job) -> tuple[list[Path], dict[str, str]]:
        path, key = await self._input_of(job)
        cache_key = (key, job.workflow.slug)
        future = self._renders.get(cache_key)
        if future is None:
            assert self._executor is not None
            out_dir = self._running() / "outputs" / new_file_id()
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, _render, job.workflow, path, out_dir
            )
            self._renders[cache_key] = future
        try:
            # Shielded: a job deleted mid-render must not cancel a render other jobs share.
            return await asyncio.shield(future)
        except dsp.DspError as exc:
            raise _Failure("BAD_INPUT", f"Invalid input: {exc}") from None

    async def _input_of(self, job: _Job) -> tuple[Path, str]:
        """The input file and a cache key of its content."""
        url = str(job.params["inputUrl"])
        parts = urlsplit(url)
        storage = urlsplit(self._storage_url)
        if parts.scheme == storage.scheme and parts.netloc == storage.netloc:
            segments = parts.path.split("/")
            query = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
            if len(segments) != 4 or segments[1] != "files":
                raise _Failure("BAD_INPUT", "File not found.")
            file_id, name = segments[2], unquote(segments[3])
            problem = self._get_signer.check(
                file_id, name, query.get("expires", ""), query.get("sig", ""), time.time()
            )
            if problem is not None:
                raise _Failure("BAD_INPUT", f"Input URL refused: {problem}")
            blob = self._blobs.get(file_id)
            if blob is None:
                raise _Failure("BAD_INPUT", "File not found: nothing was uploaded to this URL.")
            return blob.path, f"sha256:{blob.sha256}"
        if not is_loopback_url(url):
            raise _Failure(
                "TIMEOUT", "Timeout reading the input: the emulator fetches loopback URLs only"
            )
        dest = self._running() / "inputs" / job.id
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        assert self._http is not None
        try:
            async with self._http.get(url, ssl=False) as response:
                if response.status != 200:
                    raise _Failure("BAD_INPUT", f"File not found (HTTP {response.status}).")
                with open(dest, "wb") as handle:  # noqa: ASYNC230 - small test inputs
                    async for chunk in response.content.iter_chunked(256 * 1024):
                        digest.update(chunk)
                        handle.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _Failure("TIMEOUT", f"Timeout reading the input ({type(exc).__name__})") from None
        return dest, f"sha256:{digest.hexdigest()}"

    async def _copy_out(self, path: Path, url: str) -> None:
        """PUT one result to a ``copyResultsTo`` URL (loopback only)."""
        if not is_loopback_url(url):
            raise _Failure("INTERNAL_ERROR", "copyResultsTo: the emulator writes to loopback only")
        assert self._http is not None
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, path.read_bytes)
        try:
            async with self._http.put(url, data=data, ssl=False) as response:
                if response.status // 100 != 2:
                    raise _Failure("INTERNAL_ERROR", f"copyResultsTo answered {response.status}")
        except aiohttp.ClientError as exc:
            raise _Failure("INTERNAL_ERROR", f"copyResultsTo failed: {exc!r}") from None


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m audioshake_async.emulator.musicai",
        description="Run a local Music.AI emulator until interrupted; prints its addresses "
        "as one JSON line.",
    )
    parser.add_argument("--api-key", default="musicai-key")
    parser.add_argument("--delay", type=float, default=0.2, help="processing seconds per job")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (prints the CA path)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--storage-port", type=int, default=0)
    parser.add_argument("--rate-limit", type=float, default=None, help="requests/s (429 above)")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of jobs FAILED")
    parser.add_argument("--list-order", choices=("oldest", "newest"), default="oldest")
    parser.add_argument("--workdir", default=None, help="parent of the temp directory")
    return parser


async def _serve_forever(args: argparse.Namespace, ready: Callable[[dict[str, Any]], None]) -> None:
    async with MusicAIEmulator(
        api_key=args.api_key,
        delay=args.delay,
        tls=args.tls,
        port=args.port,
        storage_port=args.storage_port,
        rate_limit=args.rate_limit,
        fail_rate=args.fail_rate,
        list_order=args.list_order,
        workdir=args.workdir,
    ) as emulator:
        ca = emulator.ca_path
        ready(
            {
                "base_url": emulator.base_url,
                "storage_url": emulator.storage_url,
                "api_key": emulator.api_key,
                "ca_path": str(ca) if ca is not None else None,
                "pid": os.getpid(),
            }
        )
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator in the foreground (Ctrl-C or SIGTERM stops it)."""
    import signal

    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    def ready(info: dict[str, Any]) -> None:
        print(json.dumps(info), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args, ready))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
