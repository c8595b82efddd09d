"""The only module that talks to aiohttp's client: session, auth, timeouts, retries, rate limit.

Rules enforced here, once, for every request of a client:
- the API key goes to the API's origin only (scheme, host and port of the base URL); download
  links on a CDN host never see it;
- API requests pass the client-side rate limiter (downloads from other hosts do not): its own
  in-process one, or a :class:`~.ratelimit.Limiter` shared with other clients or processes;
- transient failures are retried with exponential backoff and full jitter, honouring
  ``Retry-After``; a non-idempotent request is retried only when it provably never left;
- aiohttp exceptions never escape, not even as ``__context__``: they are replaced by this
  package's errors, raised outside the ``except`` clause, whose messages hold no header, so no
  key and no link signature;
- JSON answers are read incrementally up to a size cap and decoded with a depth guard: a
  hostile answer costs bounded memory and raises ResponseParseError;
- plain http goes to loopback hosts only unless the caller opts in (``allow_insecure_http``);
- logs name the method, the URL without its query string, the status and the time taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import json
import logging
import platform
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import anyio
import attrs

from .. import errors
from .._version import __version__
from .http import (
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_RATE_LIMIT,
    SEND_GUARD,
    RetryPolicy,
    check_credential,
    decode_body,
    error_for_status,
    is_retryable_status,
    normalize_base_url,
    origin,
    parse_json,
    parse_retry_after,
    redact_url,
    scrubbed,
)
from .ratelimit import Limiter, limiter_for

__all__ = ["DownloadResponse", "Retry", "Timeouts", "Transport"]

logger = logging.getLogger("audioshake_async")

USER_AGENT = (
    f"audioshake-async/{__version__} aiohttp/{aiohttp.__version__} "
    f"python/{platform.python_version()}"
)

_JSON_HEADERS = {"Accept": "application/json"}
_JSON_BODY_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}

#: Exceptions meaning the connection was never established: the request was not sent.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
#: Exceptions after which the request may or may not have reached the server. A
#: ClientResponseError here is a malformed answer (statuses never raise: raise_for_status is off
#: per request); its repr carries the request headers, the key among them, so it never escapes.
_TRANSIENT = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
    asyncio.TimeoutError,
)


class Retry(enum.Enum):
    """When a request may be repeated."""

    #: Idempotent (GET, DELETE) or harmless to repeat (an upload makes a new asset): retry
    #: connection errors, timeouts, 429 and 5xx.
    ALWAYS = "always"
    #: Non-idempotent and billable (``POST /tasks``): retry only failures that happened before
    #: the request was sent, and 429 (the server refused it unprocessed). After sending, a
    #: failure raises :class:`~audioshake_async.errors.AmbiguousRequestError`.
    BEFORE_SEND = "before_send"


@attrs.frozen
class Timeouts:
    """Timeouts in seconds. ``request`` bounds a whole JSON call; transfers are bounded per read."""

    request: float = 60.0
    connect: float = 15.0
    #: Longest silence allowed while an upload waits for its answer or a download for bytes.
    transfer_read: float = 300.0

    def for_json(self, override: float | None = None) -> aiohttp.ClientTimeout:
        """A complete ClientTimeout for an API call (never a partial one: aiohttp#7274)."""
        total = self.request if override is None else override
        return aiohttp.ClientTimeout(
            total=total, connect=None, sock_connect=self.connect, sock_read=None
        )

    def for_transfer(self) -> aiohttp.ClientTimeout:
        """A ClientTimeout for large bodies: no total cap, but bounded silence."""
        return aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self.connect, sock_read=self.transfer_read
        )


