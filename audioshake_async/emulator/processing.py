"""Turns created tasks into completed/errored targets with real output files.

One asyncio task per Task (not per target): it resolves the source once, starts every
output job right away in a worker-thread pool (DSP never runs on the event loop), then walks
the targets in order of their due time, sleeping until each is due and awaiting its job.

Output jobs are cached by ``(source, model, residual, format, ...)`` as shared futures, so
10 000 tasks on the same file compute each stem once and share one file on the CDN.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp
import attrs
import yarl

from . import dsp
from .catalog import CATALOG, ModelSpec, format_of
from .files import FileEntry, content_type_for, file_sha256, new_file_id
from .http_common import is_loopback_url
from .runtime import Runtime
from .state import COMPLETED, ERROR, OutputFile, Target, Task, billed_minutes
from .transcripts import parse_transcript, render_transcript

#: Largest transcript the emulator fetches/reads for alignment.
MAX_TRANSCRIPT_BYTES = 1024 * 1024
FETCH_CHUNK = 256 * 1024

#: All output jobs of one target: one result (or exception) per distinct format.
Job = asyncio.Future[list[list[OutputFile] | BaseException]]


@attrs.frozen
class Source:
    """The media a task processes, once resolved."""

    key: str
    path: Path | None = None
    fmt: str = ""
    info: dsp.AudioInfo | None = None
    error: dsp.DspError | None = None


#: A dsp renderer with everything but the output directory bound.
Renderer = Callable[[Path], list[tuple[str, Path]]]


def _produce_job(render: Renderer, out_dir: Path) -> list[OutputFile]:
    """Worker-thread body: render the files, then hash them (also off the loop)."""
    try:
        produced = render(out_dir)
    except FileNotFoundError as exc:  # the asset expired (and was deleted) meanwhile
        raise dsp.DspError(f"source file is gone (asset expired?): {exc.filename}") from exc
    outputs = []
    for name, path in produced:
        fmt = path.suffix.lstrip(".")
        outputs.append(
            # One file id per file: the CDN maps a file id to exactly one file.
            OutputFile(name, fmt, new_file_id(), path, file_sha256(path), path.stat().st_size)
        )
    return outputs


class Processor:
    """Schedules every task's targets and fills in their outcome."""

    def __init__(self, rt: Runtime, on_terminal: Callable[[Task, Target], None]) -> None:
        self._rt = rt
        self._on_terminal = on_terminal
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, rt.config.dsp_workers),
            thread_name_prefix="audioshake-emulator-dsp",
        )
        self._running: set[asyncio.Task[None]] = set()
        self._jobs: dict[Hashable, asyncio.Future[list[OutputFile]]] = {}
        self._probes: dict[str, asyncio.Future[dsp.AudioInfo]] = {}
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        """Start processing ``task`` in the background."""
        if self._closed:
            raise RuntimeError("emulator is shutting down")
        runner = asyncio.get_running_loop().create_task(
            self._run(task), name=f"audioshake-emulator-task-{task.id}"
        )
        self._running.add(runner)
        runner.add_done_callback(self._running.discard)

    @property
    def busy(self) -> int:
        """Number of tasks still being processed."""
        return len(self._running)

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no task is processing; ``TimeoutError`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._running:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._running)} task(s) still processing")
            await asyncio.wait(set(self._running), timeout=remaining)

    async def aclose(self) -> None:
        """Cancel all processing and stop the worker threads."""
        self._closed = True
        for runner in list(self._running):
            runner.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        futures: list[asyncio.Future[Any]] = [*self._jobs.values(), *self._probes.values()]
        for fut in futures:
            if fut.done():
                if not fut.cancelled():
                    fut.exception()  # mark retrieved: no "never retrieved" warnings
            else:
                fut.cancel()
        self._jobs.clear()
        self._probes.clear()
        # Waiting matters: a job still writing into the work dir would race its removal.
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- one task ------------------------------------------------------------------------
    async def _run(self, task: Task) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        source = await self._resolve_source(task)
        pending: list[tuple[Target, Job | dsp.DspError]] = []
        for target in task.targets:
            pending.append((target, await self._prepare(task, target, source)))
        pending.sort(key=lambda item: item[0].due)
        for target, job in pending:
            wait = started + target.due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if isinstance(job, dsp.DspError):
                self._fail(task, target, job.code, str(job), source)
                continue
            results = await job
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if isinstance(failure, dsp.DspError):
                self._fail(task, target, failure.code, str(failure), source)
            elif failure is not None:  # a bug in the stand-in must not kill the task
                self._fail(task, target, 500, f"emulator internal error: {failure!r}", source)
            else:
                outputs = [
                    o for group in results if not isinstance(group, BaseException) for o in group
                ]
                self._complete(task, target, outputs, source)

    def _finish(self, task: Task, target: Target) -> None:
        if task.done and task.completed_at is None:
            task.completed_at = self._rt.clock()
        self._on_terminal(task, target)

    def _fail(self, task: Task, target: Target, code: int, message: str, source: Source) -> None:
        target.status = ERROR
        target.error = {"code": code, "message": message}
        if source.info is not None:
            target.duration = round(source.info.duration, 2)
        self._finish(task, target)

    def _complete(
        self, task: Task, target: Target, outputs: list[OutputFile], source: Source
    ) -> None:
        assert source.info is not None
        spec = CATALOG[target.model]
        seen: set[str] = set()
        unique = []
        for out in outputs:
            if out.filename not in seen:  # duplicate formats in a request yield one file
                seen.add(out.filename)
                unique.append(out)
                self._rt.files.add(
                    out.file_id, FileEntry(out.path, out.filename, content_type_for(out.filename))
                )
        duration = source.info.duration
        cost = spec.price(target.variant) * billed_minutes(duration)
        target.outputs = unique
        target.duration = round(duration, 2)
        target.cost = int(cost) if float(cost).is_integer() else cost
        target.status = COMPLETED
        cfg = self._rt.config
        if cfg.credits is not None:
            self._rt.config = cfg.evolve(credits=cfg.credits - cost)
        self._finish(task, target)

    # --- sources -------------------------------------------------------------------------
    async def _resolve_source(self, task: Task) -> Source:
        if task.asset_id is not None:
            asset = self._rt.store.assets.get(task.asset_id)
            if asset is None or not asset.path.exists():
                return Source(
                    "missing", error=dsp.DspError("source asset expired before processing")
                )
            key, path, fmt = f"asset:{asset.id}", asset.path, asset.format
        else:
            assert task.url is not None
            try:
                key, path, fmt = await self._fetch_source(task)
            except dsp.DspError as exc:
                return Source("unfetchable", error=exc)
        probe = self._probes.get(key)
        if probe is None:
            probe = asyncio.get_running_loop().run_in_executor(self._executor, dsp.probe, path, fmt)
            self._probes[key] = probe
        try:
            info = await asyncio.shield(probe)
        except dsp.DspError as exc:
            return Source(key, path, fmt, error=exc)
        return Source(key, path, fmt, info=info)

    async def _fetch(self, url: str, dest: Path, limit: int | None) -> tuple[str, str]:
        """Stream ``url`` (loopback only) to ``dest``; returns (sha256, content type)."""
        if not is_loopback_url(url):
            raise dsp.DspError(
                "emulator does not fetch URLs outside this machine (only loopback hosts such as "
                "its own CDN links); upload the file with POST /assets instead"
            )
        http = self._rt.http
        assert http is not None
        digest = hashlib.sha256()
        size = 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            async with http.get(url) as resp:
                if resp.status != 200:
                    raise dsp.DspError(f"could not fetch {url}: HTTP {resp.status}")
                async with aiofiles.open(dest, "wb") as fh:
                    async for chunk in resp.content.iter_chunked(FETCH_CHUNK):
                        size += len(chunk)
                        if limit is not None and size > limit:
                            raise dsp.DspError(f"{url} is larger than {limit} bytes")
                        digest.update(chunk)
                        await fh.write(chunk)
                content_type = resp.headers.get("Content-Type", "")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise dsp.DspError(f"could not fetch {url}: {exc!r}") from exc
        return digest.hexdigest(), content_type

    async def _fetch_source(self, task: Task) -> tuple[str, Path, str]:
        assert task.url is not None
        name = Path(yarl.URL(task.url).path).name or "source"
        dest = self._rt.workdir / "sources" / task.id / name
        digest, content_type = await self._fetch(task.url, dest, None)
        fmt = format_of(name, content_type) or ""
        return f"sha256:{digest}:{fmt}", dest, fmt

    async def _transcript(self, target: Target) -> tuple[str, list[list[str]]] | None:
        """The alignment transcript as (cache key, lines), ``None`` when none was given."""
        if target.transcript_asset_id is not None:
            asset = self._rt.store.assets.get(target.transcript_asset_id)
            if asset is None or not asset.path.exists():
                raise dsp.DspError("transcript asset expired before processing")
            if asset.format not in ("txt", "json") or asset.size > MAX_TRANSCRIPT_BYTES:
                raise dsp.DecodeError("transcript must be a .txt or .json file up to 1 MiB")
            async with aiofiles.open(asset.path, "rb") as fh:
                raw = await fh.read()
            fmt = asset.format
        elif target.transcript_url is not None:
            dest = self._rt.workdir / "transcripts" / target.id
            _, content_type = await self._fetch(target.transcript_url, dest, MAX_TRANSCRIPT_BYTES)
            async with aiofiles.open(dest, "rb") as fh:
                raw = await fh.read()
            is_json = "json" in content_type or target.transcript_url.split("?")[0].endswith(
                ".json"
            )
            fmt = "json" if is_json else "txt"
        else:
            return None
        text = raw.decode("utf-8", errors="replace")
        return hashlib.sha256(raw).hexdigest(), parse_transcript(text, fmt)

    # --- jobs ----------------------------------------------------------------------------
    async def _prepare(self, task: Task, target: Target, source: Source) -> Job | dsp.DspError:
        """Start the target's jobs now (they run while it waits), or say why it fails."""
        if target.forced_error is not None:
            return dsp.DspError(target.forced_error)
        if source.error is not None:
            return source.error
        assert source.info is not None and source.path is not None
        spec = CATALOG[target.model]
        if source.info.duration > spec.max_duration:
            error = dsp.DspError(
                f"input is {source.info.duration:.0f} s long; {spec.id} accepts at most "
                f"{spec.max_duration} s"
            )
            error.code = 413
            return error
        transcript = None
        if spec.accepts_transcript:
            try:
                transcript = await self._transcript(target)
            except dsp.DspError as exc:
                return exc
        jobs = [
            self._job(spec, target, source, fmt, transcript)
            for fmt in dict.fromkeys(target.formats)
        ]
        # Shielded: cancelling one task must not cancel a job other tasks share.
        # return_exceptions: every failure gets retrieved, so none is reported as "never
        # retrieved" when two formats fail at once.
        return asyncio.gather(*(asyncio.shield(j) for j in jobs), return_exceptions=True)

    def _job(
        self,
        spec: ModelSpec,
        target: Target,
        source: Source,
        fmt: str,
        transcript: tuple[str, list[list[str]]] | None,
    ) -> asyncio.Future[list[OutputFile]]:
        assert source.info is not None
        assert source.path is not None
        key: Hashable
        render: Renderer
        if spec.kind == "audio":
            residual = bool(target.residual)
            key = (source.key, spec.id, residual, fmt)
            render = functools.partial(
                dsp.render_stems, source.path, source.fmt, spec.id, residual, fmt
            )
        elif spec.kind == "detection":
            key = (source.key, spec.id, fmt)
            render = functools.partial(dsp.render_music_detection, source.path, source.fmt, fmt)
        else:
            lines = transcript[1] if transcript else None
            key = (source.key, spec.id, target.language, transcript and transcript[0], fmt)
            render = functools.partial(
                render_transcript, spec.id, source.info.duration, target.language, lines, fmt
            )
        job = self._jobs.get(key)
        if job is None:
            out_dir = self._rt.workdir / "outputs" / new_file_id()
            job = asyncio.get_running_loop().run_in_executor(
                self._executor, _produce_job, render, out_dir
            )
            self._jobs[key] = job
        return job
