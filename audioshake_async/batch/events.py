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
)
ProgressHook = Callable[[BatchEvent], None]
