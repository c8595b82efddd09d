"""The Tasks API's resources: ``/assets``, ``/tasks``, ``/models``, ``/webhooks``."""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import errors
from ..core.http import PollPolicy, require_id, structure_as
from ..core.service import poll_until, walk_pages
from ..core.transport import Retry, Transport
from ..core.upload import ProgressCallback, prepare_upload
from ..models import Asset, Model, Target, Task, UsageMonth, Webhook, merge_task_snapshot
from .webhooks import terminal_keys
from .wire import (
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
    from .webhooks import WebhookReceiver


__all__ = ["AssetsResource", "ModelsResource", "TasksResource", "WebhooksResource"]

#: Seconds between safety polls while deliveries drive a wait (deliveries can be lost).
DEFAULT_SAFETY_POLL = 180.0


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
        require_id(asset_id, "asset_id")
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
        require_id(task_id, "task_id")
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

        async def fetch(number: int) -> builtins.list[Task]:
            return await self.page(skip=number * page_size, take=page_size)

        async for task in walk_pages(fetch, _task_id, page_size=page_size, limit=limit):
            yield task

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
        initial = task_id if isinstance(task_id, Task) else None
        ident = require_id(initial.id if initial is not None else str(task_id), "task_id")

        # What the last delivery announced (terminal target, status): a read must show it.
        announced: set[tuple[str, str]] = set()

        async def read(last: Task | None) -> Task:
            fresh = await self.get(ident)
            if webhooks is not None:
                webhooks.confirm(fresh)
            task = merge_task_snapshot(last, fresh)
            if on_update is not None:
                on_update(task)
            return task

        def subscribe(wake: Callable[[], None]) -> Callable[[], None]:
            assert webhooks is not None

            def on_delivery(delivery: Task) -> None:
                announced.clear()
                announced.update(terminal_keys(delivery))
                wake()

            return webhooks.subscribe(ident, on_delivery)

        def unconfirmed(task: Task) -> bool:
            return not announced <= terminal_keys(task)

        task = await poll_until(
            read,
            _is_done,
            ident=ident,
            policy=poll or self._poll,
            timeout=timeout,
            initial=initial,
            wakeups=subscribe if webhooks is not None else None,
            interval=safety_poll if webhooks is not None else None,
            unconfirmed=unconfirmed if webhooks is not None else None,
        )
        if raise_on_error and task.failed_targets:
            raise errors.TaskFailedError(task)
        return task

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
        require_id(webhook_id, "webhook_id")
        await self._transport.request(
            "DELETE", f"/webhooks/{webhook_id}", route="DELETE /webhooks/{id}"
        )


def _task_id(task: Task) -> str:
    return task.id


def _is_done(task: Task) -> bool:
    return task.is_done
