"""Runs Music.AI jobs: ``QUEUED -> STARTED -> SUCCEEDED | FAILED`` with real result files.

The work (decoding, the DSP stand-in, the tempo) runs in a worker-thread pool while the job
"processes", so ``delay`` is the processing time. Renders are cached by the input's content
and the workflow, as shared futures: a thousand jobs on one file render it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from .. import dsp
from ..files import FileEntry, content_type_for, new_file_id
from ..http_common import is_loopback_url
from .state import CUSTOM_STORAGE, ERROR_TITLES, FAILED, STARTED, SUCCEEDED, Job, MusicAIState
from .workflows import render_outputs

Render = asyncio.Future[tuple[list[Path], dict[str, str]]]


class JobFailure(Exception):
    """A job ends FAILED with this documented code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class JobRunner:
    """One background task per job, and the thread pool and render cache they share."""

    def __init__(self, state: MusicAIState) -> None:
        self._state = state
        self._renders: dict[tuple[str, str], Render] = {}
        self._executor: ThreadPoolExecutor | None = None

    def open(self, workers: int) -> None:
        """Start the worker threads (at emulator start)."""
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="musicai-emulator-dsp"
        )

    def start(self, job: Job) -> None:
        """Process ``job`` in the background."""
        job.runner = asyncio.get_running_loop().create_task(
            self._process(job), name=f"musicai-emulator-job-{job.id}"
        )

    async def aclose(self) -> None:
        """Cancel every job, drop the render cache, stop the worker threads."""
        runners = [job.runner for job in self._state.jobs.values() if job.runner is not None]
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

    async def _process(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        begun = loop.time()
        cfg = self._state.config
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
                raise JobFailure(code, f"Emulated failure ({ERROR_TITLES.get(code, code)})")
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
                self._state.files[file_id] = FileEntry(path, name, content_type_for("x.wav"))
                result[key] = ("file", file_id, name)
            for key, value in values.items():
                result[key] = ("value", value)
            job.result = result
            job.status = SUCCEEDED
        except JobFailure as failure:
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

    async def _outputs(self, job: Job) -> tuple[list[Path], dict[str, str]]:
        path, key = await self._input_of(job)
        cache_key = (key, job.workflow.slug)
        future = self._renders.get(cache_key)
        if future is None:
            assert self._executor is not None
            out_dir = self._state.running() / "outputs" / new_file_id()
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, render_outputs, job.workflow, path, out_dir
            )
            self._renders[cache_key] = future
        try:
            # Shielded: a job deleted mid-render must not cancel a render other jobs share.
            return await asyncio.shield(future)
        except dsp.DspError as exc:
            raise JobFailure("BAD_INPUT", f"Invalid input: {exc}") from None

    async def _input_of(self, job: Job) -> tuple[Path, str]:
        """The input file and a cache key of its content."""
        state = self._state
        url = str(job.params["inputUrl"])
        parts = urlsplit(url)
        storage = urlsplit(state.storage_url)
        if parts.scheme == storage.scheme and parts.netloc == storage.netloc:
            segments = parts.path.split("/")
            query = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
            if len(segments) != 4 or segments[1] != "files":
                raise JobFailure("BAD_INPUT", "File not found.")
            file_id, name = segments[2], unquote(segments[3])
            problem = state.get_signer.check(
                file_id, name, query.get("expires", ""), query.get("sig", ""), time.time()
            )
            if problem is not None:
                raise JobFailure("BAD_INPUT", f"Input URL refused: {problem}")
            blob = state.blobs.get(file_id)
            if blob is None:
                raise JobFailure("BAD_INPUT", "File not found: nothing was uploaded to this URL.")
            return blob.path, f"sha256:{blob.sha256}"
        if not is_loopback_url(url):
            raise JobFailure(
                "TIMEOUT", "Timeout reading the input: the emulator fetches loopback URLs only"
            )
        dest = state.running() / "inputs" / job.id
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        assert state.http is not None
        try:
            async with state.http.get(url, ssl=False) as response:
                if response.status != 200:
                    raise JobFailure("BAD_INPUT", f"File not found (HTTP {response.status}).")
                with open(dest, "wb") as handle:  # noqa: ASYNC230 - small test inputs
                    async for chunk in response.content.iter_chunked(256 * 1024):
                        digest.update(chunk)
                        handle.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise JobFailure(
                "TIMEOUT", f"Timeout reading the input ({type(exc).__name__})"
            ) from None
        return dest, f"sha256:{digest.hexdigest()}"

    async def _copy_out(self, path: Path, url: str) -> None:
        """PUT one result to a ``copyResultsTo`` URL (loopback only)."""
        if not is_loopback_url(url):
            raise JobFailure(
                "INTERNAL_ERROR", "copyResultsTo: the emulator writes to loopback only"
            )
        http = self._state.http
        assert http is not None
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, path.read_bytes)
        try:
            async with http.put(url, data=data, ssl=False) as response:
                if response.status // 100 != 2:
                    raise JobFailure("INTERNAL_ERROR", f"copyResultsTo answered {response.status}")
        except aiohttp.ClientError as exc:
            raise JobFailure("INTERNAL_ERROR", f"copyResultsTo failed: {exc!r}") from None
