"""Loopback HTTP servers for the real-HTTP tests: a scriptable fake API and a fake CDN.

Both are ``aiohttp.web`` apps served by ``aiohttp.test_utils.TestServer`` on 127.0.0.1 with
their own ports, so the transport sees two origins (the API and the CDN). Each records every
request it receives (method, path, query, headers) so tests can assert what was sent, e.g. that
the CDN never saw an ``x-api-key``. Faults (503, 429, dropped connections, truncated bodies,
expired links) are scripted per route and consumed in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import socket
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from audioshake_async import AudioShake, RetryPolicy

API_KEY = "sk-test-ZEBRA-7f3a91c2-key"  # distinctive: searched for in logs and errors
#: Retries without real waiting: tests stay fast and never depend on timing.
FAST_RETRY = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@attrs.define
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body_sha256: str | None = None
    body_size: int | None = None
    part_filename: str | None = None
    part_content_type: str | None = None
    body: bytes | None = None


@contextlib.asynccontextmanager
async def serve(app: web.Application, *, port: int | None = None) -> AsyncIterator[TestServer]:
    """Run ``app`` on 127.0.0.1 (an ephemeral port unless ``port`` is given)."""
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def api_client(api: FakeAPI, **kwargs: Any) -> AsyncIterator[AudioShake]:
    """A client of ``api`` served on loopback, with fast retries unless told otherwise."""
    kwargs.setdefault("retry", FAST_RETRY)
    async with serve(api.app) as server, AudioShake(API_KEY, base_url(server), **kwargs) as client:
        yield client


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def free_port() -> int:
    """A port nothing listens on (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def drain(request: web.Request) -> None:
    """Read and discard the whole body (any size: no client_max_size limit)."""
    while await request.content.read(1 << 16):
        pass


async def drop_connection(request: web.Request) -> web.StreamResponse:
    """Read the request, then close the connection without answering."""
    await drain(request)
    assert request.transport is not None
    request.transport.close()
    return web.Response(status=500, text="never sent")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data), content_type="application/json", headers=headers
    )


async def read_multipart_file(request: web.Request, seen: Seen, chunk: int = 64 * 1024) -> None:
    """Read the ``file`` part chunk by chunk (never whole), recording its hash and size."""
    reader = await request.multipart()
    part = await reader.next()
    assert part is not None and not isinstance(part, type(reader))
    digest = hashlib.sha256()
    size = 0
    while data := await part.read_chunk(chunk):  # type: ignore[union-attr]
        digest.update(data)
        size += len(data)
    seen.body_sha256 = digest.hexdigest()
    seen.body_size = size
    seen.part_filename = part.filename  # type: ignore[union-attr]
    seen.part_content_type = part.headers.get("Content-Type")


