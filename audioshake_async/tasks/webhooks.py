"""Receiving AudioShake webhook deliveries: wake waiters without polling, safely.

AudioShake POSTs the full task JSON to a registered URL each time one target turns
``completed`` or ``error`` (one delivery per target, no envelope, **no signature**). So a
delivery is a hint, never the truth:

- the receiver URL carries an unguessable secret path token, compared in constant time;
- bodies are size-limited, depth-limited and must parse as a task; a bad delivery gets a 4xx,
  is logged without its body, and changes nothing;
- a delivery only wakes whoever waits on that task; the waiter then confirms with an
  authenticated read and takes output links from that answer only, never from the delivery
  (a forged delivery naming a link on a foreign host downloads nothing);
- deliveries are deduplicated by (task id, target id, status) against *confirmed* changes only
  (:meth:`WebhookReceiver.confirm`): an unconfirmed one (early, forged, or read back stale)
  never hides the genuine delivery that follows it;
- the standalone server (:meth:`WebhookReceiver.serve`) bounds slow clients: a request head
  must arrive within ``read_timeout``, a body within ``body_timeout``, and at most
  ``max_connections`` connections are open at once.

Mount :meth:`WebhookReceiver.app` (or :meth:`add_routes`) in your own aiohttp application, or
start :meth:`WebhookReceiver.serve` for scripts and the CLI.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import attrs
from aiohttp import web

from .. import errors
from ..core.http import parse_json
from ..models import Task
from ._server import ConnectionGuard
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
#: Seconds a client may take to send a request head (slowloris bound of the standalone server).
DEFAULT_READ_TIMEOUT = 10.0
#: Seconds a client may take to send a whole body.
DEFAULT_BODY_TIMEOUT = 10.0
#: Connections the standalone server keeps open at once; more are closed on arrival.
DEFAULT_MAX_CONNECTIONS = 256
#: Recent deliveries remembered for tasks nobody waits on yet (a wait that starts late).
RECENT_TASKS = 10_000


@attrs.define
class WebhookStats:
    """What the receiver saw."""

    accepted: int = 0
    duplicates: int = 0
    unwatched: int = 0
    rejected: int = 0
    #: Bodies or request heads too slow (408 or closed), connections over the cap.
    timeouts: int = 0
    refused_connections: int = 0


@attrs.frozen
class _Seen:
    #: The last delivery (replayed to a late subscriber), if one arrived.
    task: Task | None
    #: (target id, status) pairs an authenticated read confirmed.
    confirmed: frozenset[tuple[str, str]]


def terminal_keys(task: Task) -> frozenset[tuple[str, str]]:
    """The (target id, status) pairs of ``task``'s terminal targets: what a delivery tells."""
    return frozenset((t.id, t.status) for t in task.targets if t.is_terminal)


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
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._token = token or secrets.token_urlsafe(32)
        if len(self._token) < 16:
            raise errors.ValidationError("a webhook path token needs at least 16 characters")
        self.path_prefix = "/" + path_prefix.strip("/")
        self.max_body = max_body
        if min(read_timeout, body_timeout) <= 0 or max_connections < 1:
            raise errors.ConfigurationError(
                "read_timeout and body_timeout must be positive, max_connections at least 1"
            )
        self.read_timeout = read_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.stats = WebhookStats()
        self._guard: ConnectionGuard | None = None
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
        """Run a standalone server; yields its base URL (``http://host:port``).

        Slow or idle clients are bounded: ``read_timeout`` for a request head (and idle
        keep-alive), ``body_timeout`` for a body, ``max_connections`` open at once.
        """
        app = web.Application(client_max_size=self.max_body)
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.read_timeout)
        await runner.setup()
        assert runner.server is not None
        guard = ConnectionGuard(
            runner.server, self.max_connections, self.read_timeout, self.stats_hook
        )
        server: asyncio.AbstractServer | None = None
        try:
            server = await asyncio.get_running_loop().create_server(guard.protocol, host, port)
            self._guard = guard
            # The bound port (``port=0`` picks a free one).
            bound = server.sockets[0].getsockname()[1] if server.sockets else port
            shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
            self.base_url = f"http://{shown}:{bound}"
            yield self.base_url
        finally:
            self.base_url = None
            self._guard = None
            if server is not None:
                server.close()
            guard.close_all()
            await runner.cleanup()

    def stats_hook(self, event: str) -> None:
        """Count a connection-level event of the standalone server (``timeout``, ``refused``)."""
        if event == "timeout":
            self.stats.timeouts += 1
        elif event == "refused":
            self.stats.refused_connections += 1
        logger.warning("webhook connection %s", event)

    @property
    def open_connections(self) -> int:
        """Connections the standalone server holds now (0 when not serving)."""
        return self._guard.open_connections if self._guard is not None else 0

    # ------------------------------------------------------------------ waiters

    def subscribe(self, task_id: str, listener: DeliveryListener) -> Callable[[], None]:
        """Call ``listener`` on each new delivery about ``task_id``; returns an unsubscriber.

        A delivery that arrived shortly before the subscription is replayed at once.
        """
        self._listeners[task_id].add(listener)
        recent = self._recent.get(task_id)
        if recent is not None and recent.task is not None:
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

    def confirm(self, task: Task) -> None:
        """Record what an authenticated read of ``task`` showed: later deliveries of these
        (target, status) pairs are duplicates. Only confirmed changes are deduplicated."""
        keys = terminal_keys(task)
        if not keys:
            return
        seen = self._recent.get(task.id)
        if seen is not None and keys <= seen.confirmed:
            return
        last = seen.task if seen is not None else None
        self._remember(task.id, last, keys | seen.confirmed if seen is not None else keys)

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
        task: Task | None = None
        with contextlib.suppress(errors.ResponseParseError):
            # Depth-guarded: a 200,000-deep array is a 400, not a RecursionError and a 500.
            task = parse_task(parse_json(body))
        if task is None:
            return self._reject(400, "not a task")
        if not task.id or not task.targets:
            return self._reject(422, "task without id or targets")
        seen = self._recent.get(task.id)
        keys = terminal_keys(task)
        # Nothing terminal, or nothing beyond what a read confirmed: nobody is woken. An
        # unconfirmed repeat does wake: the read after the first one may have been stale.
        if not keys or (seen is not None and keys <= seen.confirmed):
            self.stats.duplicates += 1
            return DeliveryOutcome(200, "duplicate")
        self._remember(task.id, task, seen.confirmed if seen is not None else frozenset())
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
        """The aiohttp handler: read at most ``max_body`` + 1 bytes within ``body_timeout``,
        then :meth:`accept`. A body too slow is answered 408 and its connection closed."""
        guard = self._guard
        if guard is not None:
            guard.request_started(request.transport)
        try:
            return await self._handle(request)
        finally:
            if guard is not None:
                guard.request_finished(request.transport)

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info.get("token", "")
        length = request.content_length
        if length is not None and length > self.max_body:
            outcome = self.too_large(token)
        else:
            # read(n) returns what has arrived, up to n: a chunked body needs several reads.
            body = bytearray()
            with anyio.move_on_after(self.body_timeout) as scope:
                while len(body) <= self.max_body:
                    chunk = await request.content.read(self.max_body + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
            if scope.cancelled_caught:
                self.stats.timeouts += 1
                logger.warning("webhook delivery body too slow: 408 after %g s", self.body_timeout)
                return web.json_response(
                    {"status": "body timeout"}, status=408, headers={"Connection": "close"}
                )
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

    def _remember(
        self, task_id: str, task: Task | None, confirmed: frozenset[tuple[str, str]]
    ) -> None:
        self._recent[task_id] = _Seen(task, confirmed)
        self._recent.move_to_end(task_id)
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
        with anyio.move_on_after(self.receiver.body_timeout) as reading:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > limit or not message.get("more_body", False):
                    break
        if reading.cancelled_caught:
            self.receiver.stats.timeouts += 1
            await _respond(send, DeliveryOutcome(408, "body timeout"))
            return
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
