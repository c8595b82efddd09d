"""What every service client shares: settings checks, the transport, lifecycle, request counts,
the wait loop, list pagers and the download of many outputs.

Each service package (``tasks``, ``legacy``, ``musicai``) subclasses :class:`ServiceClient` and
keeps only what its API says differently.
"""

from __future__ import annotations

import math
import os
import pathlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import aiohttp
import anyio

from .. import errors
from ..models import Output
from .download import DownloadedFile, DownloadLimits, DownloadProgress, fetch_to, fetch_to_file
from .http import DEFAULT_MAX_JSON_BYTES, DEFAULT_RATE_LIMIT, PollPolicy, RetryPolicy
from .ratelimit import Limiter
from .sink import OutputWriter, StoredOutput
from .transport import Timeouts, Transport

__all__ = [
    "FilesProgress",
    "ServiceClient",
    "Wakeups",
    "check_rate_limit",
    "download_all",
    "poll_until",
    "secret_from",
    "walk_pages",
]

T = TypeVar("T")
S = TypeVar("S", bound="ServiceClient")

#: Reads after a wake-up that may not show its change yet (stale snapshots), backing off from
#: HINT_RETRY_BASE seconds: 0.25 + 0.5 + ... + 8 s, then the regular interval again.
HINT_RETRIES = 6
HINT_RETRY_BASE = 0.25

#: ``download(..., progress=)`` of every client: (file name, bytes received so far, total bytes
#: or None), the name being the file's final name in the destination directory.
FilesProgress = Callable[[str, int, "int | None"], None]

#: Subscribes a callback to "something changed, read again now" signals (webhook deliveries);
#: returns the function that unsubscribes it.
Wakeups = Callable[[Callable[[], None]], Callable[[], None]]


def check_rate_limit(rate_limit: object) -> None:
    """Refuse a ``rate_limit`` that is neither None, a positive number nor a :class:`Limiter`."""
    if rate_limit is None or isinstance(rate_limit, Limiter):
        return
    if (
        isinstance(rate_limit, bool)
        or not isinstance(rate_limit, int | float)
        or not (rate_limit > 0 and math.isfinite(rate_limit))
    ):
        raise errors.ConfigurationError(
            f"rate_limit must be a positive number, None or a Limiter, got {rate_limit!r}"
        )


def secret_from(value: str | None, env_var: str, missing: str) -> str:
    """The credential passed, else the one in ``env_var``, stripped; ``missing`` if neither."""
    secret = (value if value is not None else os.environ.get(env_var) or "").strip()
    if not secret:
        raise errors.ConfigurationError(missing)
    return secret


