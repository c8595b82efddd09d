"""The AudioShake client: the assets, tasks, models and webhooks resources, and downloads."""

from __future__ import annotations

import builtins
import math
import os
import pathlib
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

import aiohttp
import anyio

from . import errors
from .core.download import DownloadedFile, DownloadProgress, fetch_to_file
from .core.files import safe_filename
from .core.http import DEFAULT_RATE_LIMIT, PollPolicy, RetryPolicy, structure_as
from .core.transport import Retry, Timeouts, Transport
from .core.upload import ProgressCallback, prepare_upload
from .models import (
    Asset,
    Model,
    Output,
    Target,
    Task,
    UsageMonth,
    Webhook,
    merge_task_snapshot,
)
from .tasks.wire import (
    DEFAULT_BASE_URL,
    MAX_PAGE_SIZE,
    build_create_task_body,
    parse_asset,
    parse_assets,
    parse_models,
    parse_task,
    parse_tasks,
    parse_usage,
    parse_webhooks,
    validate_page,
    validate_upload,
)

if TYPE_CHECKING:
    from .batch import BatchResult, ProgressHook
    from .batch.journal import Journal
    from .webhooks import WebhookReceiver

__all__ = ["AudioShake"]

ENV_API_KEY = "AUDIOSHAKE_API_KEY"
ENV_BASE_URL = "AUDIOSHAKE_BASE_URL"
#: Seconds between safety polls while deliveries drive a wait (deliveries can be lost).
DEFAULT_SAFETY_POLL = 180.0
#: Reads of a task that may return an older snapshot before an output is declared gone.
STALE_READ_ATTEMPTS = 4


