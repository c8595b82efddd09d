"""Structured progress events and per-item results of a batch.

A progress hook receives every event as it happens, so a web app can report progress without the
CLI. Hooks are plain callables, called on the event loop: keep them quick and non-blocking.
Every event carries ``at``, the wall-clock time (``time.time()``) it happened; it takes no part
in equality, so two events saying the same thing compare equal.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

import attrs

from ..models import Task

__all__ = [
    "BatchEvent",
    "BatchResult",
    "FileWritten",
    "FlowUpdate",
    "ItemDone",
    "ItemFailed",
    "ItemQueued",
    "ItemSkipped",
    "ProgressHook",
    "TargetDone",
    "TaskCreated",
    "UploadProgress",
    "Uploaded",
]


def _stamp() -> Any:
    # Keyword-only, after the positional fields; left out of equality and repr.
    return attrs.field(factory=time.time, kw_only=True, eq=False, repr=False)


@attrs.frozen
class BatchResult:
    """The outcome of one input.

    ``status`` is ``done`` (every target completed and every file written), ``skipped`` (done by
    an earlier run, per the journal) or ``failed`` (``error`` says why; ``files`` still lists
    what was written, e.g. the stems of the targets that did complete).

    ``files`` and ``directory`` are local paths (outputs on disk); ``locations`` names every
    output wherever it went: the same paths as text, or ``s3://`` URIs for an ``s3://`` output
    (``files`` and ``directory`` are then empty).
    """

    input: str
    status: str
    task: Task | None = None
    files: tuple[pathlib.Path, ...] = ()
    error: str | None = None
    directory: pathlib.Path | None = None
    locations: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True for ``done`` and ``skipped``."""
        return self.status in ("done", "skipped")


@attrs.frozen
class ItemQueued:
    """An input entered the pipeline."""

    input: str
    at: float = _stamp()


@attrs.frozen
class UploadProgress:
    """Bytes of an input sent so far in the current upload attempt."""

    input: str
    sent: int
    total: int
    at: float = _stamp()


@attrs.frozen
class Uploaded:
    """An input is now an asset (``reused`` when a fresh asset from an earlier run served)."""

    input: str
    asset_id: str
    size: int
    reused: bool = False
    at: float = _stamp()


@attrs.frozen
class TaskCreated:
    """The task of an input exists (``recovered`` when found by its token after a failure,
    ``resumed`` when taken from the journal of an earlier run)."""

    input: str
    task_id: str
    recovered: bool = False
    resumed: bool = False
    at: float = _stamp()


@attrs.frozen
class TargetDone:
    """One target of an input's task reached a terminal status."""

    input: str
    task_id: str
    target_id: str
    model: str
    status: str
    at: float = _stamp()


@attrs.frozen
class FileWritten:
    """One output is complete under its final name: ``location`` (a path or an ``s3://`` URI);
    ``path`` is the local file (None when the output went to an object store)."""

    input: str
    path: pathlib.Path | None
    size: int
    location: str = ""
    at: float = _stamp()


@attrs.frozen
class ItemSkipped:
    """An input was already done by an earlier run."""

    input: str
    at: float = _stamp()


@attrs.frozen
class ItemFailed:
    """An input failed; the batch goes on."""

    input: str
    error: str
    #: The exception's class name (None when a target ended in ``error``).
    error_type: str | None = None
    #: Whether running the item again may succeed (5xx, timeout, lost connection);
    #: None when unknown.
    retryable: bool | None = None
    at: float = _stamp()


@attrs.frozen
class ItemDone:
    """An input finished with every target completed and every file written."""

    input: str
    files: tuple[pathlib.Path, ...]
    at: float = _stamp()


@attrs.frozen
class FlowUpdate:
    """How the batch uses the account's budget (sent about once a second, and at the end).

    ``window`` is the tasks allowed in flight now (``peak_window`` the largest so far),
    ``in_flight`` the items admitted and not finished; ``processing_time`` the mean seconds a
    task spent in flight (None before the first finished); ``*_requests`` the API calls the
    engine made for each purpose and ``*_share`` their share of ``rate x elapsed``. ``rate`` is
    the requests/s this run plans on: the whole budget, or its share when ``workers``
    processes share one (``PostgresRateLimiter``).
    """

    elapsed: float
    rate: float
    window: int
    peak_window: int
    in_flight: int
    peak_in_flight: int
    processing_time: float | None
    upload_concurrency: int
    create_concurrency: int
    upload_requests: int
    create_requests: int
    poll_requests: int
    limit_signals: int
    workers: int = 1
    final: bool = False
    at: float = _stamp()

    def share(self, requests: int) -> float:
        """``requests`` as a share of the budget of the elapsed time."""
        budget = self.rate * self.elapsed
        return requests / budget if budget > 0 else 0.0

    def to_json(self) -> dict[str, float | int | None]:
        """The figures of the JSON summary."""
        return {
            "elapsed_s": round(self.elapsed, 3),
            "rate_per_s": self.rate,
            "window": self.window,
            "peak_window": self.peak_window,
            "peak_in_flight": self.peak_in_flight,
            "processing_time_s": (
                None if self.processing_time is None else round(self.processing_time, 3)
            ),
            "upload_concurrency": self.upload_concurrency,
            "create_concurrency": self.create_concurrency,
            "upload_share": round(self.share(self.upload_requests), 4),
            "create_share": round(self.share(self.create_requests), 4),
            "poll_share": round(self.share(self.poll_requests), 4),
            "poll_requests": self.poll_requests,
            "limit_signals": self.limit_signals,
            "workers": self.workers,
        }


BatchEvent = (
    ItemQueued
    | UploadProgress
    | Uploaded
    | TaskCreated
    | TargetDone
    | FileWritten
    | ItemSkipped
    | ItemFailed
    | ItemDone
    | FlowUpdate
)
ProgressHook = Callable[[BatchEvent], None]