class ServiceClient:
    """Base of the service clients: one transport (pool, rate limiter, retries) per instance.

    Use a client as ``async with Client() as client:`` and share it. A ``session`` you pass is
    used and left open; otherwise the client owns one and closes it on exit.

    Bounds against a misbehaving server: ``max_json_bytes`` caps an API answer (a larger one
    raises ResponseParseError), ``download_limits`` caps a download's size and speed (see
    :class:`~audioshake_async.core.download.DownloadLimits`). Plain http is refused except to
    loopback hosts unless ``allow_insecure_http``.

    ``rate_limit`` is requests per second for this client's own limiter (None: no limit), or a
    :class:`~audioshake_async.core.ratelimit.Limiter` object (e.g. a ``PostgresRateLimiter``
    shared by every worker of an account), which stays the caller's: the client never closes it.
    """

    def __init__(
        self,
        *,
        base_url: str,
        auth_headers: Mapping[str, str],
        timeout: float = 60.0,
        max_retries: int = 5,
        rate_limit: float | Limiter | None = DEFAULT_RATE_LIMIT,
        session: aiohttp.ClientSession | None = None,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        connection_limit: int = 100,
        trust_env: bool = False,
        allow_insecure_http: bool = False,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        download_limits: DownloadLimits | None = None,
    ) -> None:
        if timeout <= 0 or not math.isfinite(timeout):
            raise errors.ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if max_retries < 0:
            raise errors.ConfigurationError(f"max_retries must be >= 0, got {max_retries!r}")
        check_rate_limit(rate_limit)
        self._transport = Transport(
            base_url=base_url,
            auth_headers=auth_headers,
            timeouts=Timeouts(request=timeout),
            retry=retry or RetryPolicy(max_retries=max_retries),
            rate_limit=rate_limit,
            session=session,
            connection_limit=connection_limit,
            trust_env=trust_env,
            allow_insecure_http=allow_insecure_http,
            max_json_bytes=max_json_bytes,
        )
        self.poll = poll or PollPolicy()
        #: Size and speed bounds of every download of this client.
        self.download_limits = download_limits or DownloadLimits()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._transport.base_url!r})"

    @property
    def base_url(self) -> str:
        """The API base URL in use."""
        return self._transport.base_url

    @property
    def transport(self) -> Transport:
        """The transport (session, limiter, retry policy) shared by every call."""
        return self._transport

    @property
    def request_counts(self) -> Mapping[str, int]:
        """Requests sent so far by route (retries included), e.g. ``{"GET /tasks/{id}": 12}``."""
        return dict(self._transport.request_counts)

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned HTTP session (an injected one stays open)."""
        await self._transport.aclose()

    async def _fetch_link(
        self,
        link: str,
        destination: str | os.PathLike[str],
        refresh: Callable[[], Awaitable[str]],
        *,
        checksum: bool,
        progress: DownloadProgress | None,
    ) -> DownloadedFile:
        """Stream ``link`` to ``destination`` atomically; ``refresh`` renews a refused link."""
        return await fetch_to_file(
            self._transport,
            link,
            pathlib.Path(destination),
            refresh=refresh,
            checksum=checksum,
            progress=progress,
            limits=self.download_limits,
        )

    async def _stream_link(
        self,
        link: str,
        writer: OutputWriter,
        refresh: Callable[[], Awaitable[str]],
        *,
        progress: DownloadProgress | None,
    ) -> StoredOutput:
        """Stream ``link`` into ``writer`` and commit it; ``refresh`` renews a refused link."""
        return await fetch_to(
            self._transport,
            link,
            writer,
            refresh=refresh,
            progress=progress,
            limits=self.download_limits,
        )


async def poll_until(
    read: Callable[[T | None], Awaitable[T | None]],
    is_done: Callable[[T], bool],
    *,
    ident: str,
    policy: PollPolicy,
    timeout: float | None,
    initial: T | None = None,
    wakeups: Wakeups | None = None,
    interval: float | None = None,
    unconfirmed: Callable[[T], bool] | None = None,
) -> T:
    """Read until ``is_done``; the one wait loop of every client.

    ``read(last)`` returns the newest snapshot, or None when this read saw nothing new (a
    tolerated 404, a status that is not final yet). Between reads it sleeps the policy's
    backoff, or ``interval`` when given; a wake-up from ``wakeups`` ends the sleep early.
    After a wake-up, while ``unconfirmed(last)`` says the read did not show what woke it (a
    stale snapshot), it reads again with a short backoff (:data:`HINT_RETRIES` times) instead
    of sleeping the whole ``interval``.
    ``timeout`` bounds the whole wait, a read in progress included, and raises
    :class:`~audioshake_async.errors.TaskTimeoutError` with the last snapshot.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    last = initial
    woken = anyio.Event()

    def wake() -> None:
        woken.set()

    unsubscribe = wakeups(wake) if wakeups is not None else None
    try:
        poll_number = 0
        hinted, hint_tries = False, 0
        while last is None or not is_done(last):
            # Reset before reading: a wake-up that arrives during the read is not missed.
            woken = anyio.Event()
            fresh = await _read_before(read, last, deadline, ident, timeout)
            if fresh is not None:
                last = fresh
                if is_done(fresh):
                    break
            poll_number += 1
            delay = (
                interval if interval is not None else policy.interval(poll_number, random.random())
            )
            hinted = hinted and unconfirmed is not None and last is not None and unconfirmed(last)
            if hinted and hint_tries < HINT_RETRIES:
                hint_tries += 1
                delay = min(delay, HINT_RETRY_BASE * 2 ** (hint_tries - 1))
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.TaskTimeoutError(ident, timeout or 0.0, last)
                delay = min(delay, remaining)
            with anyio.move_on_after(delay):
                await woken.wait()
            if woken.is_set():
                hinted, hint_tries = True, 0
    finally:
        if unsubscribe is not None:
            unsubscribe()
    return last


