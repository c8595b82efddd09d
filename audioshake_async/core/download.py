"""Downloads that never leave a partial output under its final name.

Bytes stream into an :class:`~audioshake_async.core.sink.OutputWriter` (a hidden part file
unique to this writer and locked while written, renamed into place: ``core.parts``; or a
multipart upload); the byte count is checked against ``Content-Length`` and the writer commits
only when complete, or is aborted. A
truncated or failed transfer resumes with ``Range`` when the server supports it (else restarts);
a 403 (signed links expire after an hour) asks the caller for a fresh link. A ``Retry-After``
on a retryable answer (429, 503...) sets the wait, capped like the API's (``max_retry_after``).

Bounds (:class:`DownloadLimits`): a body declared or grown larger than ``max_bytes`` is refused
(never retried); reading stops at the declared length; an attempt that receives fewer than
``low_speed_limit`` bytes/s for ``low_speed_time`` seconds (curl's ``--speed-limit`` /
``--speed-time``), waiting for the answer's headers included, is a stalled attempt: dropped and
retried like a dropped connection. Redirect targets never receive the API key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import pathlib
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from .. import errors
from .http import RetryPolicy, is_retryable_status, parse_retry_after, redact_url
from .sink import DISK_BATCH, DiskWriter, OutputWriter, StoredOutput
from .transport import Transport

__all__ = ["DownloadLimits", "DownloadedFile", "fetch_to", "fetch_to_file"]

logger = logging.getLogger("audioshake_async")

#: The batch of a disk download (a writer sets its own: ``OutputWriter.batch_size``).
WRITE_BATCH = DISK_BATCH
MAX_REDIRECTS = 5
MAX_LINK_REFRESHES = 3

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

#: Called with (bytes written so far, total bytes or None).
DownloadProgress = Callable[[int, "int | None"], None]
#: Returns a fresh link for the same output (by re-fetching the task).
LinkRefresher = Callable[[], Awaitable[str]]


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0 or value != value or value == float("inf"):
        raise errors.ConfigurationError(
            f"{attribute.name} must be a positive number, got {value!r}"
        )


@attrs.frozen
class DownloadLimits:
    """Bounds of one download.

    ``max_bytes`` (default 4 GiB, twice the 2 GB input limit: a stem is as long as its input,
    so this is above any real one) refuses
    a larger body. Fewer than ``low_speed_limit`` bytes per second (default 1 KiB/s) over
    ``low_speed_time`` seconds (default 60) makes the attempt a stall, retried with backoff:
    a stalled output costs minutes, not the transfer timeout of every attempt.
    """

    max_bytes: int = attrs.field(default=4 << 30, validator=_positive)
    low_speed_limit: float = attrs.field(default=1024.0, validator=_positive)
    low_speed_time: float = attrs.field(default=60.0, validator=_positive)


class _TooLarge(Exception):
    """The body is larger than the limit: not retried."""


class _Stalled(Exception):
    """Fewer bytes than the low-speed limit arrived in the low-speed window."""


class _SpeedGuard:
    """Cancels the attempt when the low-speed window passes without enough bytes.

    Each window of ``low_speed_time`` seconds must bring ``low_speed_limit * low_speed_time``
    bytes; every window that does pushes the deadline one window on.
    """

    def __init__(self, limits: DownloadLimits, scope: anyio.CancelScope) -> None:
        self._needed = max(1, int(limits.low_speed_limit * limits.low_speed_time))
        self._window = limits.low_speed_time
        self._scope = scope
        self._got = 0
        scope.deadline = anyio.current_time() + self._window

    def feed(self, size: int) -> None:
        self._got += size
        if self._got >= self._needed:
            self._got = 0
            self._scope.deadline = anyio.current_time() + self._window


@attrs.frozen
class DownloadedFile:
    """A file written completely: its final path, size and SHA-256 (when computed)."""

    path: pathlib.Path
    size: int
    sha256: str | None


class _Truncated(Exception):
    """The body ended before Content-Length bytes arrived."""


@attrs.define
class _Transfer:
    """What is known about one output's transfer so far; the bytes go to ``writer``."""

    writer: OutputWriter
    written: int = 0
    accepts_ranges: bool = False
    etag: str | None = None

    async def restart(self) -> None:
        """Drop what was written: the next bytes start the body again."""
        await self.writer.restart()
        self.written = 0


