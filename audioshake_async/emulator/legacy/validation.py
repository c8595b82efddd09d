"""Checks of the legacy Jobs API request bodies (messages in the Fastify/ajv style)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import attrs

from ..catalog import CATALOG, ModelSpec, format_of
from ..errors import ApiError
from ..validation import is_http_url


@attrs.frozen
class LinkRequest:
    """A valid ``POST /upload/link`` body."""

    link: str
    #: The given name, else the link's file name without its extension.
    name: str
    format: str


@attrs.frozen
class JobRequest:
    """A valid ``POST /job`` body (the asset's existence is checked against state later)."""

    model: str
    spec: ModelSpec
    format: str
    asset_id: str
    callback_url: str | None
    metadata: dict[str, Any]
    #: Optional metadata fields, kept only where the model takes them.
    residual: bool | None
    variant: str | None
    language: str | None


def parse_link(body: object) -> LinkRequest:
    """Check a ``POST /upload/link`` body: ``{"link", "name"?}``."""
    if not isinstance(body, dict) or "link" not in body:
        raise ApiError(400, "body must have required property 'link'")
    link = body["link"]
    if not is_http_url(link):
        raise ApiError(400, "body/link must be an http or https URL")
    filename = PurePosixPath(link.split("?", 1)[0]).name
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "body/name must be string")
    fmt = format_of(filename, None)
    if fmt is None:
        raise ApiError(400, f"Unsupported file format: {filename or link}")
    return LinkRequest(link, name or PurePosixPath(filename).stem, fmt)


def parse_job(body: object) -> JobRequest:
    """Check a ``POST /job`` body: ``{"metadata": {"name", "format", ...}, "assetId", ...}``."""
    if not isinstance(body, dict):
        raise ApiError(400, "body must be object")
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        raise ApiError(400, "body must have required property 'metadata'")
    model, fmt = metadata.get("name"), metadata.get("format")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "body/metadata must have required property 'name'")
    if not isinstance(fmt, str) or not fmt:
        raise ApiError(400, "body/metadata must have required property 'format'")
    spec = CATALOG.get(model)
    if spec is None:
        raise ApiError(400, f"body/metadata/name: unknown model '{model}'")
    if spec.access != "enabled":
        raise ApiError(403, f"Model '{model}' requires access")
    if fmt not in spec.output_formats:
        allowed = ", ".join(spec.output_formats)
        raise ApiError(400, f"model '{model}' does not support format '{fmt}' ({allowed})")
    asset_id = body.get("assetId")
    if not isinstance(asset_id, str) or not asset_id:
        raise ApiError(400, "body must have required property 'assetId'")
    callback = body.get("callbackUrl")
    if callback is not None and not is_http_url(callback):
        raise ApiError(400, "body/callbackUrl must be an http or https URL")
    variant = metadata.get("variant")
    residual = metadata.get("residual")
    language = metadata.get("language")
    return JobRequest(
        model=model,
        spec=spec,
        format=fmt,
        asset_id=asset_id,
        callback_url=callback,
        metadata=dict(metadata),
        residual=residual if isinstance(residual, bool) and spec.is_audio else None,
        variant=variant if isinstance(variant, str) and variant in spec.variants else None,
        language=language if isinstance(language, str) else None,
    )
