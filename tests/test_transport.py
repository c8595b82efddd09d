"""The transport on real loopback HTTP: retries, Retry-After, ambiguity, credentials, timeouts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from audioshake_async import errors
from audioshake_async.core import transport as _transport
from audioshake_async.core.http import RetryPolicy
from audioshake_async.core.transport import Retry, Timeouts, Transport, _connection_error

from ._servers import (
    API_KEY,
    FakeAPI,
    base_url,
    drop_connection,
    free_port,
    json_response,
    record_sleeps,
    serve,
)

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays the transport chose (slept as zero, so tests stay fast)."""
    return record_sleeps(monkeypatch, _transport)


def make_transport(url: str, **kwargs: Any) -> Transport:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("rate_limit", None)
    return Transport(base_url=url, auth_headers={"x-api-key": API_KEY}, **kwargs)


async def test_get_retried_after_503(sleeps: list[float]) -> None:
    api = FakeAPI()
    api.faults["GET /models"] = [503, 503]
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            data = await transport.request("GET", "/models", route="GET /models")
        finally:
            await transport.aclose()
    assert data == {"models": [{"id": "vocals", "access": "enabled"}]}
    assert len(api.requests("GET", "/models")) == 3
    assert transport.request_counts["GET /models"] == 3
    assert len(sleeps) == 2 and all(0 <= s <= 0.05 for s in sleeps)


async def test_get_retried_after_dropped_connection(sleeps: list[float]) -> None:
    api = FakeAPI()
    # aiohttp itself silently repeats an idempotent request once after a disconnect; three
    # drops make sure the transport's own retry is what gets through.
    api.faults["GET /tasks/{id}"] = ["drop", "drop", "drop"]
    api.scripts["t1"] = [{"id": "t1", "targets": []}]
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            data = await transport.request("GET", "/tasks/t1")
        finally:
            await transport.aclose()
    assert data["id"] == "t1"
    assert len(api.requests("GET", "/tasks/t1")) == 4
    assert len(sleeps) >= 1


async def test_429_retry_after_is_honoured_and_pauses_the_limiter(sleeps: list[float]) -> None:
    api = FakeAPI()
    api.faults["GET /models"] = [("429", "0.3")]
    async with serve(api.app) as server:
        transport = make_transport(base_url(server), rate_limit=1000.0)
        assert transport.limiter is not None
        before = transport.limiter._theoretical_arrival
        try:
            await transport.request("GET", "/models")
        finally:
            await transport.aclose()
    # The server's 0.3 s is used although the backoff policy caps at 0.05 s.
    assert sleeps[0] == pytest.approx(0.3)
    assert len(api.requests("GET", "/models")) == 2
    assert transport.limiter._theoretical_arrival > before


async def test_429_retry_after_too_long_gives_up_at_once(sleeps: list[float]) -> None:
    api = FakeAPI()
    api.faults["GET /models"] = [("429", "3600")]
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            with pytest.raises(errors.RateLimitError) as info:
                await transport.request("GET", "/models")
        finally:
            await transport.aclose()
    assert info.value.retry_after == 3600.0
    assert sleeps == []
    assert len(api.requests("GET", "/models")) == 1


async def test_5xx_exhausted_raises_server_error(sleeps: list[float]) -> None:
    api = FakeAPI()
    api.faults["GET /models"] = [500] * 10
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            with pytest.raises(errors.ServerError) as info:
                await transport.request("GET", "/models")
        finally:
            await transport.aclose()
    assert info.value.status == 500 and info.value.message == "scripted 500"
    assert len(api.requests("GET", "/models")) == FAST.max_retries + 1
    assert len(sleeps) == FAST.max_retries


async def test_4xx_is_not_retried(sleeps: list[float]) -> None:
    api = FakeAPI()
    api.faults["GET /models"] = [404]
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            with pytest.raises(errors.NotFoundError):
                await transport.request("GET", "/models")
        finally:
            await transport.aclose()
    assert len(api.requests("GET", "/models")) == 1 and sleeps == []


async def test_post_tasks_not_retried_after_drop_once_sent(sleeps: list[float]) -> None:
    api = FakeAPI()
    api.faults["POST /tasks"] = ["drop"]
    body = {"assetId": "a", "targets": [{"model": "vocals", "formats": ["wav"]}]}
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            with pytest.raises(errors.AmbiguousRequestError) as info:
                await transport.request("POST", "/tasks", json_body=body, retry=Retry.BEFORE_SEND)
        finally:
            await transport.aclose()
    assert len(api.requests("POST", "/tasks")) == 1
    assert sleeps == []
    assert isinstance(info.value, errors.APIConnectionError)
    assert "may have taken effect" in str(info.value)