class AssetsResource:
    """``/assets``: upload local files (72 h lifetime) and look them up."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def upload(
        self,
        source: str | os.PathLike[str] | bytes | BinaryIO,
        *,
        filename: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Asset:
        """Upload a file (path, bytes or seekable binary file), streamed in constant memory.

        The file is checked first (exists, regular, not empty, at most 2 GB, a documented input
        type); a failed attempt is retried with the file read again from its start.
        """
        prepared = await prepare_upload(source, filename=filename, check=validate_upload)
        data = await self._transport.request(
            "POST",
            "/assets",
            route="POST /assets",
            body_factory=lambda: prepared.multipart(progress),
            transfer=True,
        )
        return parse_asset(data)

    async def list(self) -> list[Asset]:
        """Every asset of the account (no pagination is documented)."""
        return parse_assets(await self._transport.request("GET", "/assets", route="GET /assets"))

    async def get(self, asset_id: str) -> Asset:
        """One asset, with a fresh signed ``link`` to its source file."""
        _require_id(asset_id, "asset_id")
        data = await self._transport.request("GET", f"/assets/{asset_id}", route="GET /assets/{id}")
        return parse_asset(data)


class TasksResource:
    """``/tasks``: create processing tasks, read them, list them, wait for them."""

    def __init__(self, transport: Transport, poll: PollPolicy) -> None:
        self._transport = transport
        self._poll = poll

    async def create(
        self,
        *,
        targets: Sequence[Target],
        asset_id: str | None = None,
        url: str | None = None,
        metadata: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Task:
        """Create a task from exactly one source (``asset_id`` or public ``url``), 1-20 targets.

        Never retried once the request may have reached the server: there is no idempotency
        key, so a blind retry can bill twice. Such an outcome raises
        :class:`~audioshake_async.errors.AmbiguousRequestError`; look the task up by its
        ``metadata`` (see :meth:`find_by_metadata`) before creating it again.
        """
        body = build_create_task_body(
            targets=targets, asset_id=asset_id, url=url, metadata=metadata, extra=extra
        )
        data = await self._transport.request(
            "POST", "/tasks", route="POST /tasks", json_body=body, retry=Retry.BEFORE_SEND
        )
        return parse_task(data)

    async def get(self, task_id: str) -> Task:
        """The task now, with fresh download links (links live one hour)."""
        _require_id(task_id, "task_id")
        data = await self._transport.request("GET", f"/tasks/{task_id}", route="GET /tasks/{id}")
        return parse_task(data)

    async def page(self, *, skip: int = 0, take: int = MAX_PAGE_SIZE) -> builtins.list[Task]:
        """One page of ``GET /tasks`` (newest first on the emulator; order is undocumented)."""
        validate_page(skip, take)
        data = await self._transport.request(
            "GET", "/tasks", route="GET /tasks", params={"skip": skip, "take": take}
        )
        return parse_tasks(data)

    async def list(
        self, *, page_size: int = MAX_PAGE_SIZE, limit: int | None = None
    ) -> AsyncIterator[Task]:
        """Every task of the account, walking pages until a short one; each task once."""
        validate_page(0, page_size)
        seen: set[str] = set()
        skip = 0
        yielded = 0
        while True:
            page = await self.page(skip=skip, take=page_size)
            for task in page:
                # New tasks shift older ones to later pages: skip the repeats.
                if task.id in seen:
                    continue
                seen.add(task.id)
                yield task
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if len(page) < page_size:
                return
            skip += page_size

    async def find_by_metadata(self, metadata: str, *, max_pages: int = 10) -> Task | None:
        """The newest task whose ``metadata`` equals ``metadata``, among recent pages."""
        async for task in self.list(limit=max_pages * MAX_PAGE_SIZE):
            if task.metadata == metadata:
                return task
        return None

    async def wait(
        self,
        task_id: str | Task,
        timeout: float | None = None,
        raise_on_error: bool = False,
        *,
        poll: PollPolicy | None = None,
        on_update: Callable[[Task], Any] | None = None,
        webhooks: WebhookReceiver | None = None,
        safety_poll: float = DEFAULT_SAFETY_POLL,
    ) -> Task:
        """Wait until every target is ``completed`` or ``error``; return the final task.

        Without ``webhooks``, polls back off from ``poll.initial_interval`` to
        ``poll.max_interval``, through the client's shared rate limiter. With a
        :class:`~audioshake_async.webhooks.WebhookReceiver`, one initial GET finds a task that
        already finished; after that each delivery about the task triggers one authenticated
        GET (deliveries are unsigned hints), and a slow safety poll every ``safety_poll``
        seconds covers lost deliveries. ``timeout`` (seconds, None for no limit) raises
        :class:`~audioshake_async.errors.TaskTimeoutError` carrying the last snapshot;
        ``raise_on_error`` raises :class:`~audioshake_async.errors.TaskFailedError` if a target
        failed (otherwise partial success is returned as is).
        """
        policy = poll or self._poll
        task = task_id if isinstance(task_id, Task) else None
        ident = task.id if task is not None else str(task_id)
        _require_id(ident, "task_id")
        deadline = None if timeout is None else time.monotonic() + timeout
        delivered = anyio.Event()

        def on_delivery(_: Task) -> None:
            delivered.set()

        unsubscribe = webhooks.subscribe(ident, on_delivery) if webhooks is not None else None
        try:
            poll_number = 0
            while task is None or not task.is_done:
                if webhooks is not None:
                    delivered = anyio.Event()  # reset before reading: no delivery is missed
                fresh = await self._read_before(ident, deadline, timeout, task)
                task = merge_task_snapshot(task, fresh)
                if on_update is not None:
                    on_update(task)
                if task.is_done:
                    break
                poll_number += 1
                if webhooks is not None:
                    delay = safety_poll
                else:
                    delay = policy.interval(poll_number, random.random())
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise errors.TaskTimeoutError(ident, timeout or 0.0, task)
                    delay = min(delay, remaining)
                with anyio.move_on_after(delay):
                    await delivered.wait()
        finally:
            if unsubscribe is not None:
                unsubscribe()
        if raise_on_error and task.failed_targets:
            raise errors.TaskFailedError(task)
        return task

    async def _read_before(
        self, task_id: str, deadline: float | None, timeout: float | None, last: Task | None
    ) -> Task:
        """One read of the task that gives up at ``deadline`` (its retries included)."""
        if deadline is None:
            return await self.get(task_id)
        with anyio.move_on_after(deadline - time.monotonic()):
            return await self.get(task_id)
        raise errors.TaskTimeoutError(task_id, timeout or 0.0, last)

    async def statistics(self, name: str = "usage") -> builtins.list[UsageMonth]:
        """Monthly usage (``name="usage"``: month, targets, minutes as Decimal)."""
        if name != "usage":
            raise errors.ValidationError(
                "statistics() parses name='usage'; use distribution() for name='distribution'"
            )
        data = await self._transport.request(
            "GET", "/tasks/statistics", route="GET /tasks/statistics", params={"name": name}
        )
        return parse_usage(data)

    async def distribution(self) -> builtins.list[dict[str, Any]]:
        """Per-model usage (``name=distribution``); its shape is undocumented, so it is raw JSON."""
        data = await self._transport.request(
            "GET",
            "/tasks/statistics",
            route="GET /tasks/statistics",
            params={"name": "distribution"},
        )
        if not isinstance(data, list):
            raise errors.ResponseParseError("expected a list from statistics?name=distribution")
        return data


class ModelsResource:
    """``/models``: the models this account may use, with their formats and prices."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def list(self) -> list[Model]:
        """Every model; ``model.id`` is what ``Target.model`` takes."""
        return parse_models(await self._transport.request("GET", "/models", route="GET /models"))


