"""The stages of a batch: admit -> upload -> create (token reconciliation) -> download."""

from __future__ import annotations

import logging
import os
import pathlib
import random
import time
import uuid

import anyio
import anyio.abc
import anyio.to_thread
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import errors
from ..core.http import SEND_GUARD, check_source_url, has_credentials, redact_url, redact_urls
from ..core.sink import DiskSink
from ..core.upload import UploadDigest
from ..models import Target, Task
from ..storage.s3 import S3Object, S3Stores, is_s3_uri
from .events import (
    BatchEvent,
    BatchResult,
    FlowUpdate,
    ItemDone,
    ItemFailed,
    ItemQueued,
    ItemSkipped,
    ProgressHook,
    TaskCreated,
    Uploaded,
    UploadProgress,
)
from .flow import Flow
from .items import (
    DownloadJob,
    Item,
    ItemState,
    Origin,
    check_content,
    failure_fields,
    hash_file,
    is_url,
    missing_formats,
    note_failure,
    stem_of,
    task_metadata,
    unique_upload_name,
)
from .journal import AsyncJournal, journal_key
from .journal_pg_schema import lease_guard
from .options import BatchOptions
from .outputs import OutputStage, open_sink
from .reconcile import find_by_token
from .seam import BatchProvider
from .sources import check_s3_input
from .watcher import Watcher

logger = logging.getLogger("audioshake_async.batch")

#: ``POST /tasks`` answered 429 this many times for one item (each after the transport's own
#: retries, a shrink of the window and a wait for a task to finish) before the item fails: a
#: limit that never lifts.
REFUSALS = 200