async def test_post_tasks_503_not_retried_but_429_is(sleeps: list[float]) -> None:
    api = FakeAPI()
    api.faults["POST /tasks"] = [503]
    body = {"assetId": "a", "targets": [{"model": "vocals", "formats": ["wav"]}]}
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            with pytest.raises(errors.ServerError):
                await transport.request("POST", "/tasks", json_body=body, retry=Retry.BEFORE_SEND)
            assert len(api.requests("POST", "/tasks")) == 1
            api.faults["POST /tasks"] = [("429", "0")]
            data = await transport.request(
                "POST", "/tasks", json_body=body, retry=Retry.BEFORE_SEND
            )
        finally:
            await transport.aclose()
    assert data["targets"][0]["status"] == "processing"
    assert len(api.requests("POST", "/tasks")) == 3
    assert api.created == [body]  # only the last attempt reached the handler


async def test_post_tasks_retried_after_connection_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing listens on the first attempt; the server comes up during the backoff."""
    api = FakeAPI()
    port = free_port()
    transport = make_transport(f"http://127.0.0.1:{port}")
    started: list[Any] = []
    stack: list[Any] = []

    async def backoff(
        method: str, url: str, attempt: int, reason: str, retry_after: float | None, **_: Any
    ) -> None:
        started.append(reason)
        context = serve(api.app, port=port)
        await context.__aenter__()
        stack.append(context)

    monkeypatch.setattr(transport, "_backoff", backoff)
    body = {"assetId": "a", "targets": [{"model": "vocals", "formats": ["wav"]}]}
    try:
        data = await transport.request("POST", "/tasks", json_body=body, retry=Retry.BEFORE_SEND)
    finally:
        await transport.aclose()
        for context in stack:
            await context.__aexit__(None, None, None)
    assert started == ["ClientConnectorError"]
    assert len(api.requests("POST", "/tasks")) == 1
    assert data["id"].startswith("task")


async def test_connection_refused_exhausted_is_a_connection_error(sleeps: list[float]) -> None:
    transport = make_transport(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(errors.APIConnectionError) as info:
            await transport.request("POST", "/tasks", json_body={}, retry=Retry.BEFORE_SEND)
    finally:
        await transport.aclose()
    assert type(info.value) is errors.APIConnectionError  # not ambiguous: never sent
    assert len(sleeps) == FAST.max_retries
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)


def test_error_classification() -> None:
    key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
    refused = aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))
    assert isinstance(refused, _transport._NOT_SENT)
    assert isinstance(aiohttp.ConnectionTimeoutError(), _transport._NOT_SENT)
    for sent in (
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("cut"),
        aiohttp.SocketTimeoutError(),
        asyncio.TimeoutError(),
    ):
        assert not isinstance(sent, _transport._NOT_SENT)
        assert isinstance(sent, _transport._TRANSIENT)
    assert type(_connection_error(refused, "GET", "http://h/x?sig=1")) is errors.APIConnectionError
    assert type(_connection_error(asyncio.TimeoutError(), "GET", "u")) is errors.APITimeoutError
    ambiguous = _connection_error(aiohttp.ServerDisconnectedError(), "POST", "u", ambiguous=True)
    assert type(ambiguous) is errors.AmbiguousRequestError
    assert "sig=1" not in str(_connection_error(refused, "GET", "http://h/x?sig=1"))


async def test_timeout_raises_api_timeout_error(sleeps: list[float]) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return json_response({})

    app = web.Application()
    app.router.add_get("/models", slow)
    async with serve(app) as server:
        transport = make_transport(
            base_url(server), timeouts=Timeouts(request=0.2), retry=RetryPolicy(max_retries=1)
        )
        try:
            with pytest.raises(errors.APITimeoutError) as info:
                await transport.request("GET", "/models")
        finally:
            await transport.aclose()
    assert len(sleeps) == 1
    assert API_KEY not in str(info.value) and API_KEY not in repr(info.value)
    assert "timed out" in str(info.value)


async def test_success_bodies_json_empty_and_garbage() -> None:
    async def empty(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, text="<html>ok</html>")

    app = web.Application()
    app.router.add_delete("/webhooks/w1", empty)
    app.router.add_get("/garbage", garbage)
    async with serve(app) as server:
        transport = make_transport(base_url(server))
        try:
            assert await transport.request("DELETE", "/webhooks/w1") is None
            with pytest.raises(errors.ResponseParseError):
                await transport.request("GET", "/garbage")
        finally:
            await transport.aclose()


async def test_json_body_params_and_headers_sent() -> None:
    seen: dict[str, Any] = {}

    async def echo(request: web.Request) -> web.StreamResponse:
        seen["headers"] = dict(request.headers)
        seen["query"] = dict(request.query)
        seen["body"] = await request.json()
        return json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/prefix/tasks", echo)
    async with serve(app) as server:
        transport = make_transport(base_url(server) + "/prefix/")
        try:
            await transport.request(
                "POST", "tasks", params={"skip": 0}, json_body={"targets": [], "ü": "x"}
            )
        finally:
            await transport.aclose()
    assert seen["body"] == {"targets": [], "ü": "x"}
    assert seen["query"] == {"skip": "0"}
    assert seen["headers"]["x-api-key"] == API_KEY
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["User-Agent"].startswith("audioshake-async/")


def test_credentials_only_for_the_api_origin() -> None:
    transport = Transport(base_url="https://api.example.com", auth_headers={"x-api-key": API_KEY})
    assert transport.headers_for("https://api.example.com/tasks")["x-api-key"] == API_KEY
    for other in (
        "https://cdn.example.com/file",
        "https://api.example.com:8443/tasks",
        "http://api.example.com/tasks",
        "https://api.example.com.evil.org/x",
    ):
        assert "x-api-key" not in transport.headers_for(other, {"x-api-key": "leak", "A": "b"})
    assert API_KEY not in repr(transport)
    assert API_KEY not in repr(transport._auth) and "redacted" in repr(transport._auth)


async def test_redirect_is_not_followed_with_the_key() -> None:
    """An API answer redirecting elsewhere is not followed (that host would get the key)."""
    cdn_seen: list[dict[str, str]] = []

    async def cdn(request: web.Request) -> web.StreamResponse:
        cdn_seen.append(dict(request.headers))
        return json_response({})

    cdn_app = web.Application()
    cdn_app.router.add_get("/x", cdn)
    async with serve(cdn_app) as cdn_server:

        async def redirect(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound(f"{base_url(cdn_server)}/x")

        api_app = web.Application()
        api_app.router.add_get("/models", redirect)
        async with serve(api_app) as server:
            transport = make_transport(base_url(server))
            try:
                with pytest.raises(errors.APIError) as info:
                    await transport.request("GET", "/models")
            finally:
                await transport.aclose()
    assert info.value.status == 302
    assert cdn_seen == []


async def test_injected_session_left_open_owned_session_closed() -> None:
    async with aiohttp.ClientSession() as session:
        transport = make_transport("http://127.0.0.1:1", session=session)
        assert transport.session is session
        await transport.aclose()
        assert not session.closed
    owned = make_transport("http://127.0.0.1:1")
    own_session = owned.session
    await owned.aclose()
    assert own_session.closed
    with pytest.raises(errors.ConfigurationError):
        _ = owned.session


async def test_debug_logs_name_route_but_not_key_or_query(
    caplog: pytest.LogCaptureFixture, sleeps: list[float]
) -> None:
    api = FakeAPI()
    api.faults["GET /tasks"] = [503]
    async with serve(api.app) as server:
        transport = make_transport(base_url(server))
        try:
            with caplog.at_level(logging.DEBUG, logger="audioshake_async"):
                await transport.request("GET", "/tasks", params={"skip": 0, "take": 5})
        finally:
            await transport.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("/tasks -> 200" in m for m in messages)
    assert any("retrying GET" in m and "HTTP 503" in m for m in messages)
    assert not any(API_KEY in m or "take=" in m for m in messages)


async def test_drop_helper_really_drops() -> None:
    """Guard for the fault helper itself: a bare client sees a disconnect, not a response."""
    app = web.Application()
    app.router.add_get("/", drop_connection)
    async with serve(app) as server, aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.get(server.make_url("/")) as response:
                await response.read()


async def malformed_http_server(reply: bytes) -> tuple[asyncio.Server, str]:
    """A loopback server that answers every request with ``reply`` verbatim (bad HTTP)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("retry", [Retry.ALWAYS, Retry.BEFORE_SEND])