def canned_app(routes: dict[str, tuple[int, Any]], seen: list[Seen]) -> web.Application:
    """Fixed JSON answers by ``"METHOD /path"`` (query string ignored), recording requests.

    (aioresponses does not work with this aiohttp version, so plain JSON endpoints are tested
    against this instead.)
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                CIMultiDict(request.headers),
                body=body,
            )
        )
        key = f"{request.method} {request.path}"
        if key not in routes:
            return json_response({"statusCode": 404, "message": f"no route {key}"}, 404)
        status, data = routes[key]
        if isinstance(data, str):
            return web.Response(status=status, text=data)
        if data is None:
            return web.Response(status=status)
        return json_response(data, status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


# --------------------------------------------------------------------------- fake API


class FakeAPI:
    """A scriptable AudioShake API.

    ``faults[route]`` is a list of actions consumed one per request before the normal handler:
    an int status (503, 500, 401, ...), ``("429", retry_after)``, ``("json", status, body)``,
    ``("read+", status)`` (read the upload fully first), a float (delay, then carry on) or
    ``"drop"``. Task snapshots
    are scripted per id in ``scripts``: each ``GET /tasks/{id}`` returns the next one (the last
    repeats). ``link_for`` builds output links, called on every task read so links are fresh.
    """

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.seen: list[Seen] = []
        self.faults: dict[str, list[Any]] = {}
        self.scripts: dict[str, list[dict[str, Any]]] = {}
        self.task_list: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.link_for: Callable[[str, str, str], str] = lambda task_id, name, fmt: (
            f"https://cdn.invalid/{task_id}/{name}.{fmt}"
        )
        self.require_key = True
        self.after_list: Callable[[], None] | None = None
        self._ids = itertools.count(1)
        self._current: dict[int, Seen] = {}
        self.app = web.Application(middlewares=[self._middleware])
        r = self.app.router
        r.add_post("/assets", self._upload)
        r.add_get("/assets", self._list_assets)
        r.add_get("/assets/{id}", self._get_asset)
        r.add_post("/tasks", self._create)
        r.add_get("/tasks", self._list_tasks)
        r.add_get("/tasks/{id}", self._get_task)
        r.add_get("/models", self._models)

    def requests(self, method: str, path_prefix: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        seen = Seen(request.method, request.path, dict(request.query), CIMultiDict(request.headers))
        self.seen.append(seen)
        self._current[id(request)] = seen
        resource = request.match_info.route.resource
        route = f"{request.method} {resource.canonical if resource else request.path}"
        actions = self.faults.get(route)
        if actions:
            action = actions.pop(0)
            if action == "drop":
                return await drop_connection(request)
            if isinstance(action, tuple) and action[0] == "429":
                await drain(request)
                return json_response(
                    {"statusCode": 429, "error": "Too Many Requests", "message": "slow down"},
                    429,
                    headers={"Retry-After": str(action[1])},
                )
            if isinstance(action, tuple) and action[0] == "read+":
                # Read (and record) the whole body, then answer with the status.
                if request.method == "POST" and request.path == "/assets":
                    await read_multipart_file(request, seen)
                return json_response({"message": "unavailable"}, action[1])
            if isinstance(action, tuple) and action[0] == "json":
                # ("json", status, body): drain the request, answer with this body.
                await drain(request)
                return json_response(action[2], action[1])
            if isinstance(action, int):
                await drain(request)
                return json_response(
                    {"statusCode": action, "error": "Error", "message": f"scripted {action}"},
                    action,
                )
            if isinstance(action, float):
                await asyncio.sleep(action)
        if self.require_key and request.headers.get("x-api-key") != self.api_key:
            return json_response(
                {"statusCode": 401, "error": "Unauthorized", "message": "Invalid API key"}, 401
            )
        try:
            return await handler(request)
        finally:
            self._current.pop(id(request), None)

    # ------------------------------------------------------------------ handlers

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        seen = self._current[id(request)]
        await read_multipart_file(request, seen)
        name = seen.part_filename or "file"
        return json_response(
            {
                "id": f"asset{next(self._ids)}",
                "format": name.rsplit(".", 1)[-1],
                "name": name,
                "link": "https://cdn.invalid/source?sig=x",
                "sha256": seen.body_sha256,
            }
        )

    async def _list_assets(self, request: web.Request) -> web.StreamResponse:
        return json_response([{"id": "a1", "format": "mp3", "name": "x.mp3"}])

    async def _get_asset(self, request: web.Request) -> web.StreamResponse:
        return json_response({"id": request.match_info["id"], "mimeType": "audio/mp3"})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.created.append(body)
        task_id = f"task{next(self._ids)}"
        targets = [
            {
                "id": f"{task_id}-t{i}",
                "model": t["model"],
                "formats": t["formats"],
                "status": "processing",
                "output": [],
            }
            for i, t in enumerate(body["targets"])
        ]
        snapshot = {
            "id": task_id,
            "createdAt": "2026-03-25T03:16:17.442Z",
            "clientId": "client1",
            "targets": targets,
            **{k: body[k] for k in ("assetId", "url", "metadata") if k in body},
        }
        self.scripts.setdefault(task_id, [snapshot])
        return json_response(snapshot)

    async def _get_task(self, request: web.Request) -> web.StreamResponse:
        task_id = request.match_info["id"]
        script = self.scripts.get(task_id)
        if not script:
            return json_response(
                {"statusCode": 404, "error": "Not Found", "message": "Cannot find task"}, 404
            )
        snapshot = script.pop(0) if len(script) > 1 else script[0]
        return json_response(self._with_links(snapshot))

    def _with_links(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        data = json.loads(json.dumps(snapshot))
        for target in data.get("targets", []):
            for out in target.get("output") or []:
                if "link" not in out:
                    out["link"] = self.link_for(data["id"], out["name"], out["format"])
        return data

    async def _list_tasks(self, request: web.Request) -> web.StreamResponse:
        skip = int(request.query.get("skip", 0))
        take = int(request.query.get("take", 10))
        page = self.task_list[skip : skip + take]
        body = [self._with_links(t) for t in page]
        if self.after_list is not None:
            self.after_list()  # e.g. a new task arrives, shifting the older ones
        return json_response(body)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return json_response({"models": [{"id": "vocals", "access": "enabled"}]})


def task_json(
    task_id: str, *targets: tuple[str, str, list[tuple[str, str]]], **fields: Any
) -> dict[str, Any]:
    """A task body: targets as ``(model, status, [(output name, format), ...])``."""
    body: dict[str, Any] = {"id": task_id, "createdAt": "2026-03-25T03:16:17.442Z", **fields}
    body["targets"] = [
        {
            "id": f"{task_id}-{model}",
            "model": model,
            "status": status,
            "output": [{"name": n, "format": f} for n, f in outs],
            **({"error": {"code": 500, "message": f"{model} failed"}} if status == "error" else {}),
        }
        for model, status, outs in targets
    ]
    return body


# --------------------------------------------------------------------------- fake CDN


@attrs.define
class Blob:
    data: bytes
    #: Cut points: each request serving from offset 0.. sends up to the next cut, then drops.
    cuts: list[int] = attrs.field(factory=list)
    #: Tokens that are accepted (a link with another token is "expired": 403).
    tokens: set[str] | None = None
    #: Fail this many requests with this status first.
    fail_status: int = 503
    failures: int = 0
    #: Once this many bytes are sent, wait for ``release`` before sending more.
    stall_at: int | None = None


class FakeCDN:
    """Serves blobs at ``/files/<key>``; optional Range support; scripted cuts and expiry."""

    def __init__(self, *, ranges: bool = True, ignore_range: bool = False) -> None:
        self.ranges = ranges
        self.ignore_range = ignore_range
        self.blobs: dict[str, Blob] = {}
        self.seen: list[Seen] = []
        self.release = asyncio.Event()
        self.stalled = asyncio.Event()
        self.redirects: dict[str, str] = {}
        self.app = web.Application()
        self.app.router.add_get("/files/{key:.+}", self._get)
        self.app.router.add_get("/redirect/{key:.+}", self._redirect)

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(request.method, request.path, dict(request.query), CIMultiDict(request.headers))
        )
        raise web.HTTPFound(self.redirects[request.match_info["key"]])

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(request.method, request.path, dict(request.query), CIMultiDict(request.headers))
        )
        blob = self.blobs.get(request.match_info["key"])
        if blob is None:
            raise web.HTTPNotFound()
        if blob.tokens is not None and request.query.get("token") not in blob.tokens:
            return web.Response(status=403, text="<Error>Request has expired</Error>")
        if blob.failures > 0:
            blob.failures -= 1
            return web.Response(status=blob.fail_status, text="try later")
        total = len(blob.data)
        start = 0
        status = 200
        headers = {"ETag": '"v1"'}
        if self.ranges:
            headers["Accept-Ranges"] = "bytes"
        range_header = request.headers.get("Range")
        if range_header and self.ranges and not self.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match, range_header
            start = int(match.group(1))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{total - 1}/{total}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = total - start
        await response.prepare(request)
        end = total
        if blob.cuts:
            end = max(start, min(total, blob.cuts.pop(0)))
        position = start
        step = 256 * 1024
        while position < end:
            if blob.stall_at is not None and position >= blob.stall_at:
                self.stalled.set()
                await self.release.wait()
                blob.stall_at = None
            chunk_end = min(end, position + step)
            if blob.stall_at is not None and position < blob.stall_at < chunk_end:
                chunk_end = blob.stall_at
            await response.write(blob.data[position:chunk_end])
            position = chunk_end
        if end < total:
            assert request.transport is not None
            request.transport.close()  # flushes what was written, then drops
            return response
        await response.write_eof()
        return response

    def link(self, server: TestServer, key: str, token: str | None = None) -> str:
        url = f"{base_url(server)}/files/{key}"
        return f"{url}?token={token}" if token else url


def record_sleeps(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> list[float]:
    """Make ``module``'s ``anyio.sleep`` record its delay and sleep zero; returns the record.

    Only sleep is replaced: the thread hops and cancel scopes stay anyio's own.
    """
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)
        await asyncio.sleep(0)

    fake = types.SimpleNamespace(**{**vars(anyio), "sleep": fake_sleep})
    monkeypatch.setattr(module, "anyio", fake)
    return recorded
