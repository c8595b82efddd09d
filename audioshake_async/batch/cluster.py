"""Many workers on one batch: submit the inputs once, then run any number of workers.

A worker claims items from a :class:`~audioshake_async.batch.journal_pg.PostgresJournal` (with
a lease, renewed by a heartbeat), feeds them to the ordinary batch engine, and stops when the
batch has nothing left. It stops at once, without touching the items again, when a lease is lost
(another worker took it over, or this one was frozen past it): the journal refuses its writes
anyway (fencing), and the engine refuses to send ``POST /tasks`` without lease to cover it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import anyio
import anyio.to_thread
import attrs

from .. import errors
from ..models import Target
from ..storage.s3 import S3Object, S3Settings, S3Stores, is_s3_uri
from .engine import _iterate, run_batch
from .events import BatchResult, ProgressHook
from .flow import DEFAULT_RATE
from .items import is_url
from .journal import journal_key
from .journal_pg import PostgresJournal
from .options import BatchOptions
from .seam import BatchProvider
from .sources import expand_s3

logger = logging.getLogger("audioshake_async.batch")

__all__ = ["submit", "work"]

#: Items claimed per round trip (they wait, leased, until the pipeline has room for them).
CLAIM_SIZE = 8


def _source_key(raw: str | os.PathLike[str] | S3Object, cwd: str) -> str:
    if isinstance(raw, S3Object):
        return raw.uri
    text = os.fspath(raw)
    if is_url(text) or is_s3_uri(text):
        return text
    return os.path.normpath(os.path.join(cwd, text))


async def submit(
    journal: PostgresJournal,
    provider: BatchProvider,
    inputs: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
    *,
    targets: Sequence[Target],
    settings: dict[str, Any] | None = None,
    s3: S3Settings | None = None,
) -> int:
    """Register the batch and its inputs (idempotent); returns how many inputs are new.

    Paths are stored absolute: every worker must see them at the same place (a shared file
    system). An ``s3://bucket/prefix/`` is listed here (with ``s3``'s endpoint), one item per
    object; objects under an ``s3://`` output (``settings["out"]``) are skipped. ``settings``
    (the output directory, formats...) are stored with the batch.
    """
    checked = provider.check_targets(targets)
    signature = journal_key(provider, checked)
    await anyio.to_thread.run_sync(journal.register, signature, dict(settings or {}))
    cwd = os.getcwd()
    added = 0
    chunk: list[str] = []
    out = str((settings or {}).get("out", ""))
    expanded = expand_s3(
        _iterate(inputs),
        S3Stores(s3),
        provider.input_extensions,
        exclude=out if is_s3_uri(out) else None,
    )
    async for raw in expanded:
        chunk.append(_source_key(raw, cwd))
        if len(chunk) >= 500:
            added += await anyio.to_thread.run_sync(journal.add_inputs, list(chunk), signature)
            chunk.clear()
    if chunk:
        added += await anyio.to_thread.run_sync(journal.add_inputs, chunk, signature)
    return added


async def _claims(journal: PostgresJournal, idle: float) -> AsyncIterator[str]:
    """Claimed sources, a few at a time, until the batch has no open item left."""
    while True:
        claimed = await anyio.to_thread.run_sync(journal.claim, CLAIM_SIZE)
        if claimed:
            for claim in claimed:
                yield claim.source
            continue
        if await anyio.to_thread.run_sync(journal.open_items) == 0:
            return
        # Other workers hold the rest: wait, in case one dies and its leases lapse.
        await anyio.sleep(idle)


async def _heartbeat(journal: PostgresJournal) -> None:
    interval = journal.lease / 6
    while True:
        await anyio.sleep(interval)
        try:
            lost = await anyio.to_thread.run_sync(journal.heartbeat)
        except errors.JournalError as exc:
            # One missed beat is survivable; the next succeeds or the lease check below stops.
            logger.warning("journal heartbeat failed: %s", exc)
            lost = set()
        if lost or journal.lease_remaining() <= 0:
            raise errors.LeaseLostError(
                f"{len(lost) or 'all'} lease(s) lost (taken over or lapsed while this worker "
                "was stopped or cut off); this worker stops without touching them again"
            )


async def work(
    provider: BatchProvider,
    journal: PostgresJournal,
    *,
    out_dir: str | os.PathLike[str],
    targets: Sequence[Target],
    progress: ProgressHook | None = None,
    options: BatchOptions | None = None,
    idle: float | None = None,
    shared_listing: bool = True,
) -> AsyncGenerator[BatchResult, None]:
    """Claim and process the batch's items until none is left; yield each item's result.

    With ``shared_listing``, one worker at a time (the leader) pages the account's task
    listing for every worker of the batch, through the database (see
    :mod:`~audioshake_async.batch.listing_pg`). Raises
    :class:`~audioshake_async.errors.LeaseLostError` (after releasing what it still holds)
    when a lease was lost: run the worker again, it claims afresh.
    """
    await anyio.to_thread.run_sync(journal.register_worker)
    send, receive = anyio.create_memory_object_stream[BatchResult](64)
    wait = idle if idle is not None else min(2.0, journal.lease / 6)
    settings = options or BatchOptions()
    poll = settings.poll or provider.poll
    listing = None
    if shared_listing and provider.supports_listing:
        # The leader pages for every worker: its pages spend the account's poll share.
        rate = settings.request_rate or getattr(provider, "request_rate", None) or DEFAULT_RATE
        listing = await anyio.to_thread.run_sync(
            lambda: journal.shared_listing(
                provider,
                interval=min(10.0, max(0.2, poll.initial_interval)),
                max_interval=poll.max_interval,
                rate=rate,
                poll_share=settings.poll_share,
            )
        )
        settings = attrs.evolve(settings, listing=listing, find_interrupted_uploads=False)

    async def drive() -> None:
        try:
            async with send, anyio.create_task_group() as group:
                group.start_soon(_heartbeat, journal)
                if listing is not None:
                    group.start_soon(listing.run)
                batch = run_batch(
                    provider,
                    _claims(journal, wait),
                    targets=targets,
                    # An s3:// root stays a string: the engine opens the S3 sink for it.
                    out_dir=out_dir if is_s3_uri(os.fspath(out_dir)) else pathlib.Path(out_dir),
                    journal=journal,
                    progress=progress,
                    options=settings,
                )
                async with contextlib.aclosing(batch):
                    async for result in batch:
                        await send.send(result)
                group.cancel_scope.cancel()
        except BaseException as exc:
            # The task groups wrap it: the caller gets the journal's own error.
            journal_error = _journal_error(exc)
            if journal_error is not None:
                raise journal_error from None
            raise

    runner = asyncio.ensure_future(drive())
    try:
        async with receive:
            async for result in receive:
                yield result
        await runner
    finally:
        if not runner.done():
            runner.cancel()
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([runner])
            with contextlib.suppress(errors.JournalError):
                await anyio.to_thread.run_sync(journal.release_all)
            if listing is not None:
                await anyio.to_thread.run_sync(listing.close)


def _journal_error(exc: BaseException) -> errors.JournalError | None:
    """The first JournalError inside (possibly nested) exception groups."""
    if isinstance(exc, errors.JournalError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _journal_error(inner)
        if found is not None:
            return found
    return None