async def _read_before(
    read: Callable[[T | None], Awaitable[T | None]],
    last: T | None,
    deadline: float | None,
    ident: str,
    timeout: float | None,
) -> T | None:
    """One read that gives up at ``deadline`` (its retries included)."""
    if deadline is None:
        return await read(last)
    with anyio.move_on_after(deadline - time.monotonic()):
        return await read(last)
    raise errors.TaskTimeoutError(ident, timeout or 0.0, last)


async def walk_pages(
    fetch: Callable[[int], Awaitable[Sequence[T]]],
    key: Callable[[T], str],
    *,
    page_size: int,
    limit: int | None = None,
) -> AsyncIterator[T]:
    """Every item of a paged listing, page ``0, 1, ...`` until a short one; each item once.

    Items created meanwhile shift older ones to later pages, so repeats (by ``key``) are
    skipped.
    """
    seen: set[str] = set()
    number = 0
    yielded = 0
    while True:
        page = await fetch(number)
        for item in page:
            ident = key(item)
            if ident in seen:
                continue
            seen.add(ident)
            yield item
            yielded += 1
            if limit is not None and yielded >= limit:
                return
        if len(page) < page_size:
            return
        number += 1


def per_file_progress(
    progress: FilesProgress | None, path: pathlib.Path
) -> DownloadProgress | None:
    """``progress`` bound to one file: called with ``path``'s name before its byte counts."""
    if progress is None:
        return None
    callback, name = progress, path.name

    def report(received: int, total: int | None) -> None:
        callback(name, received, total)

    return report


async def download_all(
    planned: Sequence[tuple[Output, pathlib.Path]],
    fetch: Callable[[Output, pathlib.Path, DownloadProgress | None], Awaitable[DownloadedFile]],
    *,
    concurrency: int,
    progress: FilesProgress | None = None,
) -> list[pathlib.Path]:
    """Download each output to its planned path concurrently; the paths in ``planned`` order.

    Plan the paths with :func:`~audioshake_async.core.files.plan_output_paths` (a server-sent
    name never writes outside the directory). Each file lands atomically; one failure (a
    network error, a full disk) fails that file only: the others are still written, then
    :class:`~audioshake_async.errors.DownloadError` lists every failure. ``fetch`` gets the
    file's share of ``progress`` (``progress(file_name, received, total)``, see
    :data:`FilesProgress`), or None without one.
    """
    written: dict[int, pathlib.Path] = {}
    failures: list[str] = []
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def one(index: int, output: Output, path: pathlib.Path) -> None:
        async with limiter:
            try:
                done = await fetch(output, path, per_file_progress(progress, path))
            except (errors.AudioShakeError, OSError) as exc:
                failures.append(f"{output.filename}: {exc}")
            else:
                written[index] = done.path

    async with anyio.create_task_group() as group:
        for index, (output, path) in enumerate(planned):
            group.start_soon(one, index, output, path)
    if failures:
        raise errors.DownloadError(
            f"{len(failures)} of {len(planned)} outputs failed: " + "; ".join(failures)
        )
    return [written[i] for i in sorted(written)]


#: Reads that may return an older snapshot before an output is declared gone.
STALE_READ_ATTEMPTS = 4


async def fresh_link_from(
    lookup: Callable[[], Awaitable[str | None]], retry: RetryPolicy, missing: str
) -> str:
    """A renewed download link from ``lookup`` (one read of the task or job).

    A read can return a stale snapshot that does not list the output yet: it is read a few
    times, with backoff, before :class:`~audioshake_async.errors.DownloadError` (``missing``).
    """
    for attempt in range(1, STALE_READ_ATTEMPTS + 1):
        link = await lookup()
        if link is not None:
            return link
        if attempt < STALE_READ_ATTEMPTS:
            await anyio.sleep(retry.delay(attempt, random.random()))
    raise errors.DownloadError(missing)