class Pipeline:
    """The stages of one batch run and the state they share: admit, upload, create, download."""

    def __init__(
        self,
        provider: BatchProvider,
        targets: tuple[Target, ...],
        out_dir: str | os.PathLike[str],
        journal: AsyncJournal,
        progress: ProgressHook | None,
        options: BatchOptions,
        results: MemoryObjectSendStream[BatchResult],
    ) -> None:
        self.provider = provider
        self.targets = targets
        self.signature = journal_key(provider, targets)
        self.out_dir_arg = out_dir
        self.stores = S3Stores(options.s3)
        self.sink = open_sink(out_dir, self.stores)
        self.outputs = OutputStage(provider, self.sink, options, self.emit)
        # The local root (a disk sink) or the relative one: Item.directory stays a path.
        self.out_dir = self.sink.root if isinstance(self.sink, DiskSink) else pathlib.Path()
        self.journal = journal
        self.progress = progress
        self.options = options
        self.results = results
        self.poll = options.poll or provider.poll
        rate = options.request_rate or getattr(provider, "request_rate", None)
        self.flow = Flow(
            options,
            rate,
            sweep_bounds=(self.poll.initial_interval, self.poll.max_interval),
            share=lambda: float(getattr(provider, "rate_share", 1.0)),
        )
        self.watcher = Watcher(self)
        self.cwd = os.getcwd()
        # Sources between admission and their result (at most max_in_flight of them), with
        # their display names: the same file listed twice must not be uploaded, billed and
        # written twice at once, and a stopped batch reports each of them.
        self.active: dict[str, str] = {}
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
        # After the event, so the hook sees events in the order of their stamps.
        update = None if isinstance(event, FlowUpdate) else self.flow.update()
        if update is not None:
            self.emit(update)

    async def fail(self, item: Item, error: BaseException | str) -> None:
        """Record and report the item as failed, with what it did write."""
        if isinstance(error, errors.JournalError):
            # The journal cannot record this (disk full, database gone, lease taken over):
            # going on would do work nobody can resume. The batch stops.
            raise error
        message = error if isinstance(error, str) else (str(error) or type(error).__name__)
        note_failure(item, message, error)
        item.problems.append(message)
        item.settle()
        await self.maybe_finish(item)

    async def maybe_finish(self, item: Item) -> None:
        """Finish the item once its task is done and no download is pending."""
        if item.finished or not item.task_done or item.pending_downloads:
            return
        item.state = ItemState.FINISHED
        task = item.task
        if task is not None and item.s3:
            # The presigned URL is a credential: the result names the s3:// URI instead.
            task = attrs.evolve(task, url=item.source)
        if task is not None:
            for target in task.failed_targets:
                detail = target.error.message if target.error and target.error.message else ""
                if item.s3:
                    detail = redact_urls(detail)
                item.problems.append(
                    f"target {target.model} failed" + (f": {detail}" if detail else "")
                )
            item.problems.extend(missing_formats(task))
        status = "failed" if item.problems else "done"
        error = "; ".join(item.problems) or None
        with anyio.CancelScope(shield=True):
            await item.journal.finish(status, error)
        files = tuple(item.files)
        if status == "done":
            self.emit(ItemDone(item.display, files))
        else:
            self.emit(ItemFailed(item.display, error or "failed", **failure_fields(item.failure)))
        directory = item.directory if self.outputs.on_disk else None
        await self.results.send(
            BatchResult(item.display, status, task, files, error, directory, tuple(item.locations))
        )
        # Only once reported: an item stopped before that is reported by the engine.
        self.active.pop(item.source, None)
        self.flow.finished()

    # ------------------------------------------------------------------ admit

    async def admit(
        self,
        raw: str | os.PathLike[str],
        upload: MemoryObjectSendStream[Item],
        create: MemoryObjectSendStream[Item],
    ) -> None:
        """Decide where one input enters the pipeline (or report it skipped or failed)."""
        display = os.fspath(raw)
        as_s3 = is_s3_uri(display)
        as_url = as_s3 or (isinstance(raw, str) and is_url(raw))
        if as_url and not as_s3 and has_credentials(display):
            display = redact_url(display)  # never echoed: not in events, summary or metadata
        self.emit(ItemQueued(display))
        if as_url and not as_s3:
            try:
                check_source_url(os.fspath(raw))
            except errors.ValidationError as exc:
                self.emit(ItemFailed(display, str(exc)))
                await self.results.send(BatchResult(display, "failed", error=str(exc)))
                self.flow.finished()
                return
        # Pure string work (the working directory was read once): no blocking call here.
        source = display if as_url else os.path.normpath(os.path.join(self.cwd, display))  # noqa: ASYNC240
        if source in self.active:
            self.emit(ItemSkipped(display))
            await self.results.send(
                BatchResult(display, "skipped", error="the same input is already in this batch")
            )
            self.flow.finished()
            return
        self.active[source] = display
        stem = stem_of(source, as_url)
        dirname = await self.journal.claim_dir(source, stem)
        item = Item(
            display,
            source,
            as_url,
            self.out_dir / dirname,
            self.journal.item(source, self.signature),
            dirname=dirname,
            s3=as_s3,
        )
        try:
            record = await item.journal.lookup()
            if as_s3:
                found = raw if isinstance(raw, S3Object) else await self.stores.head(source)
                record = await check_s3_input(item, record, found, self.provider)
            elif not as_url:
                size = await self.provider.check_source(pathlib.Path(source))
                stat = await anyio.to_thread.run_sync(os.stat, source)
                item.size, item.mtime_ns = size, stat.st_mtime_ns
                record = await check_content(item, record, checksum=self.options.checksum)
            elif record is None:
                await item.journal.reset(None, None, None)
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
            if record.status == "done" and await self.outputs.all_present(item):
                item.state = ItemState.FINISHED
                for name in sorted(item.known_outputs):
                    self.outputs.keep(item, name)
                self.emit(ItemSkipped(display))
                directory = item.directory if self.outputs.on_disk else None
                await self.results.send(
                    BatchResult(
                        display,
                        "skipped",
                        None,
                        tuple(item.files),
                        None,
                        directory,
                        tuple(item.locations),
                    )
                )
                self.active.pop(source, None)
                self.flow.finished()
                return
            fresh = (
                record.asset_uploaded_at is not None
                and time.time() - record.asset_uploaded_at < self.asset_max_age
            )
            if record.task_id and self.options.retry_failed and record.status == "failed":
                # Asked for explicitly: the failed task is left behind and new work created.
                await item.journal.record_task(None)
                record = attrs.evolve(record, task_id=None, token=None)
                item.token = item.task_id = None
            if record.task_id:
                item.origin = Origin.RESUMED
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
        if as_url:
            await create.send(item)
        else:
            await upload.send(item)

    # ------------------------------------------------------------------ upload

    async def upload_worker(
        self, inbox: MemoryObjectReceiveStream[Item], create: MemoryObjectSendStream[Item]
    ) -> None:
        async with inbox, create:
            async for item in inbox:
                try:
                    async with self.flow.upload_gate.hold():
                        started = time.monotonic()
                        await self.upload(item)
                        # Demand: items queued, or held by workers waiting for the gate.
                        waiting = self.flow.upload_gate.waiting > 0 or bool(
                            inbox.statistics().current_buffer_used
                        )
                        seconds = time.monotonic() - started
                        self.flow.upload_done(seconds, item.size or 0, demand=waiting)
                except (errors.AudioShakeError, OSError) as exc:
                    if isinstance(exc, (errors.APIConnectionError, errors.RateLimitError)):
                        self.flow.congested("upload")
                    await self.fail(item, exc)
                    continue
                await create.send(item)

    async def upload(self, item: Item) -> None:
        """Upload the item's file and record the asset."""
        path = pathlib.Path(item.source)
        display = item.display

        def on_progress(sent: int, total: int) -> None:
            self.emit(UploadProgress(display, sent, total))

        if item.upload_name is not None and self.options.find_interrupted_uploads:
            # An earlier run was stopped during this upload: it may have completed.
            self.flow.upload_requests += 1
            found = await self.provider.find_upload(item.upload_name)
            if found is not None:
                item.asset_id = found
                if item.sha256 is None and self.options.checksum:
                    # No bytes stream this time: the content is read once, here.
                    item.sha256 = await anyio.to_thread.run_sync(hash_file, path)
                await item.journal.record_asset(found, time.time(), item.sha256)
                self.emit(Uploaded(display, found, item.size or 0, reused=True))
                return
        item.upload_name = unique_upload_name(path.name)
        await item.journal.record_upload_intent(item.upload_name)
        # The input is identified by path, size and mtime until now (the journal's lookup
        # key); its SHA-256 is computed from the very bytes sent and recorded with the asset.
        digest = UploadDigest(on_progress)
        asset_id = await self.provider.upload(path, item.upload_name, digest)
        item.asset_id = asset_id
        if self.options.checksum:
            item.sha256 = digest.sha256 or await anyio.to_thread.run_sync(hash_file, path)
        await item.journal.record_asset(asset_id, time.time(), item.sha256)
        self.emit(Uploaded(display, asset_id, item.size or 0))

    # ------------------------------------------------------------------ create

    async def create_worker(self, inbox: MemoryObjectReceiveStream[Item]) -> None:
        async with inbox:
            async for item in inbox:
                try:
                    async with self.flow.create_gate.hold():
                        started = time.monotonic()
                        await self.create(item)
                        waiting = self.flow.create_gate.waiting > 0 or bool(
                            inbox.statistics().current_buffer_used
                        )
                        self.flow.create_done(time.monotonic() - started, demand=waiting)
                except (errors.AudioShakeError, OSError) as exc:
                    await self.fail(item, exc)
                    continue
                await self.watcher.add(item)

    async def create(self, item: Item) -> None:
        """Create the item's task exactly once, recovering it by token after ambiguous ends."""
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
        url = item.source if item.is_url else None
        if item.s3:
            # Signed just before the POST (a signing failure costs no journal write and no
            # request); never journaled or logged: it is a credential.
            url = await self.stores.presign(item.source)
        await item.journal.record_intent(token)
        metadata = task_metadata(item, token, self.options.metadata, self.provider.metadata_limit)
        last_error: BaseException | None = None
        attempt = refusals = 0
        while attempt < self.options.create_attempts:
            attempt += 1
            self.flow.create_requests += 1
            guard = SEND_GUARD.set(lease_guard(self.journal.journal, item.display))
            try:
                task = await self.provider.create(
                    source=None if item.is_url else item.asset_id,
                    url=url,
                    targets=self.targets,
                    metadata=metadata,
                )
            except errors.RateLimitError as exc:
                # Refused unprocessed (429, the transport's own retries spent): too much at
                # once. The window shrinks and this item waits its turn; it is not failed.
                refusals += 1
                if refusals > REFUSALS:
                    raise
                attempt -= 1
                self.flow.limit_signal()
                logger.info("create for %s refused (%s); window shrunk", item.display, exc)
                await self.flow.after_refusal(
                    self.provider.retry.delay(min(refusals, 8), random.random())
                )
                continue
            except (errors.APIConnectionError, errors.ServerError) as exc:
                self.flow.congested("create")
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
                    extra={"input": item.display, "attempt": attempt, "route": "POST /tasks"},
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
                await item.journal.record_asset(None, None, None)
                await self.upload(item)
                continue
            finally:
                SEND_GUARD.reset(guard)
            await self._adopt(item, task, recovered=False)
            return
        raise errors.AudioShakeError(
            f"task creation failed {self.options.create_attempts} times: {last_error}"
        )

    async def _adopt(self, item: Item, task: Task, *, recovered: bool) -> None:
        item.task_id = task.id
        item.task = task
        await item.journal.record_task(task.id)
        how = " (found by its token)" if recovered else ""
        fields = {"task_id": task.id, "input": item.display, "route": "POST /tasks"}
        logger.debug("task %s created for %s%s", task.id, item.display, how, extra=fields)
        self.emit(TaskCreated(item.display, task.id, recovered=recovered))

    async def find_by_token(self, token: str, *, since: float | None = None) -> Task | None:
        """The task carrying ``token``, if an earlier create made it (see :func:`find_by_token`)."""
        if self.options.listing is not None:
            known = await self.options.listing.find_token(token)
            if known is not None:
                return known
        return await find_by_token(
            self.provider, token, since=since, pages=self.options.reconcile_pages
        )

    async def recreate(self, item: Item) -> None:
        """The journal's task is gone (404): create it again (uploading again if needed)."""
        try:
            item.origin = Origin.RECREATED
            item.task_id, item.task, item.token, item.intent_at = None, None, None, None
            await item.journal.record_task(None)
            if not item.is_url and item.asset_id is None:
                await self.upload(item)
            await self.create(item)
        except (errors.AudioShakeError, OSError) as exc:
            await self.fail(item, exc)
            return
        await self.watcher.add(item)

    # ------------------------------------------------------------------ download

    def plan_downloads(self, item: Item, task: Task) -> list[DownloadJob]:
        """Download jobs for targets that completed since the last look."""
        return self.outputs.plan(item, task)

    async def download_worker(self, inbox: MemoryObjectReceiveStream[DownloadJob]) -> None:
        async with inbox:
            async for job in inbox:
                try:
                    await self.outputs.download(job)
                except errors.JournalError:
                    raise
                except (errors.AudioShakeError, OSError) as exc:
                    job.item.problems.append(f"{job.name}: {exc}")
                job.item.pending_downloads -= 1
                await self.maybe_finish(job.item)