async def fetch_to_file(
    transport: Transport,
    link: str,
    destination: pathlib.Path,
    *,
    refresh: LinkRefresher | None = None,
    retry: RetryPolicy | None = None,
    checksum: bool = True,
    progress: DownloadProgress | None = None,
    limits: DownloadLimits | None = None,
) -> DownloadedFile:
    """Download ``link`` to ``destination`` atomically, with resume, retries and link refresh."""
    writer = await DiskWriter.open(destination, checksum=checksum)
    stored = await fetch_to(
        transport, link, writer, refresh=refresh, retry=retry, progress=progress, limits=limits
    )
    return DownloadedFile(destination, stored.size, stored.sha256)


async def fetch_to(
    transport: Transport,
    link: str,
    writer: OutputWriter,
    *,
    refresh: LinkRefresher | None = None,
    retry: RetryPolicy | None = None,
    progress: DownloadProgress | None = None,
    limits: DownloadLimits | None = None,
) -> StoredOutput:
    """Stream ``link`` into ``writer`` (any :class:`OutputWriter`: a file, a multipart upload)
    and commit it; on any failure the writer is aborted, so nothing appears under its name."""
    policy = retry or transport.retry
    bounds = limits or DownloadLimits()
    name = writer.location.rstrip("/").rsplit("/", 1)[-1]
    part = _Transfer(writer)
    failures = 0
    refreshes = 0
    current = link
    try:
        while True:
            retry_after: float | None = None
            too_large: str | None = None
            try:
                with anyio.CancelScope() as scope:
                    guard = _SpeedGuard(bounds, scope)
                    status, retry_after = await _attempt(
                        transport, current, part, progress, bounds, guard
                    )
                if scope.cancelled_caught:
                    raise _Stalled(
                        f"stalled: under {bounds.low_speed_limit:g} bytes/s for "
                        f"{bounds.low_speed_time:g} s"
                    )
            except _TooLarge as exc:
                too_large = str(exc)
                status, reason = 0, too_large
            except (_Truncated, _Stalled, errors.APIConnectionError) as exc:
                status, reason = 0, str(exc) or type(exc).__name__
            else:
                if status in (200, 206):
                    break
                reason = f"HTTP {status}"
            if too_large is not None:
                raise errors.DownloadError(f"{name}: {too_large}")
            if status in (401, 403) and refresh is not None:
                if refreshes >= MAX_LINK_REFRESHES:
                    raise errors.DownloadError(
                        f"{name}: link still refused after {refreshes} refreshes"
                    )
                refreshes += 1
                logger.info(
                    "download link for %s refused (%s); fetching a fresh one",
                    name,
                    reason,
                    extra={"route": "GET <download>", "status": status, "file": name},
                )
                current = await refresh()
                continue
            if status and not is_retryable_status(status):
                raise errors.DownloadError(f"{name}: {redact_url(current)} answered {reason}")
            if retry_after is not None and retry_after > policy.max_retry_after:
                # As for API calls: a wait that long is an outage, not a blip; do not stall.
                raise errors.DownloadError(
                    f"{name}: {redact_url(current)} answered {reason} with "
                    f"Retry-After {retry_after:g} s, over the {policy.max_retry_after:g} s limit"
                )
            failures += 1
            if failures > policy.max_retries:
                raise errors.DownloadError(f"{name}: gave up after {failures} attempts ({reason})")
            if part.written and not part.accepts_ranges:
                await part.restart()
            delay = policy.delay(failures, random.random(), retry_after)
            logger.info(
                "retrying download of %s after %s in %.2f s",
                name,
                reason,
                delay,
                extra={
                    "route": "GET <download>",
                    "attempt": failures,
                    "status": status or None,
                    "reason": reason,
                    "delay": delay,
                    "file": name,
                },
            )
            await anyio.sleep(delay)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await writer.abort()
        raise
    # commit() aborts by itself when it fails.
    return await writer.commit()


