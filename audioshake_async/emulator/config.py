"""Every knob of the emulator, with its default and what it does.

The configuration is an immutable :class:`EmulatorConfig`; changing knobs at run time
(``Emulator.configure`` or ``POST /_emulator/config``) builds a new validated instance with
:func:`attrs.evolve` and swaps it in atomically, so a half-applied change is never observed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs

GiB = 1024**3
HOUR = 3600.0

#: Knobs that only make sense before the servers start (sockets, RNG seed, thread pool).
STARTUP_ONLY_KNOBS = frozenset({"host", "port", "cdn_host", "cdn_port", "seed", "dsp_workers"})


def _fraction(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{attribute.name} must be a fraction in [0, 1], got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive_or_none(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a number > 0 or None, got {value!r}")


def _non_negative_or_none(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    _non_negative(_inst, attribute, value)


def _port(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (isinstance(value, int) and 0 <= value <= 65535):
        raise ValueError(f"{attribute.name} must be a TCP port in [0, 65535], got {value!r}")


def _non_negative_int(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not (isinstance(value, int) and value >= 0):
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _to_str_set(value: Iterable[str] | str | None) -> frozenset[str]:
    # JSON config arrives as lists; a lone string is one id, not a set of characters.
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(str(v) for v in value)


def _to_optional_str_set(value: Iterable[str] | str | None) -> frozenset[str] | None:
    return None if value is None else _to_str_set(value)


def _to_statuses(value: Iterable[int]) -> tuple[int, ...]:
    statuses = tuple(int(v) for v in value)
    if not statuses or any(not 500 <= s <= 599 for s in statuses):
        raise ValueError(f"fail_statuses must be non-empty 5xx codes, got {statuses!r}")
    return statuses


@attrs.frozen(kw_only=True)
class EmulatorConfig:
    """All emulator knobs. Rates are fractions in ``[0, 1]``, times are seconds.

    Faults are all off by default, so a default emulator behaves like a healthy API that
    follows the documented limits (60 requests/s, 20 targets, 2 GiB uploads, 72 h asset
    retention, 1 h download links).
    """

    # --- servers -------------------------------------------------------------------------
    #: Value the ``x-api-key`` header must carry (changeable at run time to test key rotation).
    api_key: str = "emulator-key"
    #: Host/port of the API server; port 0 picks a free port.
    host: str = "127.0.0.1"
    port: int = attrs.field(default=0, validator=_port)
    #: Host/port of the CDN server that serves signed download links; port 0 picks a free port.
    cdn_host: str = "127.0.0.1"
    cdn_port: int = attrs.field(default=0, validator=_port)
    #: Seed for every random decision (ids, fault rolls, jitter). ``None`` = unpredictable.
    seed: int | None = None

    # --- processing ----------------------------------------------------------------------
    #: Seconds a target stays ``processing`` before turning terminal.
    delay: float = attrs.field(default=0.2, validator=_non_negative)
    #: Extra uniform random seconds in ``[0, jitter]`` added per target.
    jitter: float = attrs.field(default=0.0, validator=_non_negative)
    #: Fraction of targets that end in ``error`` (decided at creation, seeded).
    target_error_rate: float = attrs.field(default=0.0, validator=_fraction)
    #: Model ids whose targets always end in ``error``.
    error_models: frozenset[str] = attrs.field(default=frozenset(), converter=_to_str_set)
    #: Worker threads for the DSP stand-in (kept off the event loop).
    dsp_workers: int = attrs.field(default=2, validator=_non_negative_int)

    # --- limits --------------------------------------------------------------------------
    #: Largest accepted upload in bytes (413 above it). Documented: 2 GB.
    max_upload_bytes: int = attrs.field(default=2 * GiB, validator=_non_negative_int)
    #: Seconds after which an asset is gone (404 ``Cannot find asset``). Documented: 72 h.
    asset_ttl: float = attrs.field(default=72 * HOUR, validator=_non_negative)
    #: Seconds a signed CDN link stays valid. Documented: 1 h.
    link_ttl: float = attrs.field(default=HOUR, validator=_non_negative)
    #: Maximum targets per task (the API reference says 20; older guides say 10).
    max_targets: int = attrs.field(default=20, validator=_non_negative_int)
    #: Credit balance; ``None`` = unlimited. With a balance <= 0, uploads and task creation
    #: answer the documented ``400 Insufficient credits``; completed targets are deducted.
    credits: float | None = None

    # --- rate limiting -------------------------------------------------------------------
    #: Token-bucket refill rate in requests/s (documented: 60); ``None`` disables it.
    rate_limit: float | None = attrs.field(default=60.0, validator=_positive_or_none)
    #: Bucket size (burst); ``None`` = same as ``rate_limit``.
    rate_limit_capacity: float | None = attrs.field(default=None, validator=_positive_or_none)
    #: ``Retry-After`` seconds sent with 429 answers; ``None`` sends no header (undocumented
    #: whether the real API sends one).
    retry_after: float | None = attrs.field(default=None, validator=_non_negative_or_none)
    #: Fault: the next N API requests answer 429 regardless of the bucket. Setting it at run
    #: time re-arms the counter.
    rate_limit_burst: int = attrs.field(default=0, validator=_non_negative_int)
    #: Fault (no concurrency limit is documented): ``POST /tasks`` answers 429 while this many
    #: tasks have a target still processing; ``None`` = no limit.
    max_active_tasks: int | None = attrs.field(default=None, validator=_positive_or_none)

    # --- API faults ----------------------------------------------------------------------
    #: Fraction of API requests answered with a 5xx status from ``fail_statuses``.
    fail_rate: float = attrs.field(default=0.0, validator=_fraction)
    fail_statuses: tuple[int, ...] = attrs.field(default=(500, 502, 503), converter=_to_statuses)
    #: Fraction of API requests whose connection is closed without any response.
    drop_rate: float = attrs.field(default=0.0, validator=_fraction)
    #: Fraction of ``POST /tasks`` that create the task and then drop the connection.
    drop_after_create_rate: float = attrs.field(default=0.0, validator=_fraction)
    #: Fault: the next N ``POST /tasks`` that reach creation create the task and then drop
    #: the connection (on top of ``drop_after_create_rate``). Setting it at run time re-arms
    #: the counter, so a test can be sure the ambiguous case happens.
    drop_after_create: int = attrs.field(default=0, validator=_non_negative_int)
    #: Extra seconds added to every API request.
    latency: float = attrs.field(default=0.0, validator=_non_negative)
    #: Fraction of ``GET /tasks/{id}`` answered with the snapshot taken at creation.
    stale_rate: float = attrs.field(default=0.0, validator=_fraction)
    #: Restrict ``fail_rate``/``drop_rate``/``latency`` to these routes (``"POST /tasks"``,
    #: ``"GET /tasks/{id}"``...); ``None`` = every API route.
    fault_routes: frozenset[str] | None = attrs.field(default=None, converter=_to_optional_str_set)

    # --- CDN faults ----------------------------------------------------------------------
    #: Fraction of CDN downloads that send the full ``Content-Length`` and then close the
    #: connection after about half of the bytes.
    truncate_rate: float = attrs.field(default=0.0, validator=_fraction)

    # --- webhooks ------------------------------------------------------------------------
    #: Retries after a failed delivery (non-2xx or connection error).
    webhook_retries: int = attrs.field(default=3, validator=_non_negative_int)
    #: First retry delay; doubles on every retry.
    webhook_backoff: float = attrs.field(default=0.05, validator=_non_negative)
    #: Timeout of one delivery attempt.
    webhook_timeout: float = attrs.field(default=5.0, validator=_non_negative)
    #: Fraction of deliveries silently never sent.
    webhook_drop_rate: float = attrs.field(default=0.0, validator=_fraction)
    #: Fraction of deliveries sent twice.
    webhook_duplicate_rate: float = attrs.field(default=0.0, validator=_fraction)
    #: Each delivery waits a uniform random ``[0, jitter]`` seconds first, so deliveries of
    #: one task can arrive out of order.
    webhook_delay_jitter: float = attrs.field(default=0.0, validator=_non_negative)

    def to_json(self) -> dict[str, Any]:
        """Return the knobs as JSON-compatible values (sets become sorted lists)."""
        out: dict[str, Any] = {}
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    def evolve(self, **knobs: Any) -> EmulatorConfig:
        """Return a validated copy with ``knobs`` changed; unknown names raise ``TypeError``."""
        known = attrs.fields_dict(type(self))
        unknown = sorted(set(knobs) - set(known))
        if unknown:
            raise TypeError(f"unknown emulator knob(s): {', '.join(unknown)}")
        return attrs.evolve(self, **knobs)


def knob_names() -> list[str]:
    """Names of every knob, in declaration order."""
    return [f.name for f in attrs.fields(EmulatorConfig)]
