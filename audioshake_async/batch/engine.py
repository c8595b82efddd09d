"""The concurrent batch engine: a catalog of files or URLs in, stems on disk out.

Stages, each with its own bound, joined by bounded anyio memory streams (so a slow stage holds
back the ones before it and a million-item input is read lazily):

    admit -> upload (4) -> create (16) -> watch (<= max_in_flight tasks) -> download (8) -> results

- admit: stat the input, consult the journal, decide where the item enters (skip when done,
  watch when its task exists, create when a fresh asset exists, else upload);
- upload: stream the file to ``/assets``;
- create: write an intent with a client token (carried in ``metadata``) to the journal, then
  ``POST /tasks``; an ambiguous failure is resolved by finding the token among recent tasks
  before creating again, so no work is billed twice;
- watch: one loop refreshes every task in flight through the client's rate limiter, with
  per-task backoff, by ``GET /tasks`` pages when that costs fewer requests than one
  ``GET /tasks/{id}`` each; each target's outputs go to download as soon as it completes;
- download: stream each output to ``<out_dir>/<input stem>/<name>.<format>`` atomically.

One item's failure is recorded and reported as a result; it never stops the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import math
import os
import pathlib
import random
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any

import anyio
import anyio.to_thread
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import errors
from ..core.files import safe_filename
from ..core.http import PollPolicy
from ..models import Output, Target, Task, merge_task_snapshot
from .events import (
    BatchEvent,
    BatchResult,
    FileWritten,
    ItemDone,
    ItemFailed,
    ItemQueued,
    ItemSkipped,
    ProgressHook,
    TargetDone,
    TaskCreated,
    Uploaded,
    UploadProgress,
)
from .journal import AsyncJournal, ItemRecord, Journal, OutputRecord, SqliteJournal
from .seam import BatchProvider, Hints, SupportsBatch

__all__ = ["BatchOptions", "run_batch", "targets_signature"]

logger = logging.getLogger("audioshake_async.batch")

HASH_CHUNK = 1 << 20
#: Inputs taken per worker-thread hop from a plain (possibly blocking) iterable.
INPUT_CHUNK = 256
#: Task creation times may be skewed from this machine's clock by up to this much.
CLOCK_SKEW = 3600.0
#: The most ``GET /tasks`` pages a token search reads (100 000 tasks).
MAX_RECONCILE_PAGES = 1000
#: Errors after which reading a task again cannot help.
_REFUSED = (errors.AuthenticationError, errors.PermissionDeniedError, errors.BadRequestError)


@attrs.frozen
class BatchOptions:
    """Tuning of a batch; the defaults suit the documented 60 requests/s account limit."""

    upload_concurrency: int = 4
    create_concurrency: int = 16
    download_concurrency: int = 8
    #: Tasks created and not yet finished, at most (bounds memory and open work).
    max_in_flight: int = 1000
    #: Seconds an item may wait for its task; None waits as long as it takes.
    task_timeout: float | None = None
    poll: PollPolicy | None = None
    #: Extra fields for the task ``metadata`` (a JSON object that also carries the token).
    metadata: Mapping[str, Any] | None = None
    #: Seconds after which an uploaded source is uploaded again; None: the provider's source
    #: lifetime less a margin (two hours of the Tasks API's 72).
    asset_max_age: float | None = None
    #: Pages of ``GET /tasks`` searched for a token after an ambiguous create when the intent
    #: time is unknown; with it, the search goes back to an hour before the intent.
    reconcile_pages: int = 10
    #: ``POST /tasks`` attempts per item when each ends ambiguously and the token is not found.
    create_attempts: int = 4
    #: Refresh many tasks through ``GET /tasks`` pages when cheaper than one GET each.
    list_refresh: bool = True
    #: Requests at once while refreshing tasks.
    poll_concurrency: int = 16
    #: Compute SHA-256 of inputs and outputs for the journal.
    checksum: bool = True
    #: Deliveries drive the waiting: each one triggers one confirming GET; polling drops to
    #: a slow safety poll (deliveries can be lost).
    webhooks: Hints | None = None
    #: Seconds between safety polls of a task while ``webhooks`` drive the waiting.
    safety_poll: float = 180.0
    #: Seconds a task may go without one successful read (outage, wrong provider) before its
    #: item fails; a refusal (401, 403, 400) fails it at once. A rerun resumes it.
    unreachable_timeout: float = 3600.0
    #: Items an earlier run recorded as failed get a new task (billed again) instead of
    #: re-reading the failed one; outputs already written are kept.
    retry_failed: bool = False

    def __attrs_post_init__(self) -> None:
        for name in (
            "upload_concurrency",
            "create_concurrency",
            "download_concurrency",
            "max_in_flight",
            "create_attempts",
            "poll_concurrency",
        ):
            if getattr(self, name) < 1:
                raise errors.ValidationError(f"{name} must be at least 1")
        if self.task_timeout is not None and self.task_timeout <= 0:
            raise errors.ValidationError("task_timeout must be positive")


def targets_signature(targets: Sequence[Target]) -> str:
    """A stable text identity of a target list (the journal keys items by input and this)."""
    from .._convert import unstructure

    return json.dumps([unstructure(t) for t in targets], sort_keys=True, separators=(",", ":"))


def journal_key(provider: BatchProvider, targets: Sequence[Target]) -> str:
    """The journal's key for a target list on one provider.

    Task ids of one provider mean nothing to another: a journal shared by a Tasks API run and a
    legacy run must not resume one's tasks through the other: each provider names its own
    namespace (an empty one keeps the bare signature).
    """
    signature = targets_signature(targets)
    namespace = provider.journal_namespace
    return f"{namespace}:{signature}" if namespace else signature


def _is_url(value: str) -> bool:
    return value.startswith(("https://", "http://"))


def _stem_of(source: str, is_url: bool) -> str:
    if is_url:
        tail = source.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        stem = tail.rsplit(".", 1)[0] if "." in tail else tail
        return safe_filename(
            stem, fallback="url-" + hashlib.sha256(source.encode()).hexdigest()[:8]
        )
    return safe_filename(pathlib.Path(source).stem, fallback="input")


def _upload_name(filename: str) -> str:
    """``song.wav`` -> ``song.ab12cd34ef.wav``: unique, same extension (the type)."""
    stem, dot, ext = filename.rpartition(".")
    tag = uuid.uuid4().hex[:10]
    return f"{stem}.{tag}.{ext}" if dot and stem else f"{filename}.{tag}"


def _hash_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@attrs.define(eq=False)
class _Item:
    """One input on its way through the pipeline."""

    display: str
    source: str
    is_url: bool
    directory: pathlib.Path
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    asset_id: str | None = None
    upload_name: str | None = None
    token: str | None = None
    task_id: str | None = None
    task: Task | None = None
    known_outputs: dict[str, OutputRecord] = attrs.Factory(dict)
    used_names: set[str] = attrs.Factory(set)
    dispatched: set[tuple[str, str, str]] = attrs.Factory(set)
    reported_targets: set[str] = attrs.Factory(set)
    files: list[pathlib.Path] = attrs.Factory(list)
    problems: list[str] = attrs.Factory(list)
    pending_downloads: int = 0
    task_done: bool = False
    finished: bool = False
    watch_started: float = 0.0
    next_due: float = 0.0
    unsubscribe: Callable[[], None] | None = None
    polls: int = 0
    reuploaded: bool = False
    #: The task came from the journal (an earlier run), not from this run's create.
    resumed: bool = False
    recreated: bool = False
    #: Epoch seconds of the create intent: how far back a token search must look.
    intent_at: float | None = None
    last_read_ok: float = 0.0
    #: A delivery arrived since the last read began: read again at once, not at the next poll.
    hinted: bool = False


@attrs.define(eq=False)
class _DownloadJob:
    item: _Item
    output: Output
    path: pathlib.Path


class _Pipeline:
    """State shared by the stages of one batch run."""

    def __init__(
        self,
        provider: BatchProvider,
        targets: tuple[Target, ...],
        out_dir: pathlib.Path,
        journal: AsyncJournal,
        progress: ProgressHook | None,
        options: BatchOptions,
        results: MemoryObjectSendStream[BatchResult],
    ) -> None:
        self.provider = provider
        self.targets = targets
        self.signature = journal_key(provider, targets)
        self.out_dir = out_dir
        self.journal = journal
        self.progress = progress
        self.options = options
        self.results = results
        self.poll = options.poll or provider.poll
        self.in_flight = anyio.Semaphore(options.max_in_flight)
        self.watcher = _Watcher(self)
        self.cwd = os.getcwd()
        # Sources between admission and their result (at most max_in_flight of them): the same
        # file listed twice must not be uploaded, billed and written twice at once.
        self.active: set[str] = set()
        lifetime = provider.source_lifetime
        self.asset_max_age = lifetime - min(7200.0, lifetime / 10)
        if options.asset_max_age is not None:
            self.asset_max_age = min(options.asset_max_age, self.asset_max_age)

    # ------------------------------------------------------------------ plumbing

    def emit(self, event: BatchEvent) -> None:
        if self.progress is None:
            return
        try:
            self.progress(event)
        except Exception:
            # A broken progress display must not break the batch.
            logger.exception("progress hook raised on %s", type(event).__name__)

    async def fail(self, item: _Item, error: BaseException | str) -> None:
        """Record and report the item as failed, with what it did write."""
        message = error if isinstance(error, str) else (str(error) or type(error).__name__)
        item.problems.append(message)
        item.task_done = True
        await self.maybe_finish(item)

    async def maybe_finish(self, item: _Item) -> None:
        """Finish the item once its task is done and no download is pending."""
        if item.finished or not item.task_done or item.pending_downloads:
            return
        item.finished = True
        self.active.discard(item.source)
        task = item.task
        if task is not None:
            for target in task.failed_targets:
                detail = target.error.message if target.error and target.error.message else ""
                item.problems.append(
                    f"target {target.model} failed" + (f": {detail}" if detail else "")
                )
            item.problems.extend(_missing_formats(task))
        status = "failed" if item.problems else "done"
        error = "; ".join(item.problems) or None
        with anyio.CancelScope(shield=True):
            await self.journal.call(
                self.journal.journal.finish, item.source, self.signature, status, error
            )
        files = tuple(item.files)
        if status == "done":
            self.emit(ItemDone(item.display, files))
        else:
            self.emit(ItemFailed(item.display, error or "failed"))
        await self.results.send(
            BatchResult(item.display, status, task, files, error, item.directory)
        )
        self.in_flight.release()

    def metadata_for(self, item: _Item, token: str) -> str:
        extra = dict(self.options.metadata or {})
        payload: dict[str, Any] = {**extra, "client_token": token}
        name = pathlib.PurePosixPath(item.display).name if not item.is_url else item.display
        payload["input"] = name[:512]
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        if len(text) > self.provider.metadata_limit:
            text = json.dumps({"client_token": token}, separators=(",", ":"))
        return text

    # ------------------------------------------------------------------ admit

    async def admit(
        self,
        raw: str | os.PathLike[str],
        upload: MemoryObjectSendStream[_Item],
        create: MemoryObjectSendStream[_Item],
    ) -> None:
        """Decide where one input enters the pipeline (or report it skipped or failed)."""
        display = os.fspath(raw)
        self.emit(ItemQueued(display))
        is_url = isinstance(raw, str) and _is_url(raw)
        # Pure string work (the working directory was read once): no blocking call here.
        source = display if is_url else os.path.normpath(os.path.join(self.cwd, display))  # noqa: ASYNC240
        if source in self.active:
            self.emit(ItemSkipped(display))
            await self.results.send(
                BatchResult(display, "skipped", error="the same input is already in this batch")
            )
            self.in_flight.release()
            return
        self.active.add(source)
        stem = _stem_of(source, is_url)
        journal = self.journal.journal
        dirname = await self.journal.call(journal.claim_dir, source, stem)
        item = _Item(display, source, is_url, self.out_dir / dirname)
        try:
            record = await self.journal.call(journal.lookup, source, self.signature)
            if not is_url:
                size = await self.provider.check_source(pathlib.Path(source))
                stat = await anyio.to_thread.run_sync(os.stat, source)
                item.size, item.mtime_ns = size, stat.st_mtime_ns
                record = await self._check_content(item, record)
            elif record is None:
                await self.journal.call(journal.reset, source, self.signature, None, None, None)
        except errors.AudioShakeError as exc:
            await self.fail(item, exc)
            return
        except OSError as exc:
            await self.fail(item, f"{display}: {exc.strerror or exc}")
            return
        if record is not None:
            item.known_outputs = {o.filename: o for o in record.outputs}
            item.token, item.task_id = record.token, record.task_id
            item.upload_name = record.upload_name
            if record.status == "done" and await self._outputs_present(item):
                item.finished = True
                self.active.discard(source)
                item.files = [item.directory / name for name in sorted(item.known_outputs)]
                self.emit(ItemSkipped(display))
                await self.results.send(
                    BatchResult(display, "skipped", None, tuple(item.files), None, item.directory)
                )
                self.in_flight.release()
                return
            fresh = (
                record.asset_uploaded_at is not None
                and time.time() - record.asset_uploaded_at < self.asset_max_age
            )
            if record.task_id and self.options.retry_failed and record.status == "failed":
                # Asked for explicitly: the failed task is left behind and new work created.
                await self.journal.call(journal.record_task, source, self.signature, None)
                record = attrs.evolve(record, task_id=None, token=None)
                item.token = item.task_id = None
            if record.task_id:
                item.resumed = True
                item.asset_id = record.asset_id if fresh else None
                self.emit(TaskCreated(display, record.task_id, resumed=True))
                await self.watcher.add(item)
                return
            if record.token:
                item.intent_at = record.updated_at
            if record.asset_id and fresh:
                item.asset_id = record.asset_id
                self.emit(Uploaded(display, record.asset_id, item.size or 0, reused=True))
                await create.send(item)
                return
        if is_url:
            await create.send(item)
        else:
            await upload.send(item)

    async def _check_content(self, item: _Item, record: ItemRecord | None) -> ItemRecord | None:
        """Compare the file with the journal; a changed file starts over (None)."""
        journal = self.journal.journal
        if record is not None and record.size == item.size and record.mtime_ns == item.mtime_ns:
            item.sha256 = record.sha256
            return record
        if record is not None and record.sha256 and self.options.checksum:
            digest = await anyio.to_thread.run_sync(_hash_file, pathlib.Path(item.source))
            if digest == record.sha256:
                assert item.size is not None and item.mtime_ns is not None
                await self.journal.call(
                    journal.touch_source, item.source, self.signature, item.size, item.mtime_ns
                )
                item.sha256 = digest
                return record
            item.sha256 = digest
        await self.journal.call(
            journal.reset, item.source, self.signature, item.size, item.mtime_ns, item.sha256
        )
        return None

    async def _outputs_present(self, item: _Item) -> bool:
        def check() -> bool:
            for name, output in item.known_outputs.items():
                path = item.directory / name
                try:
                    if path.stat().st_size != output.size:
                        return False
                except OSError:
                    return False
            return bool(item.known_outputs)

        return await anyio.to_thread.run_sync(check)

    # ------------------------------------------------------------------ upload

    async def upload_worker(
        self, inbox: MemoryObjectReceiveStream[_Item], create: MemoryObjectSendStream[_Item]
    ) -> None:
        async with inbox, create:
            async for item in inbox:
                try:
                    await self.upload(item)
                except (errors.AudioShakeError, OSError) as exc:
                    await self.fail(item, exc)
                    continue
                await create.send(item)

    async def upload(self, item: _Item) -> None:
        """Upload the item's file and record the asset."""
        journal = self.journal.journal
        path = pathlib.Path(item.source)
        if item.sha256 is None and self.options.checksum:
            item.sha256 = await anyio.to_thread.run_sync(_hash_file, path)
        display = item.display

        def on_progress(sent: int, total: int) -> None:
            self.emit(UploadProgress(display, sent, total))

        if item.upload_name is not None:
            # An earlier run was stopped during this upload: it may have completed.
            found = await self.provider.find_upload(item.upload_name)
            if found is not None:
                item.asset_id = found
                await self.journal.call(
                    journal.record_asset,
                    item.source,
                    self.signature,
                    found,
                    time.time(),
                    item.sha256,
                )
                self.emit(Uploaded(display, found, item.size or 0, reused=True))
                return
        item.upload_name = _upload_name(path.name)
        await self.journal.call(
            journal.record_upload_intent, item.source, self.signature, item.upload_name
        )
        asset_id = await self.provider.upload(path, item.upload_name, on_progress)
        item.asset_id = asset_id
        await self.journal.call(
            journal.record_asset, item.source, self.signature, asset_id, time.time(), item.sha256
        )
        self.emit(Uploaded(display, asset_id, item.size or 0))

    # ------------------------------------------------------------------ create

    async def create_worker(self, inbox: MemoryObjectReceiveStream[_Item]) -> None:
        async with inbox:
            async for item in inbox:
                try:
                    await self.create(item)
                except (errors.AudioShakeError, OSError) as exc:
                    await self.fail(item, exc)
                    continue
                await self.watcher.add(item)

    async def create(self, item: _Item) -> None:
        """Create the item's task exactly once, recovering it by token after ambiguous ends."""
        journal = self.journal.journal
        if item.token:
            # An intent from an earlier run: the task may exist though its id was never saved.
            found = await self.find_by_token(item.token, since=item.intent_at)
            if found is not None:
                await self._adopt(item, found, recovered=True)
                return
        token = item.token or uuid.uuid4().hex
        item.token = token
        if item.intent_at is None:
            item.intent_at = time.time()
        await self.journal.call(journal.record_intent, item.source, self.signature, token)
        metadata = self.metadata_for(item, token)
        last_error: BaseException | None = None
        for attempt in range(1, self.options.create_attempts + 1):
            try:
                task = await self.provider.create(
                    source=None if item.is_url else item.asset_id,
                    url=item.source if item.is_url else None,
                    targets=self.targets,
                    metadata=metadata,
                )
            except (errors.APIConnectionError, errors.ServerError, errors.RateLimitError) as exc:
                if isinstance(exc, errors.AmbiguousRequestError) and not (
                    self.provider.supports_listing
                ):
                    # Sent, unanswered, and no listing to look it up: a retry could bill the
                    # work twice. Reported instead; a rerun (the user's call) tries again.
                    raise errors.AmbiguousRequestError(
                        f"{exc}; {self.provider.name} has no listing to check it, so it was not "
                        "retried: look in the dashboard before running this input again"
                    ) from None
                last_error = exc
                logger.info(
                    "create for %s ended ambiguously (%s); looking up its token",
                    item.display,
                    type(exc).__name__,
                )
                found = await self.find_by_token(token, since=item.intent_at)
                if found is not None:
                    await self._adopt(item, found, recovered=True)
                    return
                await anyio.sleep(self.provider.retry.delay(attempt, random.random()))
                continue
            except errors.NotFoundError as exc:
                if item.is_url or item.reuploaded:
                    raise
                # The asset expired or vanished: upload again, once.
                logger.info("asset of %s not found (%s); uploading again", item.display, exc)
                item.reuploaded = True
                item.upload_name = None
                await self.journal.call(
                    journal.record_asset, item.source, self.signature, None, None, None
                )
                await self.upload(item)
                continue
            await self._adopt(item, task, recovered=False)
            return
        raise errors.AudioShakeError(
            f"task creation failed {self.options.create_attempts} times: {last_error}"
        )

    async def _adopt(self, item: _Item, task: Task, *, recovered: bool) -> None:
        item.task_id = task.id
        item.task = task
        await self.journal.call(
            self.journal.journal.record_task, item.source, self.signature, task.id
        )
        self.emit(TaskCreated(item.display, task.id, recovered=recovered))

    async def find_by_token(self, token: str, *, since: float | None = None) -> Task | None:
        """Search recent tasks for one whose metadata carries ``token``.

        With ``since`` (when the create was first attempted), pages are read until they reach
        tasks created well before it; the order of ``GET /tasks`` is not documented, so an
        oldest-first listing is read to its end (both within MAX_RECONCILE_PAGES).
        """
        if not self.provider.supports_listing:
            return None
        cutoff = None if since is None else since - CLOCK_SKEW
        limit = self.options.reconcile_pages if cutoff is None else MAX_RECONCILE_PAGES
        skip = 0
        for _ in range(limit):
            page = await self.provider.page(skip=skip, take=self.provider.page_size)
            for task in page:
                if task.metadata and token in task.metadata and _token_of(task) == token:
                    return task
            if len(page) < self.provider.page_size:
                return None
            if cutoff is not None and _newest_first_and_older_than(page, cutoff):
                return None
            if cutoff is not None and not any(t.created_at for t in page):
                # No creation times to judge by: only the fixed number of pages.
                cutoff, limit = None, self.options.reconcile_pages
            skip += self.provider.page_size
        return None

    async def recreate(self, item: _Item) -> None:
        """The journal's task is gone (404): create it again (uploading again if needed)."""
        try:
            item.recreated = True
            item.task_id, item.task, item.token, item.intent_at = None, None, None, None
            await self.journal.call(
                self.journal.journal.record_task, item.source, self.signature, None
            )
            if not item.is_url and item.asset_id is None:
                await self.upload(item)
            await self.create(item)
        except (errors.AudioShakeError, OSError) as exc:
            await self.fail(item, exc)
            return
        await self.watcher.add(item)

    # ------------------------------------------------------------------ download

    def plan_downloads(self, item: _Item, task: Task) -> list[_DownloadJob]:
        """Download jobs for targets that completed since the last look."""
        jobs = []
        for target in task.targets:
            if target.is_terminal and target.id not in item.reported_targets:
                item.reported_targets.add(target.id)
                self.emit(TargetDone(item.display, task.id, target.id, target.model, target.status))
            if not target.is_completed:
                continue
            for output in target.output:
                key = (target.id, output.name, output.format)
                if key in item.dispatched:
                    continue
                item.dispatched.add(key)
                name = safe_filename(output.name, output.format)
                base, counter = safe_filename(output.name), 2
                while name.lower() in item.used_names:
                    name = safe_filename(f"{base}_{counter}", output.format)
                    counter += 1
                item.used_names.add(name.lower())
                item.pending_downloads += 1
                jobs.append(_DownloadJob(item, output, item.directory / name))
        return jobs

    async def download_worker(self, inbox: MemoryObjectReceiveStream[_DownloadJob]) -> None:
        async with inbox:
            async for job in inbox:
                try:
                    await self.download(job)
                except (errors.AudioShakeError, OSError) as exc:
                    job.item.problems.append(f"{job.path.name}: {exc}")
                job.item.pending_downloads -= 1
                await self.maybe_finish(job.item)

    async def download(self, job: _DownloadJob) -> None:
        """Download one output unless an earlier run already wrote it completely."""
        item = job.item
        known = item.known_outputs.get(job.path.name)
        if known is not None:
            try:
                size = (await anyio.to_thread.run_sync(job.path.stat)).st_size
            except OSError:
                size = -1
            if size == known.size:
                item.files.append(job.path)
                return
        assert item.task is not None
        done = await self.provider.fetch_output(
            item.task, job.output, job.path, checksum=self.options.checksum
        )
        record = OutputRecord(job.path.name, done.size, done.sha256)
        with anyio.CancelScope(shield=True):
            await self.journal.call(
                self.journal.journal.record_output, item.source, self.signature, record
            )
        item.known_outputs[record.filename] = record
        item.files.append(job.path)
        self.emit(FileWritten(item.display, job.path, done.size))


