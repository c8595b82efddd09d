"""Connection bounds of the standalone webhook server: a cap, and a deadline per request head.

aiohttp's server has a keep-alive timeout but no deadline for a request head and no connection
cap, so 3,000 half-open connections (slowloris) would all be held. Each connection's protocol
(aiohttp's own request handler) is wrapped: over the cap a connection is closed on arrival, and
one that has not started a request within ``read_timeout`` (after connecting or after its last
answer) is aborted. The handler reports when a request starts and ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["ConnectionGuard"]


class ConnectionGuard:
    """Makes the protocols of the standalone server and tracks its open connections."""

    def __init__(
        self,
        server: web.Server,
        max_connections: int,
        read_timeout: float,
        report: Callable[[str], None],
    ) -> None:
        self._server = server
        self._max = max_connections
        self._timeout = read_timeout
        self._report = report
        self._open: dict[Any, _Guarded] = {}

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    def protocol(self) -> asyncio.Protocol:
        """A protocol for a new connection (the ``create_server`` factory)."""
        if len(self._open) >= self._max:
            self._report("refused")
            return _Refused()
        return _Guarded(self, self._server())

    def request_started(self, transport: Any) -> None:
        """A request head arrived on ``transport``: its head deadline no longer applies."""
        guarded = self._open.get(transport)
        if guarded is not None:
            guarded.disarm()

    def request_finished(self, transport: Any) -> None:
        """The answer was sent: the next request head has ``read_timeout`` again."""
        guarded = self._open.get(transport)
        if guarded is not None:
            guarded.arm()

    def close_all(self) -> None:
        """Abort every open connection (the server is stopping)."""
        for guarded in list(self._open.values()):
            guarded.abort()

    def _opened(self, transport: Any, guarded: _Guarded) -> None:
        self._open[transport] = guarded

    def _closed(self, transport: Any) -> None:
        self._open.pop(transport, None)

    def _timed_out(self) -> None:
        self._report("timeout")


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Guarded(asyncio.Protocol):
    """aiohttp's request handler behind a head deadline; every event is passed on."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._guard._opened(transport, self)
        self.arm()
        self._inner.connection_made(transport)

    def arm(self) -> None:
        self.disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard._timeout, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        self._guard._timed_out()
        self.abort()

    def abort(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self._transport is not None:
            self._guard._closed(self._transport)
        self._inner.connection_lost(exc)