class _Secret:
    """Holds a credential; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


@attrs.define
class DownloadResponse:
    """A streaming response from a download link (status, headers, body chunks)."""

    status: int
    headers: Mapping[str, str]
    _response: aiohttp.ClientResponse = attrs.field(repr=False)

    async def iter_chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body in chunks of at most ``size`` bytes."""
        error: errors.APIConnectionError | None = None
        try:
            async for chunk in self._response.content.iter_chunked(size):
                yield chunk
        except _TRANSIENT as exc:
            error = _connection_error(exc, "GET", str(self._response.url))
        if error is not None:
            # Raised outside the except clause: aiohttp's exception (request headers, maybe
            # the key) must not ride along as __context__.
            raise error

    async def read_text(self, limit: int = 65536) -> str:
        """A bounded read of the body, for error messages."""
        try:
            data = await self._response.content.read(limit)
        except _TRANSIENT:
            return ""
        return data.decode("utf-8", errors="replace")


def _connection_error(
    exc: BaseException, method: str, url: str, *, ambiguous: bool = False
) -> errors.APIConnectionError:
    # str(exc) of aiohttp's connection errors names host and port, never headers.
    kind = type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        # Its str() names the full URL (a signed link's query included): status and reason only.
        detail = f"{exc.status} {exc.message}".strip()
    else:
        detail = str(exc).strip()
    message = f"{kind}: {detail}" if detail else kind
    cls: type[errors.APIConnectionError]
    if ambiguous:
        cls = errors.AmbiguousRequestError
        message = f"request sent but no answer received ({message}); it may have taken effect"
    elif isinstance(exc, asyncio.TimeoutError):
        cls = errors.APITimeoutError
        message = f"timed out ({kind})"
    else:
        cls = errors.APIConnectionError
    return cls(message, method=method, url=redact_url(url))


@attrs.frozen
class _Failure:
    """A request without an answer: our error, the exception's type name (for logs), what to
    raise if it may have taken effect, and our own body's error (never retried) if any."""

    error: errors.APIConnectionError
    reason: str
    ambiguous: errors.AmbiguousRequestError | None = None
    own: errors.AudioShakeError | None = None


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | bytearray | None:
    """The body, read incrementally; None (reading no further) past ``limit``: a declared
    length before any byte is read, an undeclared one as it arrives (bounded memory)."""
    length = response.content_length
    if length is not None:
        # aiohttp reads exactly the declared length: the usual, fast path.
        return None if length > limit else await response.read()
    body = bytearray()
    async for chunk in response.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            return None
    return body


def _own_error(exc: BaseException) -> errors.AudioShakeError | None:
    """This package's error that ``exc`` wraps (aiohttp sets it as the cause), if any."""
    cause = exc.__cause__
    for _ in range(5):
        if cause is None:
            return None
        if isinstance(cause, errors.AudioShakeError):
            return cause
        cause = cause.__cause__
    return None


