"""Receiving AudioShake webhook deliveries: wake waiters without polling, safely.

AudioShake POSTs the full task JSON to a registered URL each time one target turns
``completed`` or ``error`` (one delivery per target, no envelope, **no signature**). So a
delivery is a hint, never the truth:

- the receiver URL carries an unguessable secret path token, compared in constant time;
- bodies are size-limited and must parse as a task; a bad delivery gets a 4xx, is logged
  without its body, and changes nothing;
- deliveries are deduplicated by (task id, target id, status) and may arrive repeated, out of
  order, stale or not at all;
- a delivery only wakes whoever waits on that task; the waiter then confirms with one
  authenticated ``GET /tasks/{id}`` and takes output links from that answer only, never from
  the delivery (a forged delivery naming a link on a foreign host downloads nothing).

Mount :meth:`WebhookReceiver.app` (or :meth:`add_routes`) in your own aiohttp application, or
start :meth:`WebhookReceiver.serve` for scripts and the CLI.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import attrs
from aiohttp import web

from .. import errors
from ..models import Task
from .wire import parse_task

__all__ = ["DeliveryListener", "DeliveryOutcome", "WebhookReceiver", "WebhookStats"]

logger = logging.getLogger("audioshake_async.webhooks")

#: Called with the task snapshot a delivery carried (a hint: confirm before trusting it).
DeliveryListener = Callable[[Task], None]

ASGIScope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]

DEFAULT_MAX_BODY = 1 << 20
#: Recent deliveries remembered for tasks nobody waits on yet (a wait that starts late).
RECENT_TASKS = 10_000


@attrs.define
class WebhookStats:
    """What the receiver saw."""

    accepted: int = 0
    duplicates: int = 0
    unwatched: int = 0
    rejected: int = 0


@attrs.frozen
class _Seen:
    task: Task
    keys: frozenset[tuple[str, str]]


@attrs.frozen
class DeliveryOutcome:
    """What to answer a delivery: an HTTP status and a one-word result."""

    status: int
    #: ``accepted``, ``duplicate``, or why it was rejected.
    result: str


class WebhookReceiver:
    """An aiohttp endpoint for AudioShake deliveries and a registry of waiters.

    ``token`` is the secret path segment (generated when not given); the delivery URL is
    ``<your public base URL>`` + :attr:`path`.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        path_prefix: str = "/audioshake/webhooks",
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._token = token or secrets.token_urlsafe(32)
        if len(self._token) < 16:
            raise errors.ValidationError("a webhook path token needs at least 16 characters")
        self.path_prefix = "/" + path_prefix.strip("/")
        self.max_body = max_body
        self.stats = WebhookStats()
        self._listeners: dict[str, set[DeliveryListener]] = collections.defaultdict(set)
        self._global: set[DeliveryListener] = set()
        # Per recent task: its last delivery and the (target id, status) pairs seen, evicted
        # together, oldest first, so memory stays bounded however long the receiver runs.
        self._recent: collections.OrderedDict[str, _Seen] = collections.OrderedDict()
        self.base_url: str | None = None

    def __repr__(self) -> str:
        return f"WebhookReceiver(path_prefix={self.path_prefix!r})"

    # ------------------------------------------------------------------ where it lives

    @property
    def path(self) -> str:
        """The secret delivery path (prefix + token): keep it out of logs and screenshots."""
        return f"{self.path_prefix}/{self._token}"

    def url_for(self, public_base_url: str) -> str:
        """The URL to register: ``public_base_url`` + the secret path."""
        return public_base_url.rstrip("/") + self.path

    @property
    def url(self) -> str:
        """The delivery URL of a receiver started with :meth:`serve`."""
        if self.base_url is None:
            raise errors.ConfigurationError("the receiver is not serving: use url_for(base)")
        return self.url_for(self.base_url)

    def add_routes(self, app: web.Application) -> None:
        """Add the delivery route to an existing aiohttp application."""
        app.router.add_post(self.path_prefix + "/{token}", self.handle)

    def app(self) -> web.Application:
        """A sub-application; mount it with ``app.add_subapp("/", receiver.app())``."""
        sub = web.Application(client_max_size=self.max_body)
        self.add_routes(sub)
        return sub

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Run a standalone server; yields its base URL (``http://host:port``)."""
        app = web.Application(client_max_size=self.max_body)
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
            # The bound port (``port=0`` picks a free one); ``addresses`` is public API.
            bound = runner.addresses[0][1] if runner.addresses else port
            shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
            self.base_url = f"http://{shown}:{bound}"
            yield self.base_url
        finally:
            self.base_url = None
            await runner.cleanup()

    # ------------------------------------------------------------------ waiters

    def subscribe(self, task_id: str, listener: DeliveryListener) -> Callable[[], None]:
        """Call ``listener`` on each new delivery about ``task_id``; returns an unsubscriber.

        A delivery that arrived shortly before the subscription is replayed at once.
        """
        self._listeners[task_id].add(listener)
        recent = self._recent.get(task_id)
        if recent is not None:
            listener(recent.task)

        def unsubscribe() -> None:
            listeners = self._listeners.get(task_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[task_id]

        return unsubscribe

    def add_listener(self, listener: DeliveryListener) -> Callable[[], None]:
        """Call ``listener`` on every new delivery (any task); returns a remover."""
        self._global.add(listener)
        return lambda: self._global.discard(listener)

    # ------------------------------------------------------------------ the endpoint

    def accept(self, token: str, body: bytes) -> DeliveryOutcome:
        """Judge one delivery (any web framework): check, deduplicate, wake the waiters.

        ``token`` is the last path segment the delivery was posted to, ``body`` its raw bytes
        (read at most :attr:`max_body` + 1 of them). The outcome says what to answer.
        """
        if not self._token_ok(token):
            return self._reject(404, "not found")
        if len(body) > self.max_body:
            return self._reject(413, "body too large")
        try:
            task = parse_task(json.loads(body))
        except (ValueError, errors.ResponseParseError):
            return self._reject(400, "not a task")
        if not task.id or not task.targets:
            return self._reject(422, "task without id or targets")
        seen = self._recent.get(task.id)
        keys = frozenset((t.id, t.status) for t in task.targets if t.is_terminal)
        # Nothing terminal, or nothing new: a repeat or a stale snapshot wakes nobody.
        if not keys or (seen is not None and keys <= seen.keys):
            self.stats.duplicates += 1
            return DeliveryOutcome(200, "duplicate")
        self._remember(task, keys | seen.keys if seen is not None else keys)
        watchers = self._listeners.get(task.id)
        if not watchers:
            self.stats.unwatched += 1
        self.stats.accepted += 1
        for listener in [*(watchers or ()), *self._global]:
            try:
                listener(task)
            except Exception:
                logger.exception("webhook listener failed")
        return DeliveryOutcome(200, "accepted")

    def _reject(self, status: int, reason: str) -> DeliveryOutcome:
        self.stats.rejected += 1
        # Never the body, never the path (it holds the secret).
        logger.warning("webhook delivery rejected (%d %s)", status, reason)
        return DeliveryOutcome(status, reason)

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler: read at most ``max_body`` + 1 bytes, then :meth:`accept`."""
        token = request.match_info.get("token", "")
        length = request.content_length
        if length is not None and length > self.max_body:
            outcome = self.too_large(token)
        else:
            # read(n) returns what has arrived, up to n: a chunked body needs several reads.
            body = bytearray()
            while len(body) <= self.max_body:
                chunk = await request.content.read(self.max_body + 1 - len(body))
                if not chunk:
                    break
                body += chunk
            outcome = self.accept(token, bytes(body))
        return web.json_response({"status": outcome.result}, status=outcome.status)

    def too_large(self, token: str) -> DeliveryOutcome:
        """The outcome for a body announced larger than :attr:`max_body` (before reading it)."""
        if not self._token_ok(token):
            return self._reject(404, "not found")
        return self._reject(413, "body too large")

    def _token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self._token.encode())

    def asgi_app(self) -> ASGIApp:
        """An ASGI application for FastAPI/Starlette: ``app.mount(receiver.path_prefix, ...)``.

        The token is the last segment of the request path, so it works mounted at any prefix.
        It must run in the event loop of the code that waits (the usual single-process app).
        """
        return _ASGIReceiver(self)

    def _remember(self, task: Task, keys: frozenset[tuple[str, str]]) -> None:
        self._recent[task.id] = _Seen(task, keys)
        self._recent.move_to_end(task.id)
        while len(self._recent) > RECENT_TASKS:
            self._recent.popitem(last=False)


class _ASGIReceiver:
    """The receiver as a plain ASGI application (no framework needed)."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver

    async def __call__(
        self,
        scope: ASGIScope,
        receive: ASGIReceive,
        send: ASGISend,
    ) -> None:
        if scope["type"] == "lifespan":
            await _serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope.get("method") != "POST":
            await _respond(send, DeliveryOutcome(405, "method not allowed"))
            return
        token = str(scope.get("path", "")).rstrip("/").rpartition("/")[2]
        limit = self.receiver.max_body
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _respond(send, self.receiver.too_large(token))
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit or not message.get("more_body", False):
                break
        await _respond(send, self.receiver.accept(token, bytes(body)))


def _content_length(scope: ASGIScope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _respond(send: ASGISend, outcome: DeliveryOutcome) -> None:
    body = json.dumps({"status": outcome.result}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": outcome.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _serve_lifespan(receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