async def _attempt(
    transport: Transport,
    url: str,
    part: _Transfer,
    progress: DownloadProgress | None,
    limits: DownloadLimits,
    guard: _SpeedGuard,
) -> tuple[int, float | None]:
    """One GET (following redirects) appended to ``part``: the final status and Retry-After.

    Raises _Truncated or APIConnectionError when the body ends early; ``part.written`` then
    counts every byte kept, so the next attempt resumes right after them.
    """
    headers: dict[str, str] = {}
    if part.written and part.accepts_ranges:
        headers["Range"] = f"bytes={part.written}-"
        if part.etag:
            headers["If-Range"] = part.etag
    redirected = False
    for _ in range(MAX_REDIRECTS + 1):
        # A redirect target gets no key, even on the API host: the link's server chose it.
        async with transport.open_download(url, headers, authenticate=not redirected) as response:
            status = response.status
            if status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                # Followed by hand so no credential rides along (aiohttp would keep headers).
                url = str(response.headers["Location"])
                redirected = True
                continue
            if response.headers.get("Accept-Ranges", "").lower() == "bytes":
                part.accepts_ranges = True
            part.etag = response.headers.get("ETag") or part.etag
            if status not in (200, 206):
                return status, parse_retry_after(response.headers, dt.datetime.now(dt.timezone.utc))
            total: int | None = None
            if status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != part.written:
                    # Not the piece asked for: start again from zero, without Range.
                    await part.restart()
                    part.accepts_ranges = False
                    raise _Truncated("server sent an unexpected byte range")
                total = int(match.group(3)) if match.group(3) != "*" else None
            else:
                if part.written:
                    await part.restart()
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if total is not None and total > limits.max_bytes:
                raise _TooLarge(
                    f"{redact_url(url)} declares {total} bytes, over the {limits.max_bytes} limit"
                )
            # Chunks are batched in a list, not a bytearray: growing and emptying a 1 MiB
            # bytearray reallocates and copies it over and over. A batch is written in a worker
            # thread while the next one arrives: waiting for each write before reading on stalls
            # the socket for a thread round trip per batch (~35% of loopback throughput).
            batch = _Batch()
            writer = _Writer(part, total, progress)
            batch_size = part.writer.batch_size
            try:
                async for chunk in response.iter_chunks(batch_size):
                    guard.feed(len(chunk))
                    batch.add(chunk)
                    received = part.written + batch.size + writer.in_flight
                    if total is not None and received > total:
                        # More than declared: keep the declared bytes, drop the rest.
                        raise _Truncated(f"body longer than the declared {total} bytes")
                    if received > limits.max_bytes:
                        raise _TooLarge(
                            f"{redact_url(url)} sent more than the {limits.max_bytes}-byte limit"
                        )
                    if batch.size >= batch_size:
                        await writer.submit(batch)
            finally:
                # Keep what arrived, even on failure: a resume continues right after it. No
                # write may still be running once the attempt is over (the file is closed next).
                with anyio.CancelScope(shield=True):
                    if batch.size:
                        await writer.submit(batch)
                    await writer.finish()
            if total is not None and part.written != total:
                raise _Truncated(f"truncated at {part.written} of {total} bytes")
            return status, None
    raise errors.DownloadError(f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")


@attrs.define
class _Batch:
    """Network chunks waiting to be written, and their total size."""

    chunks: list[bytes] = attrs.field(factory=list)
    size: int = 0

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)


class _Writer:
    """Hands batches to the writer, one at a time, while the caller reads the next one.

    ``part.written`` and the progress callback count a batch as soon as the writer has it.
    """

    def __init__(
        self, part: _Transfer, total: int | None, progress: DownloadProgress | None
    ) -> None:
        self._part = part
        self._total = total
        self._progress = progress
        self._pending: asyncio.Future[None] | None = None
        #: Bytes of the batch being written (not yet counted in ``part.written``).
        self.in_flight = 0

    async def submit(self, batch: _Batch) -> None:
        """Wait for the write in flight, then start writing ``batch`` (which is emptied)."""
        await self.finish()
        chunks, size = batch.chunks, batch.size
        batch.chunks, batch.size = [], 0
        pending = asyncio.ensure_future(self._part.writer.write(chunks))
        self.in_flight = size
        pending.add_done_callback(lambda done: self._written(done, size))
        self._pending = pending

    def _written(self, done: asyncio.Future[None], size: int) -> None:
        # Runs on the loop when the write finishes, before any waiter of ``done`` resumes.
        self.in_flight = 0
        if done.cancelled() or done.exception() is not None:
            return
        self._part.written += size
        if self._progress is not None:
            self._progress(self._part.written, self._total)

    async def finish(self) -> None:
        """Wait until nothing is being written; a write's error is raised here."""
        if self._pending is None:
            return
        # Shielded: a cancellation stops this wait, not the write; the caller waits again
        # (the write stays tracked until it is over).
        await asyncio.shield(self._pending)
        self._pending = None
