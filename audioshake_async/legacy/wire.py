"""Parsing of the Jobs API's answers, tolerant of every documented shape."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from .. import errors
from .._convert import parse_datetime
from ..core.http import structure_as
from .models import Job, LegacyAsset, LegacyUsage

logger = logging.getLogger("audioshake_async.legacy")


# --------------------------------------------------------------------------- parsing


def _unwrap(data: Any, key: str) -> Any:
    # Documented envelopes ({"job": ...}); accept a bare object too.
    if isinstance(data, dict) and isinstance(data.get(key), dict):
        return data[key]
    return data


def _dict_list(container: Mapping[str, Any], *keys: str) -> list[dict[str, Any]] | None:
    for key in keys:
        value = container.get(key)
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
    return None


def _output_asset(raw: dict[str, Any]) -> dict[str, Any] | None:
    item = dict(raw)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        link = item.get("link")
        if not isinstance(link, str) or not link:
            return None
        # A nameless output is still downloadable: name it after the link's last segment.
        item["name"] = unquote(urlsplit(link).path.rsplit("/", 1)[-1]) or "output"
    return item


def _clean_timestamp(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is None:
        return
    try:
        parse_datetime(value)
    except (TypeError, ValueError, AttributeError):
        # A timestamp in an unexpected format must not make the whole job unreadable.
        body.pop(key)


def parse_job(data: Any) -> Job:
    """A :class:`Job` from ``POST /job``, ``GET /job/{id}`` or a callback body, any variant."""
    raw = _unwrap(data, "job")
    if not isinstance(raw, dict):
        raise errors.ResponseParseError(f"expected a job object, got {type(raw).__name__}")
    body = dict(raw)
    source = body.get("sourceAsset")
    outputs = _dict_list(body, "outputAssets", "stemAssets")
    if outputs is None and isinstance(source, dict):
        # One documented example nests the outputs inside the source asset.
        outputs = _dict_list(source, "outputAssets", "stemAssets")
    body["outputAssets"] = [o for o in map(_output_asset, outputs or []) if o is not None]
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        metadata = body.get("stemMetadata")
    body["metadata"] = dict(metadata) if isinstance(metadata, dict) else {}
    status = body.get("status")
    body["status"] = status.strip().lower() if isinstance(status, str) and status else "created"
    info = body.get("statusInfo")
    if info is not None and not isinstance(info, dict):
        body["statusInfo"] = {"message": str(info)}
    if not isinstance(source, dict) or not isinstance(source.get("id"), str):
        body.pop("sourceAsset", None)
    for key in ("errorMessage",):
        if body.get(key) is not None and not isinstance(body[key], str):
            body[key] = str(body[key])
    for key in ("createdAt", "startedAt", "updatedAt"):
        _clean_timestamp(body, key)
    return structure_as(body, Job, "job")


def parse_legacy_asset(data: Any) -> LegacyAsset:
    """A :class:`LegacyAsset` from an upload response."""
    return structure_as(_unwrap(data, "asset"), LegacyAsset, "asset")


def parse_legacy_usage(data: Any) -> LegacyUsage:
    """``GET /usage`` (a bare list of months is accepted too)."""
    if isinstance(data, list):
        data = {"usage": data}
    return structure_as(data, LegacyUsage, "usage")
