"""A hostile server on loopback: one mode per misbehaviour of issue 15.

:class:`HostileAPI` is an aiohttp app that forwards every request to an upstream API (the
emulator) unless its ``mode`` hijacks the route, so a whole client or CLI run works until the
one hostile answer. :class:`HostileCDN` serves download links that misbehave. :func:`raw_server`
answers every connection with fixed bytes (a malformed HTTP answer aiohttp cannot produce).
Each records what it received, so tests can check what the client sent (never the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator

import aiohttp
import attrs
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from ._servers import serve

MiB = 1 << 20


class Mode(enum.Enum):
    """What the hostile API does to ``GET /tasks/{id}`` (everything else is forwarded)."""

    FORWARD = "forward"
    #: Item 1: a 200,000-deep array.
    DEEP = "deep"
    #: Item 2: a valid JSON body of ``huge_bytes``, chunked (no Content-Length).
    HUGE = "huge"
    #: Item 2: a Content-Length far over any cap, then a trickle.
    HUGE_DECLARED = "huge_declared"


class CDNMode(enum.Enum):
    """What the hostile CDN does to ``GET /files/{name}``."""

    #: Item 3: declares 5 GiB, sends 1 MiB and closes.
    HUGE_DECLARED = "huge_declared"
    #: Item 3: an endless chunked body.
    ENDLESS = "endless"
    #: Item 4: sends 64 KiB, then nothing (the connection stays open).
    STALL = "stall"
    #: Item 14: redirects to ``redirect_to`` (a link on the API host).
    REDIRECT = "redirect"


def deep_json(depth: int = 200_000) -> bytes:
    return b"[" * depth + b"]" * depth


@attrs.define
class Received:
    method: str
    path: str
    headers: CIMultiDict[str]


class HostileAPI:
    """Forwards to ``upstream`` except the routes its ``mode`` takes over."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.mode = Mode.FORWARD
        self.huge_bytes = 300 * MiB
        self.received: list[Received] = []
        #: Bytes the HUGE modes wrote before the client stopped reading.
        self.sent_bytes = 0
        self.app = web.Application(client_max_size=1 << 30)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session: aiohttp.ClientSession | None = None

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for r in self.received if r.method == method and r.path.startswith(prefix))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(Received(request.method, request.path, CIMultiDict(request.headers)))
        parts = request.path.strip("/").split("/")
        if request.method == "GET" and len(parts) == 2 and parts[0] == "tasks":
            if self.mode is Mode.DEEP:
                return web.Response(body=deep_json(), content_type="application/json")
            if self.mode is Mode.HUGE:
                return await self._huge(request)
            if self.mode is Mode.HUGE_DECLARED:
                return await self._huge(request, declared=True)
        return await self._forward(request)

    async def _huge(self, request: web.Request, declared: bool = False) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if declared:
            response.content_length = self.huge_bytes
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        head = b'{"id":"x","targets":[],"pad":"'
        tail = b'"}'
        chunk = b"x" * MiB
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await response.write(head)
            remaining = self.huge_bytes - len(head) - len(tail)
            while remaining > 0:
                piece = chunk[: min(remaining, MiB)]
                await response.write(piece)
                self.sent_bytes += len(piece)
                remaining -= len(piece)
            await response.write(tail)
            await response.write_eof()
        return response

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            keep = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")
            }
            return web.Response(status=upstream.status, body=data, headers=keep)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HostileCDN:
    """Download links that misbehave (by ``mode``); records every request and its headers."""

    def __init__(self) -> None:
        self.mode = CDNMode.STALL
        self.redirect_to = ""
        self.received: list[Received] = []
        self.app = web.Application()
        self.app.router.add_get("/files/{name}", self._handle)
        self._release = asyncio.Event()

    def release(self) -> None:
        """End every stalled answer (so the server can stop)."""
        self._release.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.received.append(Received(request.method, request.path, CIMultiDict(request.headers)))
        if self.mode is CDNMode.REDIRECT:
            raise web.HTTPFound(self.redirect_to)
        response = web.StreamResponse(headers={"Content-Type": "audio/wav"})
        if self.mode is CDNMode.HUGE_DECLARED:
            response.content_length = 5 << 30
        elif self.mode is CDNMode.ENDLESS:
            response.enable_chunked_encoding()
        else:
            response.content_length = 10 * MiB
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            if self.mode is CDNMode.HUGE_DECLARED:
                await response.write(b"\0" * MiB)
            elif self.mode is CDNMode.ENDLESS:
                while True:
                    await response.write(b"\0" * (256 << 10))
            else:
                await response.write(b"\0" * (64 << 10))
                await self._release.wait()  # then nothing: a stalled transfer
        return response


@contextlib.asynccontextmanager
async def hostile_api(upstream: str) -> AsyncIterator[tuple[HostileAPI, str]]:
    """A :class:`HostileAPI` in front of ``upstream``; yields it and its base URL."""
    api = HostileAPI(upstream)
    async with serve(api.app) as server:
        try:
            yield api, url_of(server)
        finally:
            await api.aclose()


@contextlib.asynccontextmanager
async def hostile_cdn() -> AsyncIterator[tuple[HostileCDN, str]]:
    """A :class:`HostileCDN`; yields it and its base URL."""
    cdn = HostileCDN()
    async with serve(cdn.app) as server:
        try:
            yield cdn, url_of(server)
        finally:
            cdn.release()


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[str]:
    """Answers every connection with ``answer`` after the request head, then closes."""

    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(respond, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")
