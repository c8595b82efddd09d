"""The knobs of a :class:`~.server.MusicAIEmulator`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .workflows import DEFAULT_WORKFLOWS, MusicAIWorkflow


def _fraction(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _order(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in ("oldest", "newest"):
        raise ValueError(f"{attribute.name} must be 'oldest' or 'newest', got {value!r}")


def _workflows(value: Iterable[MusicAIWorkflow] | None) -> tuple[MusicAIWorkflow, ...]:
    return DEFAULT_WORKFLOWS if value is None else tuple(value)


@attrs.define
class MusicAIConfig:
    """Knobs of a :class:`MusicAIEmulator` (all faults off by default)."""

    api_key: str = "musicai-key"
    app_name: str = "Emulated application"
    #: Seconds a job is ``STARTED`` before it ends.
    delay: float = attrs.field(default=0.2, validator=_non_negative)
    #: Seconds a job stays ``QUEUED`` first.
    queue_delay: float = attrs.field(default=0.0, validator=_non_negative)
    workflows: tuple[MusicAIWorkflow, ...] = attrs.field(default=None, converter=_workflows)
    #: Fraction of jobs that end ``FAILED`` with ``fail_code`` (decided at creation, seeded).
    fail_rate: float = attrs.field(default=0.0, validator=_fraction)
    fail_code: str = "INTERNAL_ERROR"
    #: Fraction of API requests answered with a status from ``fail_statuses``.
    http_fail_rate: float = attrs.field(default=0.0, validator=_fraction)
    fail_statuses: tuple[int, ...] = (500, 502, 503)
    #: Restrict ``http_fail_rate`` to these routes (``"GET /job/{id}"``...); None = all.
    fault_routes: frozenset[str] | None = None
    #: Token-bucket requests/s over all API routes (429 above it); None = no limit.
    rate_limit: float | None = attrs.field(default=None, validator=_non_negative)
    #: The next N API requests answer 429 (re-armed when set at run time).
    rate_limit_burst: int = attrs.field(default=0, validator=_non_negative)
    #: ``Retry-After`` seconds of 429 answers (None: no header).
    retry_after: float | None = attrs.field(default=1.0, validator=_non_negative)
    #: The next N ``POST /job`` create the job, then drop the connection without answering.
    drop_after_create: int = attrs.field(default=0, validator=_non_negative)
    #: The next N upload PUTs read the whole body, then answer 503 (the client must resend).
    put_failures: int = attrs.field(default=0, validator=_non_negative)
    #: ``GET /job`` order by creation: ``"oldest"`` or ``"newest"`` first.
    list_order: str = attrs.field(default="oldest", validator=_order)
    #: Answer ``GET /job`` as ``{"jobs": [...]}`` instead of a bare array.
    list_envelope: bool = False
    #: Seconds signed upload/download URLs stay valid.
    link_ttl: float = attrs.field(default=3600.0, validator=_non_negative)
    #: Result URLs end in ``<key>.wav``; False gives extension-less names (Content-Type only).
    result_extensions: bool = True
    #: Largest accepted upload (413 above it); None = no limit.
    max_upload_bytes: int | None = attrs.field(default=None, validator=_non_negative)
    host: str = "127.0.0.1"
    port: int = 0
    storage_port: int = 0
    #: Serve both hosts over HTTPS (a CA and a certificate for 127.0.0.1 made at start).
    tls: bool = False
    seed: int | None = None
    dsp_workers: int = 2
    #: Parent directory of the emulator's temp directory (None: the system default).
    workdir: str | None = None


#: Knobs that only take effect at start.
STARTUP_ONLY = frozenset(
    {"host", "port", "storage_port", "tls", "seed", "dsp_workers", "workdir", "workflows"}
)
