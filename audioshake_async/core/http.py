"""I/O-free HTTP rules shared by every service: retry and poll maths, status -> error,
Retry-After, redaction, origin checks, response structuring.

Nothing here touches the network, the disk or the clock (callers pass ``now`` and random draws),
so every rule is unit-tested with plain data.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import email.utils
import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import SplitResult, urlsplit, urlunsplit

import attrs

from .. import errors
from .._convert import converter

#: A check run just before each API request of the current task is sent (it raises to stop
#: it). The batch engine sets it around ``POST /tasks`` to refuse sending once a shared
#: journal's lease no longer covers the request.
SEND_GUARD: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "audioshake_send_guard", default=None
)


T = TypeVar("T")

#: Documented account limit of AudioShake (60 requests per second); a polite cap elsewhere.
DEFAULT_RATE_LIMIT = 60.0

_STATUS_CLASSES: dict[int, type[errors.APIError]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    413: errors.PayloadTooLargeError,
    422: errors.UnprocessableEntityError,
    429: errors.RateLimitError,
}


# --------------------------------------------------------------------------- retry maths


@attrs.frozen
class RetryPolicy:
    """How transient failures are retried: exponential backoff with full jitter.

    ``max_retries`` counts retries after the first attempt. A server ``Retry-After`` is honoured
    up to ``max_retry_after`` seconds; longer waits give up with the error instead of stalling.
    """

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def delay(
        self, attempt: int, random_fraction: float, retry_after: float | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(ceiling * random_fraction)


#: HTTP statuses worth retrying: request timeout, rate limit, and server-side failures.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_retryable_status(status: int) -> bool:
    """True for 408/425/429 and 5xx other than 501 (which will not change on retry)."""
    return status in RETRYABLE_STATUSES or (status >= 500 and status != 501)


def parse_retry_after(headers: Mapping[str, str], now: dt.datetime) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``Retry-After`` seconds or an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    raw = headers.get("Retry-After") or headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return max((when - now).total_seconds(), 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


# --------------------------------------------------------------------------- errors


def _body_fields(body: Any) -> tuple[str | None, str | None]:
    if isinstance(body, dict):
        error = body.get("error")
        message = body.get("message")
        return (
            str(error) if error is not None else None,
            str(message) if message is not None else None,
        )
    return None, None


def decode_body(raw: bytes | bytearray) -> Any:
    """JSON when the body is JSON, else the text (error bodies are not always JSON)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return parse_json(raw)
    except errors.ResponseParseError:
        return text


# --------------------------------------------------------------------------- response bounds

#: Largest JSON answer read (bytes). The biggest documented answer, a page of 100 tasks with
#: 20 targets each, is well under 1 MiB; 16 MiB is generous and keeps a hostile answer's cost
#: to tens of MiB of memory.
DEFAULT_MAX_JSON_BYTES = 16 << 20
#: Deepest nesting accepted in a JSON answer. A task is about 6 levels deep; json.loads alone
#: would raise a bare RecursionError near 1,000 (or crash a thread with a small stack).
MAX_JSON_DEPTH = 64


def _too_deep(value: Any, max_depth: int) -> bool:
    """True when ``value`` nests containers deeper than ``max_depth`` (walked without
    recursion, containers only: a page of 100 tasks is a few thousand steps)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode a JSON answer, bounded in depth; every failure is a ResponseParseError.

    The C decoder raises RecursionError (not a crash) past the interpreter's recursion limit;
    anything deeper than ``max_depth`` that it did decode is refused too, so no later step
    (structuring, repr, logging) recurses through a hostile shape.
    """
    failure: str
    try:
        value = json.loads(raw)
    except RecursionError:
        failure = "JSON nested too deeply"
    except ValueError:
        failure = "response is not JSON"
    else:
        if not isinstance(value, (dict, list)) or not _too_deep(value, max_depth):
            return value
        failure = f"JSON nested deeper than {max_depth} levels"
    # Raised here, outside the except clause: the exception carries no __context__.
    raise errors.ResponseParseError(failure)


E = TypeVar("E", bound=BaseException)


def scrubbed(error: E) -> E:
    """``error`` without its chain: an aiohttp exception it crossed holds request headers."""
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    return error


def error_for_status(
    status: int,
    body: Any,
    *,
    method: str = "",
    url: str = "",
    retry_after: float | None = None,
) -> errors.APIError:
    """Map an error response to the matching :class:`~audioshake_async.errors.APIError`."""
    error, message = _body_fields(body)
    if message is None:
        text = body if isinstance(body, str) else ""
        message = text.strip()[:500] or f"HTTP {status}"
    cls = _STATUS_CLASSES.get(status)
    if cls is None:
        cls = errors.ServerError if status >= 500 else errors.APIError
    if status == 400 and "insufficient credits" in message.lower():
        cls = errors.InsufficientCreditsError
    return cls(
        status,
        message,
        error=error,
        method=method,
        url=redact_url(url),
        body=body,
        retry_after=retry_after,
    )


