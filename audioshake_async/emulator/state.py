"""In-memory store of assets, tasks, webhooks and counters. No I/O happens here.

Rendering a task to JSON needs signed links, which belong to the CDN; the store therefore
takes a ``link`` callable instead of knowing how links are made.
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import string
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

PROCESSING = "processing"
COMPLETED = "completed"
ERROR = "error"
TERMINAL = frozenset({COMPLETED, ERROR})

_ALPHABET = string.ascii_lowercase + string.digits

#: Every fault kind the emulator can serve; stats list them all, zero or not.
FAULT_KINDS = (
    "fail",
    "drop",
    "drop_after_create",
    "latency",
    "stale",
    "rate_limit_burst",
    "rate_limited",
    "truncate",
    "webhook_drop",
    "webhook_duplicate",
)


def iso_timestamp(epoch: float) -> str:
    """``2026-03-25T03:16:17.442Z``: ISO 8601 with milliseconds and ``Z``, like the API."""
    moment = _dt.datetime.fromtimestamp(epoch, tz=_dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_minutes(minutes: float) -> str:
    """Minutes as the decimal string ``GET /tasks/statistics`` uses (``"12.5"``)."""
    text = f"{minutes:.2f}".rstrip("0").rstrip(".")
    return text or "0"


class IdFactory:
    """cuid-like ids (``c`` + 24 lowercase alphanumerics), reproducible with a seed."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._issued: set[str] = set()

    def new(self) -> str:
        """Return a fresh id never returned before by this factory."""
        while True:
            candidate = "c" + "".join(self._rng.choices(_ALPHABET, k=24))
            if candidate not in self._issued:
                self._issued.add(candidate)
                return candidate


@attrs.define
class Asset:
    """An uploaded file (``POST /assets``)."""

    id: str
    name: str
    format: str
    mime_type: str
    path: Path
    size: int
    created_at: float
    expires_at: float
    file_id: str

    def expired(self, now: float) -> bool:
        """True once the retention period is over."""
        return now >= self.expires_at

    def upload_json(self, link: str) -> dict[str, Any]:
        """Body of ``POST /assets``."""
        return {"id": self.id, "format": self.format, "link": link, "name": self.name}

    def list_json(self) -> dict[str, Any]:
        """Item of ``GET /assets`` (documented without ``link``)."""
        return {"id": self.id, "format": self.format, "name": self.name}

    def get_json(self, link: str) -> dict[str, Any]:
        """Body of ``GET /assets/{id}`` (documented with an extra ``mimeType``)."""
        return {
            "id": self.id,
            "mimeType": self.mime_type,
            "format": self.format,
            "link": link,
            "name": self.name,
        }


@attrs.frozen
class OutputFile:
    """One produced file: what a target's ``output[]`` entry points to."""

    name: str
    format: str
    file_id: str
    path: Path
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        """``<name>.<format>``: the last path segment of its link."""
        return f"{self.name}.{self.format}"


@attrs.define
class Target:
    """One requested model run inside a task."""

    id: str
    model: str
    formats: list[str]
    residual: bool | None = None
    variant: str | None = None
    language: str | None = None
    transcript_url: str | None = None
    transcript_asset_id: str | None = None
    status: str = PROCESSING
    outputs: list[OutputFile] = attrs.field(factory=list)
    cost: float | None = None
    duration: float | None = None
    error: dict[str, Any] | None = None
    #: Seconds after the task's creation at which this target turns terminal.
    due: float = 0.0
    #: Set at creation when a fault knob decided this target will fail.
    forced_error: str | None = None

    @property
    def terminal(self) -> bool:
        """True once ``completed`` or ``error``."""
        return self.status in TERMINAL

    def to_json(self, link: Callable[[OutputFile], str]) -> dict[str, Any]:
        """The target as the API returns it; echo fields only when they were sent."""
        out: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "formats": list(self.formats),
            "output": [{"name": o.name, "format": o.format, "link": link(o)} for o in self.outputs],
        }
        if self.cost is not None:
            out["cost"] = self.cost
        if self.error is not None:
            out["error"] = dict(self.error)
        if self.duration is not None:
            out["duration"] = self.duration
        for key, value in (
            ("residual", self.residual),
            # [INFER] not in the documented response schema; echoed like the others.
            ("variant", self.variant),
            ("language", self.language),
            ("transcriptUrl", self.transcript_url),
            ("transcriptAssetId", self.transcript_asset_id),
        ):
            if value is not None:
                out[key] = value
        return out


