"""The Tasks API's wire rules, I/O-free: request bodies, validation and response parsing."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from .. import errors
from .._convert import unstructure
from ..core.http import check_source_url, structure_as
from ..models import (
    DOCUMENTED_INPUT_EXTENSIONS,
    MAX_METADATA_LENGTH,
    MAX_UPLOAD_BYTES,
    Asset,
    Model,
    Target,
    Task,
    UsageMonth,
    Webhook,
    validate_targets,
)

DEFAULT_BASE_URL = "https://api.audioshake.ai"
#: Seconds an uploaded asset stays usable ("assets expire after 72 hours").
ASSET_LIFETIME = 72 * 3600.0
#: ``GET /tasks`` accepts ``take`` in 1..100.
MAX_PAGE_SIZE = 100


# --------------------------------------------------------------------------- validation


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
        check_source_url(url)
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
