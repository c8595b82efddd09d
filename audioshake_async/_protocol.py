"""I/O-free protocol logic: request bodies, validation, response -> model or error, retry maths.

Nothing here touches the network, the disk or the clock (callers pass ``now`` and random draws),
so every rule is unit-tested with plain data.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs

from . import errors
from ._convert import converter, unstructure
from .models import (
    DOCUMENTED_INPUT_EXTENSIONS,
    MAX_METADATA_LENGTH,
    MAX_TARGETS_PER_TASK,
    MAX_UPLOAD_BYTES,
    Asset,
    Model,
    Target,
    Task,
    UsageMonth,
    Webhook,
)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.audioshake.ai"
#: Documented account limit: 60 requests per second.
DEFAULT_RATE_LIMIT = 60.0
#: ``GET /tasks`` accepts ``take`` in 1..100.
MAX_PAGE_SIZE = 100

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


# --------------------------------------------------------------------------- validation


def validate_targets(targets: Sequence[Target]) -> tuple[Target, ...]:
    """Check a target list before ``POST /tasks``: 1..20 targets, each with a model and formats."""
    if isinstance(targets, Target):
        targets = [targets]
    result = tuple(targets)
    if not result:
        raise errors.ValidationError("a task needs at least one target")
    if len(result) > MAX_TARGETS_PER_TASK:
        raise errors.ValidationError(
            f"a task takes at most {MAX_TARGETS_PER_TASK} targets, got {len(result)}"
        )
    seen: set[tuple[str, str | None]] = set()
    for target in result:
        if not isinstance(target, Target):
            raise errors.ValidationError(f"targets must be Target objects, got {target!r}")
        if not target.model or not target.model.strip():
            raise errors.ValidationError("a target needs a model name")
        if not target.formats or any(not f or not f.strip() for f in target.formats):
            raise errors.ValidationError(f"target {target.model!r} needs at least one format")
        if len(set(target.formats)) != len(target.formats):
            raise errors.ValidationError(f"target {target.model!r} repeats a format")
        key = (target.model, target.variant)
        if key in seen:
            raise errors.ValidationError(f"target {target.model!r} appears twice in one task")
        seen.add(key)
        if target.transcript_url and target.transcript_asset_id:
            raise errors.ValidationError(
                "give either transcript_url or transcript_asset_id, not both"
            )
    return result


def build_create_task_body(
    *,
    targets: Sequence[Target],
    asset_id: str | None = None,
    url: str | None = None,
    metadata: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /tasks``, validated: exactly one source, 1..20 targets."""
    if (asset_id is None) == (url is None):
        raise errors.ValidationError("give exactly one source: asset_id or url")
    if asset_id is not None and not asset_id.strip():
        raise errors.ValidationError("asset_id is empty")
    if url is not None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("https", "http"):
            raise errors.ValidationError(f"url must be a public https URL, got {redact_url(url)!r}")
    if metadata is not None:
        if not isinstance(metadata, str):
            raise errors.ValidationError("metadata is a string (JSON-encode structured data)")
        if len(metadata) > MAX_METADATA_LENGTH:
            raise errors.ValidationError(
                f"metadata is {len(metadata)} characters, the limit is {MAX_METADATA_LENGTH}"
            )
    checked = validate_targets(targets)
    body: dict[str, Any] = {}
    if asset_id is not None:
        body["assetId"] = asset_id
    else:
        body["url"] = url
    body["targets"] = [unstructure(t) for t in checked]
    if metadata is not None:
        body["metadata"] = metadata
    if extra:
        body.update(extra)
    return body


def content_type_for(filename: str) -> str | None:
    """MIME type of a documented input extension, or None when the extension is not supported."""
    return DOCUMENTED_INPUT_EXTENSIONS.get(posixpath.splitext(filename.lower())[1])