class WebhooksResource:
    """``/webhooks`` registration.

    Only the migration guide mentions ``POST /webhooks``; its body (``{"url": ...}``), response
    and the list/delete routes are inferred, not documented. The documented route is the
    dashboard setting (Settings > Webhook URL).
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def register(self, url: str) -> Webhook:
        """Register ``url`` for task deliveries (inferred API)."""
        if not url.startswith(("https://", "http://")):
            raise errors.ValidationError("a webhook URL must be http(s)")
        data = await self._transport.request(
            "POST", "/webhooks", route="POST /webhooks", json_body={"url": url}
        )
        return structure_as(data, Webhook, "webhook")

    async def list(self) -> list[Webhook]:
        """Registered webhooks (inferred API)."""
        return parse_webhooks(
            await self._transport.request("GET", "/webhooks", route="GET /webhooks")
        )

    async def delete(self, webhook_id: str) -> None:
        """Remove a registration (inferred API)."""
        _require_id(webhook_id, "webhook_id")
        await self._transport.request(
            "DELETE", f"/webhooks/{webhook_id}", route="DELETE /webhooks/{id}"
        )


def _require_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip() or "/" in value or value in (".", ".."):
        raise errors.ValidationError(f"{what} must be a non-empty id, got {value!r}")


class AudioShake:
    """Async client of the AudioShake Tasks API.

    Use it as ``async with AudioShake() as client:`` and share one instance: it holds one
    connection pool and one rate limiter (60 requests/s by default, the documented account
    limit) for every call. ``api_key`` and ``base_url`` fall back to ``AUDIOSHAKE_API_KEY`` and
    ``AUDIOSHAKE_BASE_URL``. A ``session`` you pass is used and left open; otherwise the client
    owns one and closes it on exit.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        rate_limit: float | None = DEFAULT_RATE_LIMIT,
        session: aiohttp.ClientSession | None = None,
        poll: PollPolicy | None = None,
        connection_limit: int = 100,
        trust_env: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        if not key or not key.strip():
            raise errors.ConfigurationError(
                f"no API key: pass api_key= or set {ENV_API_KEY} (keys are in the dashboard)"
            )
        if timeout <= 0 or not math.isfinite(timeout):
            raise errors.ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if max_retries < 0:
            raise errors.ConfigurationError(f"max_retries must be >= 0, got {max_retries!r}")
        if rate_limit is not None and not (rate_limit > 0 and math.isfinite(rate_limit)):
            raise errors.ConfigurationError(f"rate_limit must be positive, got {rate_limit!r}")
        url = base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        retry_policy = retry or RetryPolicy(max_retries=max_retries)
        self._transport = Transport(
            base_url=url,
            auth_headers={"x-api-key": key.strip()},
            timeouts=Timeouts(request=timeout),
            retry=retry_policy,
            rate_limit=rate_limit,
            session=session,
            connection_limit=connection_limit,
            trust_env=trust_env,
        )
        self.poll = poll or PollPolicy()
        self.assets = AssetsResource(self._transport)
        self.tasks = TasksResource(self._transport, self.poll)
        self.models = ModelsResource(self._transport)
        self.webhooks = WebhooksResource(self._transport)

    def __repr__(self) -> str:
        return f"AudioShake(base_url={self._transport.base_url!r})"

    @property
    def base_url(self) -> str:
        """The API base URL in use."""
        return self._transport.base_url

    @property
    def request_counts(self) -> Mapping[str, int]:
        """Requests sent so far by route (retries included), e.g. ``{"GET /tasks/{id}": 12}``."""
        return dict(self._transport.request_counts)

    @property
    def transport(self) -> Transport:
        """The transport (session, limiter, retry policy) shared by every call."""
        return self._transport

    async def __aenter__(self) -> AudioShake:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the owned HTTP session (an injected one stays open)."""
        await self._transport.aclose()

    # ------------------------------------------------------------------ downloads

    async def fetch_output(
        self,
        task: Task,
        output: Output,
        destination: str | os.PathLike[str],
        *,
        checksum: bool = True,
        progress: DownloadProgress | None = None,
    ) -> DownloadedFile:
        """Download one output to ``destination`` atomically; an expired link is refreshed."""
        wanted = (output.name, output.format)
        # Two targets can each have an output of the same name and format (vocals and a
        # high-quality variant): the fresh link must come from this output's own target.
        owner = next((t for t in task.targets if any(o is output for o in t.output)), None)

        def fresh_link(fresh: Task) -> str | None:
            targets = fresh.targets
            if owner is not None:
                targets = tuple(t for t in targets if t.id == owner.id) or tuple(
                    t for t in targets if (t.model, t.variant) == (owner.model, owner.variant)
                )
            for target in targets:
                for candidate in target.output:
                    if (candidate.name, candidate.format) == wanted:
                        return candidate.link
            return None

        async def refresh() -> str:
            # A read can return a stale snapshot without the output yet: look a few times.
            for attempt in range(1, STALE_READ_ATTEMPTS + 1):
                link = fresh_link(await self.tasks.get(task.id))
                if link is not None:
                    return link
                if attempt < STALE_READ_ATTEMPTS:
                    await anyio.sleep(self._transport.retry.delay(attempt, random.random()))
            raise errors.DownloadError(f"task {task.id} no longer lists output {output.filename!r}")

        return await fetch_to_file(
            self._transport,
            output.link,
            pathlib.Path(destination),
            refresh=refresh,
            checksum=checksum,
            progress=progress,
        )

    async def download(
        self,
        task: Task | str,
        destination: str | os.PathLike[str],
        *,
        concurrency: int = 4,
        checksum: bool = False,
    ) -> list[pathlib.Path]:
        """Download every output of the completed targets into ``destination``.

        Files are named ``<output name>.<format>`` (sanitized: a server-sent name can never
        write outside ``destination``). Each lands atomically. If some fail, the others are
        still written and :class:`~audioshake_async.errors.DownloadError` lists the failures.
        """
        if isinstance(task, str):
            task = await self.tasks.get(task)
        directory = pathlib.Path(destination)
        planned = plan_output_paths(task.outputs, directory)
        results: dict[int, pathlib.Path] = {}
        failures: list[str] = []
        limiter = anyio.CapacityLimiter(max(1, concurrency))

        async def one(index: int, output: Output, path: pathlib.Path) -> None:
            async with limiter:
                try:
                    done = await self.fetch_output(task, output, path, checksum=checksum)
                except (errors.AudioShakeError, OSError) as exc:
                    # A local disk error fails this file only; the others are still written.
                    failures.append(f"{output.filename}: {exc}")
                else:
                    results[index] = done.path

        async with anyio.create_task_group() as group:
            for index, (output, path) in enumerate(planned):
                group.start_soon(one, index, output, path)
        if failures:
            raise errors.DownloadError(
                f"{len(failures)} of {len(planned)} outputs failed: " + "; ".join(failures)
            )
        return [results[i] for i in sorted(results)]

    # ------------------------------------------------------------------ batch

    def batch(
        self,
        inputs: Any,
        *,
        targets: Sequence[Target],
        out_dir: str | os.PathLike[str],
        journal: str | os.PathLike[str] | Journal | None = None,
        progress: ProgressHook | None = None,
        **options: Any,
    ) -> AsyncIterator[BatchResult]:
        """Process a catalog concurrently; see :func:`audioshake_async.batch.run_batch`."""
        from .batch import run_batch

        return run_batch(
            self,
            inputs,
            targets=targets,
            out_dir=out_dir,
            journal=journal,
            progress=progress,
            **options,
        )


def plan_output_paths(
    outputs: Sequence[Output], directory: pathlib.Path
) -> list[tuple[Output, pathlib.Path]]:
    """``<name>.<format>`` inside ``directory`` for each output, sanitized and de-duplicated."""
    used: set[str] = set()
    planned = []
    for output in outputs:
        base = safe_filename(output.name)
        fmt = output.format
        name = safe_filename(base, fmt)
        counter = 2
        while name.lower() in used:
            name = safe_filename(f"{base}_{counter}", fmt)
            counter += 1
        used.add(name.lower())
        planned.append((output, directory / name))
    return planned
