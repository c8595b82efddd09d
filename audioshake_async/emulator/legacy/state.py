"""What the routes, the job events and the facade of one legacy emulator share.

A legacy job is processed as a one-target Task of the Tasks emulator (same processor, CDN
and uploads, in :class:`~audioshake_async.emulator.runtime.Runtime`); :class:`LegacyState`
adds the legacy bookkeeping and renders jobs and assets the way the Jobs API shows them.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from pathlib import PurePosixPath
from typing import Any

import attrs

from ..catalog import MIME_TYPES
from ..files import content_type_for
from ..runtime import Runtime
from ..state import COMPLETED, ERROR, Asset, Target, Task, iso_timestamp
from .config import LegacyEmulatorConfig


@attrs.define(eq=False)
class LinkAsset:
    """An asset registered from a URL (``POST /upload/link``)."""

    id: str
    name: str
    link: str
    format: str
    created_at: float


@attrs.define(eq=False)
class Job:
    """A legacy job and the one-target task that processes it."""

    id: str
    task: Task
    asset_id: str
    metadata: dict[str, Any]
    callback_url: str | None
    created_at: float
    request_id: str
    phase: str
    not_found_left: int
    started_at: float | None = None
    updated_at: float = 0.0
    processing_timer: asyncio.TimerHandle | None = None
    #: The last callback delivery: the next one waits for it, so they arrive in order.
    last_delivery: asyncio.Task[None] | None = None

    @property
    def target(self) -> Target:
        """The task's only target."""
        return self.task.targets[0]


def asset_json(
    asset_id: str, name: str, fmt: str, link: str, file_type: str | None = None
) -> dict[str, Any]:
    """An asset as the Jobs API shows it (uploads, ``sourceAsset``)."""
    mime = file_type or MIME_TYPES.get(fmt, "application/octet-stream").split(";")[0]
    return {"name": name, "id": asset_id, "fileType": mime, "format": fmt, "link": link}


@attrs.define(eq=False)
class LegacyState:
    """Mutable shared state of one legacy emulator."""

    config: LegacyEmulatorConfig
    #: The Tasks emulator's shared state, while running.
    rt: Runtime | None = None
    jobs: dict[str, Job] = attrs.Factory(dict)
    by_task: dict[str, Job] = attrs.Factory(dict)
    links: dict[str, LinkAsset] = attrs.Factory(dict)
    #: Scripted outcomes per route (:meth:`~.server.LegacyEmulator.script`).
    script: dict[str, deque[str]] = attrs.Factory(dict)
    counts: Counter[str] = attrs.Factory(Counter)
    callbacks: Counter[str] = attrs.Factory(Counter)
    jobs_by_token: Counter[str] = attrs.Factory(Counter)

    def runtime(self) -> Runtime:
        """The shared runtime; ``RuntimeError`` when the emulator is not running."""
        if self.rt is None:
            raise RuntimeError("legacy emulator is not running (use 'async with')")
        return self.rt

    def file_asset_json(self, asset: Asset) -> dict[str, Any]:
        """An uploaded asset, with a fresh signed link."""
        rt = self.runtime()
        # The seed's example names the asset without its extension ("song" for song.mp3).
        stem = PurePosixPath(asset.name).stem or asset.name
        return asset_json(asset.id, stem, asset.format, rt.asset_link(asset), asset.mime_type)

    def status(self, job: Job) -> str:
        """The job's status as clients see it (``failure_status`` names a failure)."""
        status = job.target.status
        if status == COMPLETED:
            return "completed"
        if status == ERROR:
            return self.config.failure_status
        return job.phase

    def _source_json(self, job: Job) -> dict[str, Any] | None:
        link_asset = self.links.get(job.asset_id)
        if link_asset is not None:
            return asset_json(link_asset.id, link_asset.name, link_asset.format, link_asset.link)
        asset = self.runtime().store.assets.get(job.asset_id)
        return self.file_asset_json(asset) if asset is not None else None

    def job_json(self, job: Job) -> dict[str, Any]:
        """The job as ``GET /job/{id}`` shows it inside its envelope."""
        rt = self.runtime()
        target = job.target
        status = self.status(job)
        out: dict[str, Any] = {
            "id": job.id,
            "clientId": rt.store.client_id,
            "requestId": job.request_id,
            "createdAt": iso_timestamp(job.created_at),
            "updatedAt": iso_timestamp(job.updated_at),
            "status": status,
            "statusInfo": {},
            "metadata": dict(job.metadata),
            "assetId": job.asset_id,
        }
        if job.started_at is not None:
            out["startedAt"] = iso_timestamp(job.started_at)
        if job.callback_url is not None:
            out["callbackUrl"] = job.callback_url
        source = self._source_json(job)
        if source is not None:
            out["sourceAsset"] = source
        if target.status == ERROR and target.error is not None:
            out["statusInfo"] = {
                "code": target.error.get("code"),
                "message": target.error.get("message"),
            }
            out["error"] = target.error.get("message")
        if target.status == COMPLETED:
            outputs = [
                {
                    "name": o.filename,
                    "id": o.file_id,
                    "fileType": content_type_for(o.filename).split(";")[0],
                    "format": o.format,
                    "link": rt.output_link(o),
                }
                for o in target.outputs
            ]
            key = self.config.output_key
            if key == "nested" and source is not None:
                out["sourceAsset"] = {**source, "outputAssets": outputs}
            else:
                out["stemAssets" if key == "stemAssets" else "outputAssets"] = outputs
        return out