def _newest_first_and_older_than(page: Sequence[Task], cutoff: float) -> bool:
    """True when the page is in newest-first order and its last task predates ``cutoff``."""
    first, last = page[0].created_at, page[-1].created_at
    if first is None or last is None or first < last:
        return False
    return last.timestamp() < cutoff


def _missing_formats(task: Task) -> list[str]:
    """Completed targets that lack an output in a format they list: work not delivered."""
    problems = []
    for target in task.targets:
        if not target.is_completed:
            continue
        delivered = {output.format.lower() for output in target.output}
        # "auto" (a provider's own choice of format) promises no particular one.
        missing = [f for f in target.formats if f.lower() not in delivered and f != "auto"]
        if missing:
            problems.append(
                f"target {target.model} completed without its {', '.join(missing)} output"
            )
    return problems


def _token_of(task: Task) -> str | None:
    try:
        data = json.loads(task.metadata or "")
    except ValueError:
        return None
    token = data.get("client_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


class _Watcher:
    """Refreshes every task in flight from one loop, each on its own backoff schedule."""

    def __init__(self, pipeline: _Pipeline) -> None:
        self.pipeline = pipeline
        self.pending: dict[str, _Item] = {}
        self._schedule: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._wake = anyio.Event()
        self._producers_done = False
        self.downloads: MemoryObjectSendStream[_DownloadJob] | None = None
        self._recreating = 0
        self._group: anyio.abc.TaskGroup | None = None

    async def add(self, item: _Item) -> None:
        """Start watching an item whose task exists."""
        assert item.task_id is not None
        item.watch_started = item.last_read_ok = time.monotonic()
        if item.task is not None:
            # The create response is a snapshot too: nothing is due before the first interval.
            if await self._absorb(item, item.task):
                return
            due = self._next_due(item)
        else:
            due = time.monotonic()
        self.pending[item.task_id] = item
        self._schedule_at(item, due)
        receiver = self.pipeline.options.webhooks
        if receiver is not None:
            task_id = item.task_id
            item.unsubscribe = receiver.subscribe(task_id, lambda _: self.hint(task_id))
        self._wake.set()

    def hint(self, task_id: str) -> None:
        """A delivery says the task changed: confirm it with a GET as soon as possible."""
        item = self.pending.get(task_id)
        if item is None or item.finished:
            return
        # Remembered even when a read is due or in flight: that read may have been answered
        # before this delivery's change, and the next regular read is a safety poll away.
        item.hinted = True
        if item.next_due > time.monotonic():
            self._schedule_at(item, time.monotonic())
            self._wake.set()

    def _interval(self, item: _Item) -> float:
        if self.pipeline.options.webhooks is not None:
            return self.pipeline.options.safety_poll
        return self.pipeline.poll.interval(item.polls + 1, random.random())

    def _leave(self, item: _Item) -> None:
        assert item.task_id is not None
        self.pending.pop(item.task_id, None)
        if item.unsubscribe is not None:
            item.unsubscribe()
            item.unsubscribe = None

    def close(self) -> None:
        """No more items will be added."""
        self._producers_done = True
        self._wake.set()

    def _schedule_at(self, item: _Item, due: float) -> None:
        assert item.task_id is not None
        # Heap entries are never removed; one whose time is not the item's next_due is stale.
        item.next_due = due
        heapq.heappush(self._schedule, (due, next(self._sequence), item.task_id))

    def _pop_until(self, limit: float) -> list[_Item]:
        items = []
        while self._schedule and self._schedule[0][0] <= limit:
            due, _, task_id = heapq.heappop(self._schedule)
            item = self.pending.get(task_id)
            if item is not None and not item.finished and item.next_due == due:
                items.append(item)
        return items

    async def run(self) -> None:
        """Poll until every item is finished and no more will come."""
        assert self.downloads is not None
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                await self._loop()
        finally:
            for item in list(self.pending.values()):
                if item.unsubscribe is not None:
                    item.unsubscribe()

    async def _loop(self) -> None:
        assert self.downloads is not None
        async with self.downloads:
            while True:
                if self._producers_done and not self.pending and not self._recreating:
                    return
                now = time.monotonic()
                if not self._schedule or self._schedule[0][0] > now:
                    self._wake = anyio.Event()
                    delay = self._schedule[0][0] - now if self._schedule else math.inf
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                    continue
                # Tasks due within the next polling interval may ride along on list pages.
                window = self.pipeline.poll.initial_interval
                candidates = self._pop_until(now + window)
                due = [item for item in candidates if item.next_due <= now]
                if self._list_is_cheaper(len(candidates)):
                    await self._refresh(candidates, by_list=True)
                else:
                    for item in candidates:
                        if item.next_due > now:
                            self._schedule_at(item, item.next_due)
                    await self._refresh(due, by_list=False)

    def _start_recreate(self, item: _Item) -> None:
        assert self._group is not None
        self._recreating += 1

        async def run() -> None:
            try:
                await self.pipeline.recreate(item)
            finally:
                self._recreating -= 1
                self._wake.set()

        self._group.start_soon(run)

    def _pages_estimate(self) -> int:
        return math.ceil(len(self.pending) / self.pipeline.provider.page_size) + 1

    def _list_is_cheaper(self, wanted: int) -> bool:
        """A list sweep costs about one request per page of tasks in flight."""
        return (
            self.pipeline.options.list_refresh
            and self.pipeline.provider.supports_listing
            and wanted > 2 * self._pages_estimate()
        )

    async def _refresh(self, due: list[_Item], *, by_list: bool) -> None:
        if not due:
            return
        for item in due:
            item.hinted = False  # a delivery from now on needs a read after this one
        options = self.pipeline.options
        provider = self.pipeline.provider
        snapshots: dict[str, Task] = {}
        if by_list:
            snapshots = await self._refresh_by_list(
                {item.task_id for item in due if item.task_id}, self._pages_estimate()
            )
        missing = [item for item in due if item.task_id not in snapshots]
        limiter = anyio.CapacityLimiter(options.poll_concurrency)
        failures: dict[str, BaseException] = {}

        async def get_one(item: _Item) -> None:
            assert item.task_id is not None
            async with limiter:
                try:
                    snapshots[item.task_id] = await provider.get(item.task_id)
                except errors.AudioShakeError as exc:
                    failures[item.task_id] = exc

        if missing:
            async with anyio.create_task_group() as group:
                for item in missing:
                    group.start_soon(get_one, item)
        refreshed = set()
        for item in due:
            assert item.task_id is not None
            refreshed.add(item.task_id)
            snapshot = snapshots.get(item.task_id)
            if snapshot is not None:
                if await self._absorb(item, snapshot):
                    continue
            else:
                error = failures.get(item.task_id)
                if isinstance(error, errors.NotFoundError):
                    self._leave(item)
                    if item.resumed and not item.recreated:
                        # An earlier run's task is gone and its outputs are missing: the work
                        # was never delivered, so it is created again (once).
                        logger.info(
                            "task %s of %s is gone; creating it again", item.task_id, item.display
                        )
                        self._start_recreate(item)
                    else:
                        await self.pipeline.fail(item, f"task {item.task_id} no longer exists")
                    continue
                if error is not None:
                    logger.info("refresh of task %s failed: %s", item.task_id, error)
                    unreachable = time.monotonic() - item.last_read_ok
                    if isinstance(error, _REFUSED) or (
                        unreachable >= self.pipeline.options.unreachable_timeout
                    ):
                        self._leave(item)
                        await self.pipeline.fail(
                            item, f"task {item.task_id} could not be read: {error}"
                        )
                        continue
            self._reschedule(item)
        # Tasks seen on a page although not due yet count as refreshed too.
        for task_id, snapshot in snapshots.items():
            other = self.pending.get(task_id)
            if other is None or task_id in refreshed or other.finished:
                continue
            if not await self._absorb(other, snapshot):
                self._reschedule(other)

    async def _refresh_by_list(self, wanted: set[str], pages_estimate: int) -> dict[str, Task]:
        found: dict[str, Task] = {}
        page_size = self.pipeline.provider.page_size
        skip = 0
        for _ in range(max(3, 2 * pages_estimate)):
            try:
                page = await self.pipeline.provider.page(skip=skip, take=page_size)
            except errors.AudioShakeError as exc:
                logger.info("list refresh failed (%s); falling back to single gets", exc)
                break
            for task in page:
                if task.id in self.pending:
                    found[task.id] = task
            if wanted <= found.keys() or len(page) < page_size:
                break
            skip += page_size
        return found

    def _next_due(self, item: _Item) -> float:
        """When to read the task next: its interval, but never past its timeout."""
        delay = self._interval(item)
        timeout = self.pipeline.options.task_timeout
        if timeout is not None:
            remaining = item.watch_started + timeout - time.monotonic()
            delay = max(0.0, min(delay, remaining))
        return time.monotonic() + delay

    def _reschedule(self, item: _Item) -> None:
        assert item.task_id is not None
        item.polls += 1
        self._schedule_at(item, time.monotonic() if item.hinted else self._next_due(item))

    async def _absorb(self, item: _Item, snapshot: Task) -> bool:
        """Take in a snapshot; dispatch new outputs; True when the item left the watch."""
        assert item.task_id is not None
        item.last_read_ok = time.monotonic()
        item.task = merge_task_snapshot(
            item.task if item.task is not None and item.task.id == snapshot.id else None, snapshot
        )
        jobs = self.pipeline.plan_downloads(item, item.task)
        for job in jobs:
            assert self.downloads is not None
            await self.downloads.send(job)
        if item.task.is_done:
            self._leave(item)
            item.task_done = True
            await self.pipeline.maybe_finish(item)
            return True
        timeout = self.pipeline.options.task_timeout
        if timeout is not None and time.monotonic() - item.watch_started >= timeout:
            self._leave(item)
            await self.pipeline.fail(
                item, errors.TaskTimeoutError(item.task_id, timeout, item.task)
            )
            return True
        return False


async def _iterate(inputs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(inputs, AsyncIterable):
        async for value in inputs:
            yield value
    elif isinstance(inputs, (list, tuple)):
        for value in inputs:
            yield value
    else:
        # Any other iterable may block on each step (os.walk, a file, a database cursor):
        # it is advanced in a worker thread, a bounded chunk at a time.
        iterator = iter(inputs)
        while chunk := await anyio.to_thread.run_sync(
            lambda: list(itertools.islice(iterator, INPUT_CHUNK))
        ):
            for value in chunk:
                yield value


async def _run_pipeline(pipeline: _Pipeline, inputs: Iterable[Any] | AsyncIterable[Any]) -> None:
    options = pipeline.options
    upload_send, upload_recv = anyio.create_memory_object_stream[_Item](options.upload_concurrency)
    create_send, create_recv = anyio.create_memory_object_stream[_Item](options.create_concurrency)
    download_send, download_recv = anyio.create_memory_object_stream[_DownloadJob](
        options.download_concurrency * 2
    )

    async def feed() -> None:
        async with upload_send, create_send:
            async for raw in _iterate(inputs):
                await pipeline.in_flight.acquire()
                await pipeline.admit(raw, upload_send, create_send)

    async def creators(inboxes: list[MemoryObjectReceiveStream[_Item]]) -> None:
        async with anyio.create_task_group() as inner:
            for inbox in inboxes:
                inner.start_soon(pipeline.create_worker, inbox)
        # Every task is handed over: the watcher may stop once the last one finishes.
        pipeline.watcher.close()

    pipeline.watcher.downloads = download_send
    async with pipeline.results, anyio.create_task_group() as group:  # noqa: SIM117
        # The original receive ends close as soon as the workers hold their clones.
        async with upload_recv, create_recv, download_recv:
            group.start_soon(feed)
            for _ in range(options.upload_concurrency):
                group.start_soon(pipeline.upload_worker, upload_recv.clone(), create_send.clone())
            group.start_soon(
                creators, [create_recv.clone() for _ in range(options.create_concurrency)]
            )
            group.start_soon(pipeline.watcher.run)
            for _ in range(options.download_concurrency):
                group.start_soon(pipeline.download_worker, download_recv.clone())


async def run_batch(
    client: BatchProvider | SupportsBatch,
    inputs: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
    *,
    targets: Sequence[Target],
    out_dir: str | os.PathLike[str],
    journal: str | os.PathLike[str] | Journal | None = None,
    progress: ProgressHook | None = None,
    options: BatchOptions | None = None,
    **option_values: Any,
) -> AsyncGenerator[BatchResult, None]:
    """Process every input and yield one :class:`BatchResult` per input as each finishes.

    ``client`` is an :class:`~audioshake_async.AudioShake` client or any
    :class:`~audioshake_async.batch.provider.BatchProvider` (legacy Jobs, Music.AI).

    ``journal`` is a path to the SQLite journal (resume and no double billing across runs), a
    :class:`Journal`, or None for a throw-away one. Extra keyword arguments set
    :class:`BatchOptions` fields. Break out early with ``contextlib.aclosing``; the pipeline is
    cancelled cleanly (no partial file under a final name, the journal consistent).
    """
    provider = client.batch_provider() if isinstance(client, SupportsBatch) else client
    checked = provider.check_targets(targets)
    settings = attrs.evolve(options, **option_values) if options else BatchOptions(**option_values)
    directory = pathlib.Path(out_dir)
    owned: SqliteJournal | None = None
    if journal is None or isinstance(journal, (str, os.PathLike)):
        owned = await anyio.to_thread.run_sync(SqliteJournal, journal)
        store: Journal = owned
    else:
        store = journal
    results_send, results_recv = anyio.create_memory_object_stream[BatchResult](64)
    pipeline = _Pipeline(
        provider, checked, directory, AsyncJournal(store), progress, settings, results_send
    )
    # The pipeline runs in its own task, so this generator never yields inside a cancel scope
    # and can be closed from any task.
    runner = asyncio.ensure_future(_run_pipeline(pipeline, inputs))
    try:
        async with results_recv:
            async for result in results_recv:
                yield result
        await runner
    finally:
        if not runner.done():
            runner.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([runner])
            if owned is not None:
                await anyio.to_thread.run_sync(owned.close)