class Transport:
    """Owns the aiohttp session of one client and performs every HTTP request."""

    def __init__(
        self,
        *,
        base_url: str,
        auth_headers: Mapping[str, str],
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        rate_limit: float | Limiter | None = DEFAULT_RATE_LIMIT,
        session: aiohttp.ClientSession | None = None,
        connection_limit: int = 100,
        trust_env: bool = False,
        random_fraction: Callable[[], float] = random.random,
        allow_insecure_http: bool = False,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    ) -> None:
        self.base_url = normalize_base_url(base_url, allow_insecure_http=allow_insecure_http)
        for name, value in auth_headers.items():
            check_credential(name, value)
        if max_json_bytes <= 0:
            raise errors.ConfigurationError(f"max_json_bytes must be > 0, got {max_json_bytes}")
        #: Largest JSON answer read; a larger one raises ResponseParseError.
        self.max_json_bytes = max_json_bytes
        # Every API call's URL starts with this: the origin check needs no URL parsing then.
        self._api_prefix = self.base_url + "/"
        self._api_origin = origin(self.base_url)
        self._auth = {name: _Secret(value) for name, value in auth_headers.items()}
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.limiter = limiter_for(rate_limit)
        self._session = session
        self._owns_session = session is None
        self._connection_limit = connection_limit
        self._trust_env = trust_env
        self._random = random_fraction
        self._closed = False
        # Built once: the JSON call path is the hot path of a million-task batch.
        self._default_json_timeout = self.timeouts.for_json()
        #: Requests sent, by route (``"GET /tasks/{id}"``), attempts included.
        self.request_counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r})"

    # ------------------------------------------------------------------ lifecycle

    @property
    def session(self) -> aiohttp.ClientSession:
        """The session, created on first use inside the running loop (never at import time)."""
        if self._closed:
            raise errors.ConfigurationError("the client is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connection_limit, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                trust_env=self._trust_env,
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the owned session; an injected session is left open for its owner."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    # ------------------------------------------------------------------ helpers

    def url_for(self, path_or_url: str) -> str:
        """Absolute URL for an API path; absolute URLs pass through."""
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url + "/" + path_or_url.lstrip("/")

    def is_api_url(self, url: str) -> bool:
        """True when ``url`` is on the API's origin (same as ``same_origin(url, base_url)``)."""
        return url.startswith(self._api_prefix) or origin(url) == self._api_origin

    def headers_for(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Request headers; the credential only when ``url`` is on the API's origin."""
        return self._headers(self.is_api_url(url), extra)

    def _headers(self, api: bool, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if api:
            for name, secret in self._auth.items():
                headers[name] = secret.reveal()
        else:
            for name in self._auth:
                headers.pop(name, None)
        return headers

    def _now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    async def _backoff(
        self, method: str, url: str, attempt: int, reason: str, retry_after: float | None
    ) -> None:
        delay = self.retry.delay(attempt, self._random(), retry_after)
        logger.info(
            "retrying %s %s after %s in %.2f s (retry %d/%d)",
            method,
            redact_url(url),
            reason,
            delay,
            attempt,
            self.retry.max_retries,
        )
        await anyio.sleep(delay)

    # ------------------------------------------------------------------ JSON calls

    async def request(
        self,
        method: str,
        path: str,
        *,
        route: str | None = None,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        body_factory: Callable[[], Any] | None = None,
        retry: Retry = Retry.ALWAYS,
        timeout: float | None = None,
        max_retries: int | None = None,
        transfer: bool = False,
    ) -> Any:
        """Send an API request and return its decoded JSON body (None for an empty body).

        ``body_factory`` builds a fresh body for each attempt (an exhausted file handle replayed
        would send an empty upload). Error statuses raise the matching APIError once retries are
        spent.
        """
        url = self.url_for(path)
        label = route or f"{method} {path}"
        retries = self.retry.max_retries if max_retries is None else max_retries
        if transfer:
            client_timeout = self.timeouts.for_transfer()
        elif timeout is None:
            client_timeout = self._default_json_timeout
        else:
            client_timeout = self.timeouts.for_json(timeout)
        data_bytes = None
        if json_body is not None:
            data_bytes = json.dumps(json_body, separators=(",", ":")).encode()
        api = self.is_api_url(url)
        extra = _JSON_BODY_HEADERS if data_bytes is not None else _JSON_HEADERS
        attempt = 0
        while True:
            if api and self.limiter is not None:
                await self.limiter.acquire()
            if (guard := SEND_GUARD.get()) is not None:
                guard()  # after the rate-limit wait: the last moment before the request leaves
            data = body_factory() if body_factory is not None else data_bytes
            self.request_counts[label] += 1
            started = time.perf_counter() if logger.isEnabledFor(logging.DEBUG) else 0.0
            # Every failure is judged after the except clause: an error raised inside it would
            # carry aiohttp's exception (request headers, the key among them) as __context__.
            failure: _Failure | None = None
            try:
                async with self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=self._headers(api, extra),
                    timeout=client_timeout,
                    allow_redirects=False,
                    raise_for_status=False,  # a user's session may say otherwise
                ) as response:
                    raw = await _read_capped(response, self.max_json_bytes)
                    status = response.status
                    resp_headers = response.headers
            except _NOT_SENT as exc:
                failure = _Failure(_connection_error(exc, method, url), type(exc).__name__)
            except _TRANSIENT as exc:
                ambiguous = _connection_error(exc, method, url, ambiguous=True)
                assert isinstance(ambiguous, errors.AmbiguousRequestError)
                failure = _Failure(
                    _connection_error(exc, method, url),
                    type(exc).__name__,
                    ambiguous=ambiguous,
                    own=_own_error(exc),
                )
            if failure is not None:
                if failure.own is not None:
                    # aiohttp wraps an error raised by our own upload body (the file changed
                    # size or became unreadable) as a connection error; it is not transient.
                    raise scrubbed(failure.own)
                if failure.ambiguous is not None and retry is Retry.BEFORE_SEND:
                    logger.warning(
                        "%s %s: no answer after sending (%s); outcome unknown",
                        method,
                        redact_url(url),
                        failure.reason,
                    )
                    raise failure.ambiguous
                if attempt >= retries:
                    raise failure.error
                attempt += 1
                await self._backoff(method, url, attempt, failure.reason, None)
                continue
            if raw is None:
                raise errors.ResponseParseError(
                    f"{method} {redact_url(url)}: answer larger than {self.max_json_bytes} bytes"
                )
            if logger.isEnabledFor(logging.DEBUG):  # redact_url parses the URL: skip it if unused
                elapsed_ms = (time.perf_counter() - started) * 1000
                logger.debug("%s %s -> %d (%.1f ms)", method, redact_url(url), status, elapsed_ms)
            if 200 <= status < 300:
                if not raw:
                    return None
                try:
                    return parse_json(raw)
                except errors.ResponseParseError as exc:
                    parse_failure = f"{method} {redact_url(url)}: {exc}"
                raise errors.ResponseParseError(parse_failure)
            retry_after = parse_retry_after(resp_headers, self._now())
            if status == 429 and self.limiter is not None:
                # Everyone on this client slows down, not just this request.
                self.limiter.pause_until(retry_after if retry_after is not None else 1.0)
            retryable = is_retryable_status(status)
            if retry is Retry.BEFORE_SEND:
                retryable = status == 429
            if retryable and retry_after is not None and retry_after > self.retry.max_retry_after:
                retryable = False
            if not retryable or attempt >= retries:
                raise error_for_status(
                    status, decode_body(raw), method=method, url=url, retry_after=retry_after
                )
            attempt += 1
            await self._backoff(method, url, attempt, f"HTTP {status}", retry_after)

    # ------------------------------------------------------------------ downloads

    @contextlib.asynccontextmanager
    async def open_download(
        self, url: str, headers: Mapping[str, str] | None = None, *, authenticate: bool = True
    ) -> AsyncIterator[DownloadResponse]:
        """Open a streaming GET of a download link: one attempt, the caller retries.

        Links on another host than the API's get no credential; links on the API host do,
        unless ``authenticate`` is False (a redirect's target: whoever chose it is not us).
        """
        api = self.is_api_url(url)  # parsed once: a CDN link never matches the prefix
        if api and self.limiter is not None:
            await self.limiter.acquire()
        label = "GET <api download>" if api else "GET <download>"
        self.request_counts[label] += 1
        error: errors.APIConnectionError | None = None
        try:
            async with self.session.get(
                url,
                headers=self._headers(api and authenticate, headers),
                timeout=self.timeouts.for_transfer(),
                allow_redirects=False,
                auto_decompress=False,
                raise_for_status=False,
            ) as response:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("GET %s -> %d", redact_url(url), response.status)
                try:
                    yield DownloadResponse(response.status, response.headers, response)
                except BaseException:
                    # Abandoned mid-body (too large, stalled, cancelled): the connection must
                    # not go back to the pool with a body still coming.
                    response.close()
                    raise
        except _TRANSIENT as exc:
            error = _connection_error(exc, "GET", url)
        if error is not None:
            raise error  # outside the except clause: no aiohttp __context__
