"""The concurrent batch engine: a catalog of files or URLs in, stems on disk out.

Stages, each with its own bound, joined by bounded anyio memory streams (so a slow stage holds
back the ones before it and a million-item input is read lazily):

    admit -> upload (4..64) -> create (16..64) -> watch (the window) -> download (8) -> results

The window (items admitted and not finished) follows Little's law: the creation rate the
request budget allows times the time a task spends in flight (``batch/window.py``); upload and
create concurrency grow while latency holds (the network and the budget have room).

- admit: stat the input, consult the journal, decide where the item enters (skip when done,
  watch when its task exists, create when a fresh asset exists, else upload);
- upload: stream the file to ``/assets``;
- create: write an intent with a client token (carried in ``metadata``) to the journal, then
  ``POST /tasks``; an ambiguous failure is resolved by finding the token among recent tasks
  before creating again, so no work is billed twice;
- watch: one loop refreshes every task in flight through the client's rate limiter: by
  ``GET /tasks`` sweeps on the interval the poll share of the budget allows when that costs
  fewer requests than one ``GET /tasks/{id}`` each, else per-task reads with backoff; each
  target's outputs go to download as soon as it completes;
- download: stream each output to ``<out_dir>/<input stem>/<name>.<format>`` atomically, on
  disk or in a bucket (``out_dir="s3://..."``) through the output seam (``core/sink.py``).

One item's failure is recorded and reported as a result; it never stops the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Sequence,
)
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from .. import errors
from ..models import Target
from ..storage.s3 import is_s3_uri
from .events import (
    BatchResult,
    ItemFailed,
    ProgressHook,
)
from .items import DownloadJob, Item
from .journal import AsyncJournal, Journal, SqliteJournal, journal_key, targets_signature
from .options import BatchOptions, BatchOptionValues, Unpack, options_with
from .pipeline import Pipeline
from .seam import BatchProvider, SupportsBatch
from .sources import expand_s3

logger = logging.getLogger("audioshake_async.batch")

__all__ = ["BatchOptions", "journal_key", "run_batch", "targets_signature"]

#: Inputs taken per worker-thread hop from a plain (possibly blocking) iterable.
INPUT_CHUNK = 256


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


async def _run_pipeline(
    pipeline: Pipeline, inputs: Iterable[Any] | AsyncIterable[Any]
) -> Exception | None:
    """Run every stage to the end; returns the error the input iterator raised, if any."""
    options, flow = pipeline.options, pipeline.flow
    upload_send, upload_recv = anyio.create_memory_object_stream[Item](flow.uploads.initial)
    create_send, create_recv = anyio.create_memory_object_stream[Item](flow.creates.initial)
    download_send, download_recv = anyio.create_memory_object_stream[DownloadJob](
        options.download_concurrency * 2
    )

    input_failure: list[Exception] = []

    async def feed() -> None:
        async with upload_send, create_send:
            exclude = os.fspath(pipeline.out_dir_arg)
            source = expand_s3(
                _iterate(inputs),
                pipeline.stores,
                pipeline.provider.input_extensions,
                exclude=exclude if is_s3_uri(exclude) else None,
            )
            while True:
                try:
                    raw = await source.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    # The caller's own iterator failed: the items it already gave finish
                    # (nothing billed is abandoned), then run_batch raises this very error,
                    # not an ExceptionGroup of the task group's making.
                    logger.debug("input iterator raised %r; finishing admitted items", exc)
                    input_failure.append(exc)
                    break
                await flow.admit()
                await pipeline.admit(raw, upload_send, create_send)

    async def creators(inboxes: list[MemoryObjectReceiveStream[Item]]) -> None:
        async with anyio.create_task_group() as inner:
            for inbox in inboxes:
                inner.start_soon(pipeline.create_worker, inbox)
        # Every task is handed over: the watcher may stop once the last one finishes.
        flow.creates_ended()
        pipeline.watcher.close()

    pipeline.watcher.downloads = download_send
    async with pipeline.results:
        try:
            async with anyio.create_task_group() as group:
                # A journal that cannot record a step (a full disk) stops every stage at once:
                # each is as safe to cancel as a crash, and nothing after that step is recorded.
                pipeline.journal.on_failure = lambda _: group.cancel_scope.cancel()
                # The original receive ends close as soon as the workers hold their clones.
                async with upload_recv, create_recv, download_recv:
                    group.start_soon(feed)
                    # As many workers as the gates may ever let through; the gates set how many.
                    for _ in range(flow.upload_workers):
                        group.start_soon(
                            pipeline.upload_worker, upload_recv.clone(), create_send.clone()
                        )
                    group.start_soon(
                        creators, [create_recv.clone() for _ in range(flow.create_workers)]
                    )
                    group.start_soon(pipeline.watcher.run)
                    for _ in range(options.download_concurrency):
                        group.start_soon(pipeline.download_worker, download_recv.clone())
        except BaseException as exc:
            # The first journal failure is kept by the journal and reported below.
            if pipeline.journal.failure is None or not _journal_failures_only(exc):
                raise
        failure = pipeline.journal.failure
        # Items whose lease was lost are another worker's now: not this run's to report.
        if failure is not None and not isinstance(failure, errors.LeaseLostError):
            await _report_stopped(pipeline, failure)
        final = flow.update(final=True)
        assert final is not None
        pipeline.emit(final)
    return input_failure[0] if input_failure else None


async def _report_stopped(pipeline: Pipeline, failure: errors.JournalError) -> None:
    """The journal failed and the batch stopped: each item still in flight ends failed.

    Nothing of theirs is lost: every stage stops as safely as a crash would (the journal holds
    each step that completed, no file is under its final name unfinished), so a re-run resumes
    them without creating any task twice.
    """
    step = f" ({failure.step})" if failure.step else ""
    error = f"not finished: the batch stopped when the journal failed{step}"
    for display in list(pipeline.active.values()):
        pipeline.emit(ItemFailed(display, error))
        await pipeline.results.send(BatchResult(display, "failed", error=error))
    pipeline.active.clear()


def _journal_failures_only(exc: BaseException) -> bool:
    """Whether ``exc`` is a JournalError, or a (nested) group of nothing else."""
    # Duck-typed: anyio raises task errors as exception groups, built in from Python 3.11 only.
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        return all(_journal_failures_only(e) for e in inner)
    return isinstance(exc, errors.JournalError)


def run_batch(
    client: BatchProvider | SupportsBatch,
    inputs: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
    *,
    targets: Sequence[Target],
    out_dir: str | os.PathLike[str],
    journal: str | os.PathLike[str] | Journal | None = None,
    progress: ProgressHook | None = None,
    options: BatchOptions | None = None,
    **option_values: Unpack[BatchOptionValues],
) -> AsyncGenerator[BatchResult, None]:
    """Process every input and yield one :class:`BatchResult` per input as each finishes.

    ``client`` is an :class:`~audioshake_async.AudioShake` client or any
    :class:`~audioshake_async.batch.BatchProvider` (legacy Jobs, Music.AI).

    ``out_dir`` is a local directory or an ``s3://bucket/prefix`` (outputs streamed into
    multipart uploads; needs the ``[s3]`` extra). ``inputs`` may hold ``s3://bucket/key`` objects
    and ``s3://bucket/prefix/`` prefixes (listed lazily): each is passed to the service as a
    presigned URL, never uploaded (``s3=S3Settings(...)`` sets the endpoint and URL lifetime).

    ``journal`` is a path to the SQLite journal (resume and no double billing across runs), a
    :class:`Journal`, or None for a throw-away one; a journal open in another run raises
    :class:`~audioshake_async.errors.JournalBusyError` before any request. Keyword options are
    the fields of :class:`BatchOptions` (typed: a misspelt one fails type checking, and raises
    ``TypeError`` here, at the call, not at the first iteration); they override ``options``.
    Targets and options are checked at the call too.

    Break out early with ``contextlib.aclosing``; the pipeline is cancelled cleanly (no partial
    file under a final name, the journal consistent). An error raised by ``inputs`` itself
    ends the batch once the items it already gave have finished, and reaches the caller as
    itself. When the journal fails (a full disk), no new input is admitted, every item in
    flight is yielded as failed, then the :class:`~audioshake_async.errors.JournalError` is
    raised: a re-run resumes from what was recorded.
    """
    provider = client.batch_provider() if isinstance(client, SupportsBatch) else client
    checked = provider.check_targets(targets)
    settings = options_with(options, option_values)
    return _batch(provider, inputs, checked, out_dir, journal, progress, settings)


async def _batch(
    provider: BatchProvider,
    inputs: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
    checked: tuple[Target, ...],
    out_dir: str | os.PathLike[str],
    journal: str | os.PathLike[str] | Journal | None,
    progress: ProgressHook | None,
    settings: BatchOptions,
) -> AsyncGenerator[BatchResult, None]:
    owned: SqliteJournal | None = None
    if journal is None or isinstance(journal, (str, os.PathLike)):
        owned = await anyio.to_thread.run_sync(SqliteJournal, journal)
        store: Journal = owned
    else:
        store = journal
    results_send, results_recv = anyio.create_memory_object_stream[BatchResult](64)
    pipeline = Pipeline(
        provider, checked, out_dir, AsyncJournal(store), progress, settings, results_send
    )
    # The pipeline runs in its own task, so this generator never yields inside a cancel scope
    # and can be closed from any task.
    runner = asyncio.ensure_future(_run_pipeline(pipeline, inputs))
    try:
        async with results_recv:
            async for result in results_recv:
                yield result
        input_error = await runner
        if pipeline.journal.failure is not None:
            raise pipeline.journal.failure
    finally:
        if not runner.done():
            runner.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([runner])
            if owned is not None:
                await anyio.to_thread.run_sync(owned.close)
    if input_error is not None:
        raise input_error
