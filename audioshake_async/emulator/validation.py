"""Pure request validation for ``POST /tasks``, ``GET /tasks`` and ``POST /webhooks``, and
the credit check that gates uploads and task creation.

Documented rules [DOC] (API reference, seed 001): exactly one of ``url``/``assetId``;
``targets`` 1..20; ``metadata`` a string of at most 4096 characters; each target has a
``model`` and ``formats``. Catalog checks (known model, allowed formats, variants, gated
access) follow ``GET /models``. Messages imitate Fastify/ajv (``body/targets must NOT have
more than 20 items``) since the real validation format is undocumented [INFER].

Tolerance [INFER]: unknown top-level fields (``callbackUrl``, ``writeDestination``...) and
unknown target fields are accepted and ignored; duplicate targets and duplicate formats are
accepted; ``language`` is any string; a transcript field on a model that takes none is
echoed and ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import yarl

from .catalog import CATALOG
from .errors import ApiError

MAX_METADATA = 4096


@attrs.frozen
class TargetRequest:
    """One validated target of a ``POST /tasks`` body."""

    model: str
    formats: tuple[str, ...]
    residual: bool | None = None
    variant: str | None = None
    language: str | None = None
    transcript_url: str | None = None
    transcript_asset_id: str | None = None


@attrs.frozen
class TaskRequest:
    """A validated ``POST /tasks`` body."""

    targets: tuple[TargetRequest, ...]
    url: str | None = None
    asset_id: str | None = None
    metadata: str | None = None


def is_http_url(value: object) -> bool:
    """True for an absolute ``http``/``https`` URL with a host."""
    if not isinstance(value, str) or not value:
        return False
    try:
        url = yarl.URL(value)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


def check_credits(credits: float | None) -> None:
    """400 ``Insufficient credits`` once a limited balance (``credits`` knob) is spent."""
    if credits is not None and credits <= 0:
        raise ApiError(400, "Insufficient credits")


def _bad(message: str) -> ApiError:
    return ApiError(400, message)


def _optional_str(target: Mapping[str, Any], key: str, where: str) -> str | None:
    value = target.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{where}/{key} must be string")
    return value


def _parse_target(raw: object, index: int) -> TargetRequest:
    where = f"body/targets/{index}"
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be object")
    for key in ("model", "formats"):
        if key not in raw:
            raise _bad(f"{where} must have required property '{key}'")
    model = raw["model"]
    if not isinstance(model, str):
        raise _bad(f"{where}/model must be string")
    spec = CATALOG.get(model)
    if spec is None:
        raise _bad(f"{where}/model: unknown model '{model}' (see GET /models)")
    formats = raw["formats"]
    if not isinstance(formats, list):
        raise _bad(f"{where}/formats must be array")
    if not formats:
        raise _bad(f"{where}/formats must NOT have fewer than 1 items")
    for j, fmt in enumerate(formats):
        if not isinstance(fmt, str):
            raise _bad(f"{where}/formats/{j} must be string")
        if fmt not in spec.output_formats:
            allowed = ", ".join(spec.output_formats)
            raise _bad(
                f"{where}/formats/{j}: model '{model}' does not support format '{fmt}' "
                f"(allowed: {allowed})"
            )
    residual = raw.get("residual")
    if residual is not None and not isinstance(residual, bool):
        raise _bad(f"{where}/residual must be boolean")
    variant = _optional_str(raw, "variant", where)
    if variant is not None and variant not in spec.variants:
        allowed = ", ".join(spec.variants) or "none"
        raise _bad(
            f"{where}/variant: model '{model}' has no variant '{variant}' (allowed: {allowed})"
        )
    transcript_url = _optional_str(raw, "transcriptUrl", where)
    if transcript_url is not None and not is_http_url(transcript_url):
        raise _bad(f"{where}/transcriptUrl must be an http or https URL")
    transcript_asset_id = _optional_str(raw, "transcriptAssetId", where)
    if transcript_url is not None and transcript_asset_id is not None:
        raise _bad(f"{where} must not have both 'transcriptUrl' and 'transcriptAssetId'")
    return TargetRequest(
        model=model,
        formats=tuple(formats),
        residual=residual,
        variant=variant,
        language=_optional_str(raw, "language", where),
        transcript_url=transcript_url,
        transcript_asset_id=transcript_asset_id,
    )


def parse_task(body: object, max_targets: int) -> TaskRequest:
    """Validate a ``POST /tasks`` body; raises :class:`ApiError` (400, or 403 for gated models)."""
    if not isinstance(body, dict):
        raise _bad("body must be object")
    if "targets" not in body:
        raise _bad("body must have required property 'targets'")
    has_url = body.get("url") is not None
    has_asset = body.get("assetId") is not None
    if has_url and has_asset:
        raise _bad("body must have exactly one of 'url' or 'assetId', not both")
    if not has_url and not has_asset:
        raise _bad("body must have exactly one of 'url' or 'assetId'")
    url = body.get("url")
    if has_url and not is_http_url(url):
        raise _bad("body/url must be an http or https URL")
    asset_id = body.get("assetId")
    if has_asset and (not isinstance(asset_id, str) or not asset_id):
        raise _bad("body/assetId must be a non-empty string")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, str):
            raise _bad("body/metadata must be string")
        if len(metadata) > MAX_METADATA:
            raise _bad(f"body/metadata must NOT have more than {MAX_METADATA} characters")
    targets = body["targets"]
    if not isinstance(targets, list):
        raise _bad("body/targets must be array")
    if not targets:
        raise _bad("body/targets must NOT have fewer than 1 items")
    if len(targets) > max_targets:
        raise _bad(f"body/targets must NOT have more than {max_targets} items")
    parsed = tuple(_parse_target(raw, i) for i, raw in enumerate(targets))
    for target in parsed:
        if CATALOG[target.model].access != "enabled":
            raise ApiError(
                403,
                f"Model '{target.model}' requires access; request it from support@audioshake.ai",
            )
    return TaskRequest(
        targets=parsed,
        url=url if has_url else None,
        asset_id=asset_id if has_asset else None,
        metadata=metadata,
    )


def parse_int_param(
    query: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    """An integer query parameter within bounds (400 otherwise)."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise _bad(f"querystring/{name} must be integer") from None
    if value < minimum:
        raise _bad(f"querystring/{name} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise _bad(f"querystring/{name} must be <= {maximum}")
    return value


def parse_webhook(body: object) -> str:
    """Validate a ``POST /webhooks`` body (``{"url": ...}``, [INFER] shape); returns the URL."""
    if not isinstance(body, dict) or "url" not in body:
        raise _bad("body must have required property 'url'")
    url = body["url"]
    if not is_http_url(url):
        raise _bad("body/url must be an http or https URL")
    assert isinstance(url, str)
    return url