@attrs.define
class Task:
    """A task (``POST /tasks``): one source and its targets."""

    id: str
    created_at: float
    client_id: str
    targets: list[Target]
    asset_id: str | None = None
    url: str | None = None
    metadata: str | None = None
    completed_at: float | None = None
    #: JSON of the task as created, served by the ``stale_rate`` fault (never mutated).
    creation_snapshot: dict[str, Any] = attrs.field(factory=dict)

    @property
    def done(self) -> bool:
        """True when every target is terminal."""
        return all(t.terminal for t in self.targets)

    @property
    def cost(self) -> float:
        """Credits of the task: the sum of its targets' costs."""
        return float(sum(t.cost or 0 for t in self.targets))

    def to_json(self, link: Callable[[OutputFile], str]) -> dict[str, Any]:
        """The task as the API returns it (create, get, list and webhook payloads)."""
        cost = self.cost
        out: dict[str, Any] = {
            "id": self.id,
            "createdAt": iso_timestamp(self.created_at),
            "completedAt": (
                iso_timestamp(self.completed_at) if self.completed_at is not None else None
            ),
            "clientId": self.client_id,
            "cost": int(cost) if cost.is_integer() else cost,
        }
        # Documented: "If you provide one, only that field is returned".
        if self.asset_id is not None:
            out["assetId"] = self.asset_id
        if self.url is not None:
            out["url"] = self.url
        if self.metadata is not None:
            out["metadata"] = self.metadata
        out["targets"] = [t.to_json(link) for t in self.targets]
        return out


@attrs.define
class Webhook:
    """A registered webhook endpoint (``POST /webhooks``, [INFER] shape)."""

    id: str
    url: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        """The webhook as ``POST``/``GET /webhooks`` return it."""
        return {"id": self.id, "url": self.url, "createdAt": iso_timestamp(self.created_at)}


@attrs.define
class Stats:
    """Counters behind ``GET /_emulator/stats``."""

    requests: Counter[str] = attrs.field(factory=Counter)
    responses: Counter[str] = attrs.field(factory=Counter)
    tasks_created: int = 0
    targets_created: int = 0
    assets_created: int = 0
    bytes_uploaded: int = 0
    uploads_rejected: int = 0
    tasks_by_metadata: Counter[str] = attrs.field(factory=Counter)
    faults: Counter[str] = attrs.field(factory=Counter)
    cdn_requests: int = 0
    cdn_denied: int = 0
    cdn_key_leaks: int = 0
    cdn_key_leak_headers: set[str] = attrs.field(factory=set)
    webhooks: Counter[str] = attrs.field(factory=Counter)

    def fault(self, kind: str) -> None:
        """Count one served fault of ``kind``."""
        self.faults[kind] += 1


