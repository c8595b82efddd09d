"""The knobs of a :class:`~.server.LegacyEmulator`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ..config import EmulatorConfig

#: Where outputs appear in a job: the ``output_key`` knob.
OUTPUT_KEYS = ("outputAssets", "stemAssets", "nested")


def _status_knob(allowed: tuple[str, ...]) -> Any:
    def check(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{attribute.name} must be one of {allowed}, got {value!r}")

    return check


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _str_set(value: Iterable[str] | str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    return frozenset({value}) if isinstance(value, str) else frozenset(value)


@attrs.frozen(kw_only=True)
class LegacyEmulatorConfig:
    """Knobs of the legacy emulator (times in seconds)."""

    #: The Bearer token clients must send.
    token: str = "legacy-token"
    host: str = "127.0.0.1"
    port: int = 0
    cdn_host: str = "127.0.0.1"
    cdn_port: int = 0
    seed: int | None = None
    #: Seconds from creation until a job is terminal; ``processing`` from half-way.
    delay: float = attrs.field(default=0.2, validator=_non_negative)
    #: Status of a new job: ``queued`` (legacy page) or ``created`` (data-model pages).
    initial_status: str = attrs.field(
        default="queued", validator=_status_knob(("queued", "created"))
    )
    #: Status of a failed job: clients see both.
    failure_status: str = attrs.field(default="failed", validator=_status_knob(("failed", "error")))
    #: Where outputs appear: ``outputAssets``, ``stemAssets`` (older docs) or ``nested`` inside
    #: ``sourceAsset`` (one documented example).
    output_key: str = attrs.field(default="outputAssets", validator=_status_knob(OUTPUT_KEYS))
    #: ``GET /job/{id}`` answers 404 this many times for each new job (seen in the wild).
    not_found_reads: int = attrs.field(default=0, validator=_non_negative)
    #: Models whose jobs always fail.
    error_models: frozenset[str] = attrs.field(default=frozenset(), converter=_str_set)
    #: ``Retry-After`` seconds sent with a scripted 429.
    retry_after: float | None = 0.0
    link_ttl: float = attrs.field(default=3600.0, validator=_non_negative)
    asset_ttl: float = attrs.field(default=72 * 3600.0, validator=_non_negative)
    max_upload_bytes: int = attrs.field(default=2 * 1024**3, validator=_non_negative)
    #: Retries of a callback delivery that failed (doubling ``callback_backoff``).
    callback_retries: int = attrs.field(default=3, validator=_non_negative)
    callback_backoff: float = attrs.field(default=0.05, validator=_non_negative)
    callback_timeout: float = attrs.field(default=5.0, validator=_non_negative)
    dsp_workers: int = 2

    def runtime_config(self) -> EmulatorConfig:
        """The Tasks emulator's config for the shared parts (processing, CDN, uploads)."""
        return EmulatorConfig(
            api_key="unused-by-the-legacy-emulator",
            host=self.host,
            port=self.port,
            cdn_host=self.cdn_host,
            cdn_port=self.cdn_port,
            seed=self.seed,
            delay=self.delay,
            max_upload_bytes=self.max_upload_bytes,
            asset_ttl=self.asset_ttl,
            link_ttl=self.link_ttl,
            rate_limit=None,
            dsp_workers=self.dsp_workers,
        )
