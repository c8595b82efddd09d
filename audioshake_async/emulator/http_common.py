"""HTTP pieces the three emulators (Tasks, legacy Jobs, Music.AI) share.

Serving a site on a free port, reading a JSON body, dropping a connection unanswered,
naming the matched route, and telling loopback peers and URLs from the rest.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from typing import Any

import yarl
from aiohttp import web

from .errors import ApiError

#: Largest JSON body accepted by the API routes.
MAX_JSON_BODY = 1024 * 1024
#: Seconds aiohttp waits for in-flight requests when an emulator stops.
SHUTDOWN_TIMEOUT = 0.5


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    runners: list[web.AppRunner],
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Serve ``app`` on ``host:port`` (its runner appended to ``runners``); the bound port."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    runners.append(runner)
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    # Port 0 asked the OS for a free port: read back which one it gave.
    return int(runner.addresses[0][1])


def route_template(request: web.Request) -> str:
    """The matched route's path template (``/tasks/{id}``), ``<unmatched>`` for none."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"


def is_loopback(remote: str | None) -> bool:
    """True for a loopback peer address."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs whose host is ``localhost`` or a loopback address."""
    try:
        parsed = yarl.URL(url)
    except ValueError:
        return False
    host = (parsed.host or "").strip("[]").lower()
    if parsed.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dropped(web.Response):
    """Marker: the connection was closed, this response never reaches the client."""


def drop(request: web.Request) -> web.Response:
    """Close the connection without answering; the client sees a server disconnect."""
    if request.transport is not None:
        request.transport.close()
    # Nothing reaches the client: the transport is closed before aiohttp writes this.
    return Dropped(status=204)


async def read_json(request: web.Request) -> Any:
    """Parse a JSON body (400/415/413 with the error envelope when it is not one)."""
    declared = request.headers.get("Content-Type")
    ctype = request.content_type
    if declared and not (ctype == "application/json" or ctype.endswith("+json")):
        raise ApiError(415, f"Unsupported Media Type: {ctype}")
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, "Request body is too large")
    raw = await request.read()
    if not raw:
        raise ApiError(400, "Body cannot be empty when content-type is set to 'application/json'")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"Body is not valid JSON: {exc}") from None