def redact_url(url: str) -> str:
    """The URL without query string and fragment: signed links carry their signature there."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def redact_urls(text: str) -> str:
    """``text`` with every http(s) URL in it redacted (:func:`redact_url`)."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` with the default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def same_origin(url: str, base_url: str) -> bool:
    """True when ``url`` is on the API host: the only host that may see the API key."""
    return origin(url) == origin(base_url)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_credential(name: str, value: str) -> None:
    """A ConfigurationError for a credential no HTTP header can carry (CR, LF, NUL...).

    Checked when the client is built, not at the first request: aiohttp would raise a bare
    ValueError then, and a header injection must never be attempted.
    """
    if not isinstance(value, str) or _CONTROL.search(value):
        raise errors.ConfigurationError(
            f"the {name} credential contains control characters (CR, LF, NUL...): "
            "check how it was copied"
        )


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _safe_parts(url: str, what: str, error: type[errors.AudioShakeError]) -> SplitResult:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise error(f"{what} is not a valid URL") from None
    return parts


def normalize_base_url(base_url: str, *, allow_insecure_http: bool = False) -> str:
    """Validate and strip a base URL (``https://host[:port][/prefix]``).

    Plain ``http`` is accepted for loopback hosts only (the emulator, a local proxy) unless
    ``allow_insecure_http``: the key would otherwise cross the network in clear text. A URL
    with credentials is refused, and the error never echoes them.
    """
    parts = _safe_parts(base_url, "base URL", errors.ConfigurationError)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ConfigurationError(
            f"base URL must be https://host[:port], got {redact_url(base_url)!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise errors.ConfigurationError(
            "base URL must not carry credentials (user:password@): pass the API key instead"
        )
    if parts.scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise errors.ConfigurationError(
            f"base URL {redact_url(base_url)!r} is plain http to a remote host: the API key would "
            "travel in clear text; use https, or pass allow_insecure_http=True "
            "(CLI: --allow-insecure-http) if you really mean it"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def check_source_url(url: str) -> str:
    """``url`` if it may be sent as a task's source: https (or http to loopback), no
    credentials; a ValidationError otherwise (its message never shows credentials)."""
    if not isinstance(url, str):
        raise errors.ValidationError("url must be a string")
    parts = _safe_parts(url, "url", errors.ValidationError)
    scheme = parts.scheme.lower()
    secure = scheme == "https" or (scheme == "http" and is_loopback_host(parts.hostname))
    if not secure or not parts.hostname:
        raise errors.ValidationError(f"url must be a public https URL, got {redact_url(url)!r}")
    if parts.username is not None or parts.password is not None:
        raise errors.ValidationError(
            f"url must not carry credentials (user:password@), got {redact_url(url)!r}"
        )
    return url


def has_credentials(url: str) -> bool:
    """True when ``url`` names a user or password (``scheme://user:pass@host``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.username is not None or parts.password is not None


# --------------------------------------------------------------------------- polling


@attrs.frozen
class PollPolicy:
    """Polling schedule for ``tasks.wait``: starts fast, backs off to ``max_interval``.

    Most tasks finish "within seconds to a few minutes" (FAQ), so the first polls are quick and
    long tasks cost few requests.
    """

    initial_interval: float = 1.0
    max_interval: float = 30.0
    multiplier: float = 1.5
    jitter: float = 0.1

    def interval(self, poll_number: int, random_fraction: float = 0.5) -> float:
        """Seconds before poll number ``poll_number`` (1-based), jittered by +/- ``jitter``."""
        base = min(self.max_interval, self.initial_interval * self.multiplier ** (poll_number - 1))
        return max(0.0, base * (1.0 + self.jitter * (2.0 * random_fraction - 1.0)))


# --------------------------------------------------------------------------- parsing


def structure_as(data: Any, cls: type[T], what: str) -> T:
    """Structure a response body, turning shape errors into ResponseParseError."""
    detail: str
    try:
        return converter.structure(data, cls)
    except RecursionError:
        detail = "nested too deeply"
    except Exception as exc:
        detail = str(exc)[:300]
    # Raised outside the except clause: no __context__ holding the response data.
    raise errors.ResponseParseError(f"unexpected {what} in response: {detail}")


#: What an id may hold to stand as one path segment: RFC 3986 unreserved and sub-delims
#: characters plus ``:`` and ``@``. No ``/``, ``?``, ``#``, ``%``, space or control character.
_ID_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]{1,200}")


def require_id(value: str, what: str) -> str:
    """``value`` if it can stand as one path segment of a route (no ``/``, ``?``, ``#``, ``%``,
    whitespace or control character; not ``.`` or ``..``)."""
    if not isinstance(value, str) or not _ID_SEGMENT.fullmatch(value) or value in (".", ".."):
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise errors.ValidationError(f"{what} must be an id (one URL path segment), got {shown}")
    return value