async def test_malformed_response_never_leaks_the_key(sleeps: list[float], retry: Retry) -> None:
    """aiohttp's ClientResponseError repr holds the request headers: it must not escape."""
    server, url = await malformed_http_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\nContent-Type: application/json\r\n\r\n{}"
    )
    transport = make_transport(url)
    try:
        with pytest.raises(errors.APIConnectionError) as info:
            await transport.request("POST", "/tasks", json_body={}, retry=retry)
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()
    assert not isinstance(info.value, aiohttp.ClientError)
    if retry is Retry.BEFORE_SEND:  # the request reached the server: outcome unknown
        assert isinstance(info.value, errors.AmbiguousRequestError)
    for text in (str(info.value), repr(info.value), repr(info.value.__cause__)):
        assert API_KEY not in text


async def test_a_users_raise_for_status_session_still_gets_typed_errors(
    sleeps: list[float],
) -> None:
    api = FakeAPI()
    api.faults["GET /models"] = [500, 500, 500, 500]
    async with serve(api.app) as server, aiohttp.ClientSession(raise_for_status=True) as session:
        transport = make_transport(base_url(server), session=session)
        with pytest.raises(errors.ServerError) as info:
            await transport.request("GET", "/models", route="GET /models")
    assert info.value.status == 500
    assert API_KEY not in repr(info.value) and API_KEY not in str(info.value)
