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
import itertools
import logging
import os
import pathlib
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

from ..models import Target
from .events import (
    BatchResult,
    ProgressHook,
)
from .items import DownloadJob, Item
from .journal import AsyncJournal, Journal, SqliteJournal, journal_key, targets_signature
from .options import BatchOptions, BatchOptionValues, Unpack, options_with
from .pipeline import Pipeline
from .seam import BatchProvider, SupportsBatch

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
    options = pipeline.options
    upload_send, upload_recv = anyio.create_memory_object_stream[Item](options.upload_concurrency)
    create_send, create_recv = anyio.create_memory_object_stream[Item](options.create_concurrency)
    download_send, download_recv = anyio.create_memory_object_stream[DownloadJob](
        options.download_concurrency * 2
    )

    failure: list[Exception] = []

    async def feed() -> None:
        async with upload_send, create_send:
            source = _iterate(inputs)
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
                    failure.append(exc)
                    break
                await pipeline.in_flight.acquire()
                await pipeline.admit(raw, upload_send, create_send)

    async def creators(inboxes: list[MemoryObjectReceiveStream[Item]]) -> None:
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
    return failure[0] if failure else None


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

    ``journal`` is a path to the SQLite journal (resume and no double billing across runs), a
    :class:`Journal`, or None for a throw-away one. Keyword options are the fields of
    :class:`BatchOptions` (typed: a misspelt one fails type checking, and raises
    ``TypeError`` here, at the call, not at the first iteration); they override ``options``.
    Targets and options are checked at the call too.

    Break out early with ``contextlib.aclosing``; the pipeline is cancelled cleanly (no partial
    file under a final name, the journal consistent). An error raised by ``inputs`` itself
    ends the batch once the items it already gave have finished, and reaches the caller as
    itself.
    """
    provider = client.batch_provider() if isinstance(client, SupportsBatch) else client
    checked = provider.check_targets(targets)
    settings = options_with(options, option_values)
    return _batch(provider, inputs, checked, pathlib.Path(out_dir), journal, progress, settings)


async def _batch(
    provider: BatchProvider,
    inputs: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
    checked: tuple[Target, ...],
    directory: pathlib.Path,
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
        provider, checked, directory, AsyncJournal(store), progress, settings, results_send
    )
    # The pipeline runs in its own task, so this generator never yields inside a cancel scope
    # and can be closed from any task.
    runner = asyncio.ensure_future(_run_pipeline(pipeline, inputs))
    try:
        async with results_recv:
            async for result in results_recv:
                yield result
        input_error = await runner
    finally:
        if not runner.done():
            runner.cancel()
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([runner])
            if owned is not None:
                await anyio.to_thread.run_sync(owned.close)
    if input_error is not None:
        raise input_error
