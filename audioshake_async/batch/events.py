"""Structured progress events and per-item results of a batch.

A progress hook receives every event as it happens, so a web app can report progress without the
CLI. Hooks are plain callables, called on the event loop: keep them quick and non-blocking.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

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


@attrs.frozen
class UploadProgress:
    """Bytes of an input sent so far in the current upload attempt."""

    input: str
    sent: int
    total: int


@attrs.frozen
class Uploaded:
    """An input is now an asset (``reused`` when a fresh asset from an earlier run served)."""

    input: str
    asset_id: str
    size: int
    reused: bool = False


@attrs.frozen
class TaskCreated:
    """The task of an input exists (``recovered`` when found by its token after a failure,
    ``resumed`` when taken from the journal of an earlier run)."""

    input: str
    task_id: str
    recovered: bool = False
    resumed: bool = False


@attrs.frozen
class TargetDone:
    """One target of an input's task reached a terminal status."""

    input: str
    task_id: str
    target_id: str
    model: str
    status: str


@attrs.frozen
class FileWritten:
    """One output is complete under its final name: ``location`` (a path or an ``s3://`` URI);
    ``path`` is the local file (None when the output went to an object store)."""

    input: str
    path: pathlib.Path | None
    size: int
    location: str = ""


@attrs.frozen
class ItemSkipped:
    """An input was already done by an earlier run."""

    input: str


@attrs.frozen
class ItemFailed:
    """An input failed; the batch goes on."""

    input: str
    error: str


@attrs.frozen
class ItemDone:
    """An input finished with every target completed and every file written."""

    input: str
    files: tuple[pathlib.Path, ...]


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