class Store:
    """Assets, tasks and webhooks of one emulator, plus its counters."""

    def __init__(self, rng: random.Random, clock: Callable[[], float]) -> None:
        self.ids = IdFactory(rng)
        self.clock = clock
        self.client_id = self.ids.new()
        self.assets: dict[str, Asset] = {}
        self.tasks: dict[str, Task] = {}
        self.webhooks: dict[str, Webhook] = {}
        self.stats = Stats()
        #: No asset expires before this time: every upload sweeps expired assets, and without
        #: this watermark each sweep scanned them all (quadratic over a 100k-file catalog).
        #: Change ``Asset.expires_at`` through the store (``expire_all_assets``) to keep it true.
        self._next_expiry = math.inf

    # --- assets --------------------------------------------------------------------------
    def add_asset(self, asset: Asset) -> None:
        """Store a freshly uploaded asset."""
        self.assets[asset.id] = asset
        self._next_expiry = min(self._next_expiry, asset.expires_at)
        self.stats.assets_created += 1

    def live_asset(self, asset_id: str) -> Asset | None:
        """The asset if it exists and has not expired."""
        asset = self.assets.get(asset_id)
        if asset is None or asset.expired(self.clock()):
            return None
        return asset

    def pop_expired_assets(self) -> list[Asset]:
        """Forget expired assets and return them so the caller can delete their files."""
        now = self.clock()
        if now < self._next_expiry:
            return []
        gone = [a for a in self.assets.values() if a.expired(now)]
        for asset in gone:
            del self.assets[asset.id]
        self._next_expiry = min((a.expires_at for a in self.assets.values()), default=math.inf)
        return gone

    def expire_all_assets(self) -> int:
        """Make every asset expired now; returns how many were live."""
        now = self.clock()
        count = 0
        for asset in self.assets.values():
            if not asset.expired(now):
                count += 1
            asset.expires_at = min(asset.expires_at, now)
        self._next_expiry = min(self._next_expiry, now)
        return count

    # --- tasks ---------------------------------------------------------------------------
    def add_task(self, task: Task) -> None:
        """Store a freshly created task and count it."""
        self.tasks[task.id] = task
        self.stats.tasks_created += 1
        self.stats.targets_created += len(task.targets)
        if task.metadata is not None:
            self.stats.tasks_by_metadata[task.metadata] += 1

    def newest_tasks(self, skip: int, take: int) -> list[Task]:
        """One page of tasks, newest first (the order is [INFER])."""
        ordered: Iterator[Task] = reversed(self.tasks.values())
        page: list[Task] = []
        for index, task in enumerate(ordered):
            if index < skip:
                continue
            if len(page) >= take:
                break
            page.append(task)
        return page

    def usage(self) -> list[dict[str, Any]]:
        """``GET /tasks/statistics?name=usage``: completed targets and minutes per month."""
        months: dict[str, list[float]] = {}
        for task in self.tasks.values():
            month = iso_timestamp(task.created_at)[:7]
            bucket = months.setdefault(month, [0, 0.0])
            for target in task.targets:
                if target.status == COMPLETED:
                    bucket[0] += 1
                    bucket[1] += (target.duration or 0.0) / 60.0
        return [
            {"month": m, "totalTargets": int(v[0]), "totalMinutes": format_minutes(v[1])}
            for m, v in sorted(months.items(), reverse=True)
        ]

    def distribution(self) -> list[dict[str, Any]]:
        """``name=distribution``: per-model usage. The shape is [INFER] (undocumented)."""
        models: dict[str, list[float]] = {}
        for task in self.tasks.values():
            for target in task.targets:
                if target.status == COMPLETED:
                    bucket = models.setdefault(target.model, [0, 0.0])
                    bucket[0] += 1
                    bucket[1] += (target.duration or 0.0) / 60.0
        return [
            {"model": m, "totalTargets": int(v[0]), "totalMinutes": format_minutes(v[1])}
            for m, v in sorted(models.items())
        ]

    # --- webhooks ------------------------------------------------------------------------
    def add_webhook(self, url: str) -> Webhook:
        """Register a webhook endpoint."""
        hook = Webhook(id=self.ids.new(), url=url, created_at=self.clock())
        self.webhooks[hook.id] = hook
        return hook

    # --- introspection -------------------------------------------------------------------
    def snapshot_stats(self) -> dict[str, Any]:
        """The counters as JSON-compatible values."""
        s = self.stats
        statuses: Counter[str] = Counter()
        for task in self.tasks.values():
            for target in task.targets:
                statuses[target.status] += 1
        return {
            "requests": dict(sorted(s.requests.items())),
            "responses": dict(sorted(s.responses.items())),
            "tasks_created": s.tasks_created,
            "targets_created": s.targets_created,
            "targets": {k: statuses.get(k, 0) for k in (PROCESSING, COMPLETED, ERROR)},
            "assets_created": s.assets_created,
            "bytes_uploaded": s.bytes_uploaded,
            "uploads_rejected": s.uploads_rejected,
            "tasks_by_metadata": dict(s.tasks_by_metadata),
            "duplicate_metadata": {m: n for m, n in s.tasks_by_metadata.items() if n > 1},
            "cdn_requests": s.cdn_requests,
            "cdn_denied": s.cdn_denied,
            "cdn_key_leaks": s.cdn_key_leaks,
            "cdn_key_leak_headers": sorted(s.cdn_key_leak_headers),
            "faults": {k: s.faults.get(k, 0) for k in FAULT_KINDS},
            "webhooks": {
                k: s.webhooks.get(k, 0)
                for k in (
                    "deliveries_attempted",
                    "deliveries_succeeded",
                    "deliveries_failed",
                    "attempts",
                    "retries",
                    "dropped",
                    "duplicated",
                )
            },
        }


def billed_minutes(duration: float) -> int:
    """Whole minutes billed for ``duration`` seconds, rounded up ([3P] rule, matches the
    documented example: 200.53 s -> 4 credits at 1 credit/min)."""
    # The epsilon keeps 120.0000000001 s (float noise) from billing a third minute.
    return math.ceil(duration / 60.0 - 1e-9)
