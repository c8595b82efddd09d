"""I/O-free HTTP rules shared by every service: retry and poll maths, status -> error,
Retry-After, redaction, origin checks, response structuring.

Nothing here touches the network, the disk or the clock (callers pass ``now`` and random draws),
so every rule is unit-tested with plain data.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs

from .. import errors
from .._convert import converter

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


def decode_body(raw: bytes) -> Any:
    """JSON when the body is JSON, else the text (error bodies are not always JSON)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


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


def normalize_base_url(base_url: str) -> str:
    """Validate and strip a base URL (``http(s)://host[:port][/prefix]``)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.ConfigurationError(f"base URL must be http(s)://host[:port], got {base_url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


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
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        raise errors.ResponseParseError(f"unexpected {what} in response: {exc}") from None


def require_id(value: str, what: str) -> str:
    """``value`` if it can stand as one path segment of a route (no ``/``, not ``.``/``..``)."""
    if not isinstance(value, str) or not value.strip() or "/" in value or value in (".", ".."):
        raise errors.ValidationError(f"{what} must be a non-empty id, got {value!r}")
    return value