def validate_upload(filename: str, size: int, *, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """Check an upload by name and size; return its content type."""
    content_type = content_type_for(filename)
    if content_type is None:
        supported = ", ".join(sorted(DOCUMENTED_INPUT_EXTENSIONS))
        raise errors.ValidationError(
            f"{filename!r}: unsupported file type (supported: {supported})"
        )
    if size <= 0:
        raise errors.ValidationError(f"{filename!r} is empty")
    if size > max_bytes:
        raise errors.ValidationError(
            f"{filename!r} is {size} bytes, over the {max_bytes}-byte upload limit"
        )
    return content_type


def validate_page(skip: int, take: int) -> None:
    """``GET /tasks`` accepts skip >= 0 and take in 1..100."""
    if skip < 0:
        raise errors.ValidationError(f"skip must be >= 0, got {skip}")
    if not 1 <= take <= MAX_PAGE_SIZE:
        raise errors.ValidationError(f"take must be in 1..{MAX_PAGE_SIZE}, got {take}")


_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


def safe_filename(name: str, fmt: str | None = None, *, fallback: str = "output") -> str:
    """A file name that stays inside its directory, whatever the server sent.

    Path separators, ``..``, control and reserved characters are replaced; an empty or dotted
    result becomes ``fallback``. ``fmt`` is appended as the extension.
    """
    text = unicodedata.normalize("NFC", name or "")
    text = _UNSAFE_CHARS.sub("_", text).strip().strip(".").strip()
    if not text or set(text) <= {"_", "."}:
        text = fallback
    text = text[:150]
    if fmt:
        ext = _UNSAFE_CHARS.sub("_", fmt).strip(". ") or "bin"
        text = f"{text}.{ext[:16]}"
    return text


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


def _as_list(data: Any, key: str, what: str) -> list[Any]:
    # Lists are documented bare; accept an envelope too, since the service may add one.
    if isinstance(data, dict) and isinstance(data.get(key), list):
        data = data[key]
    if not isinstance(data, list):
        raise errors.ResponseParseError(f"expected a list of {what}, got {type(data).__name__}")
    return data


def parse_task(data: Any) -> Task:
    """A Task from ``POST /tasks``, ``GET /tasks/{id}`` or a webhook delivery."""
    return structure_as(data, Task, "task")


def parse_tasks(data: Any) -> list[Task]:
    """The bare array of ``GET /tasks``."""
    return [parse_task(item) for item in _as_list(data, "tasks", "tasks")]


def parse_asset(data: Any) -> Asset:
    """An Asset from ``POST /assets`` or ``GET /assets/{id}``."""
    return structure_as(data, Asset, "asset")


def parse_assets(data: Any) -> list[Asset]:
    """The bare array of ``GET /assets``."""
    return [parse_asset(item) for item in _as_list(data, "assets", "assets")]


def parse_models(data: Any) -> list[Model]:
    """``GET /models``: the documented ``{"models": [...]}`` envelope."""
    return [structure_as(item, Model, "model") for item in _as_list(data, "models", "models")]


def parse_usage(data: Any) -> list[UsageMonth]:
    """``GET /tasks/statistics?name=usage``: rows with ``totalMinutes`` as a string."""
    return [structure_as(item, UsageMonth, "usage") for item in _as_list(data, "usage", "usage")]


def parse_webhooks(data: Any) -> list[Webhook]:
    """``GET /webhooks`` (inferred shape)."""
    return [
        structure_as(item, Webhook, "webhook") for item in _as_list(data, "webhooks", "webhooks")
    ]


def merge_task_snapshot(old: Task | None, new: Task) -> Task:
    """Keep the newer view of each target: a stale snapshot never un-finishes a target.

    Deliveries and polls can arrive out of order; a target seen terminal stays terminal.
    """
    if old is None or old.id != new.id:
        return new
    known = {t.id: t for t in old.targets}
    merged = []
    changed = False
    for target in new.targets:
        previous = known.get(target.id)
        if previous is not None and previous.is_terminal and not target.is_terminal:
            merged.append(previous)
            changed = True
        else:
            merged.append(target)
    if not changed:
        return new
    return attrs.evolve(
        new, targets=tuple(merged), completed_at=new.completed_at or old.completed_at
    )


def iter_output_names(task: Task) -> Iterable[tuple[str, str]]:
    """``(output name, format)`` of every output of the completed targets."""
    for output in task.outputs:
        yield output.name, output.format
