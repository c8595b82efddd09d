"""The concurrent batch engine: many inputs to stems on disk, resumable, never billing twice."""

from .engine import BatchOptions, run_batch, targets_signature
from .events import (
    BatchEvent,
    BatchResult,
    FileWritten,
    FlowUpdate,
    ItemDone,
    ItemFailed,
    ItemQueued,
    ItemSkipped,
    ProgressHook,
    TargetDone,
    TaskCreated,
    Uploaded,
    UploadProgress,
)
from .inputs import expand_inputs
from .journal import AsyncJournal, ItemRecord, Journal, OutputRecord, SqliteJournal
from .options import BatchOptionValues
from .seam import BatchProvider, Hints, SupportsBatch

__all__ = [
    "AsyncJournal",
    "BatchEvent",
    "BatchOptionValues",
    "BatchOptions",
    "BatchProvider",
    "BatchResult",
    "FileWritten",
    "FlowUpdate",
    "Hints",
    "ItemDone",
    "ItemFailed",
    "ItemQueued",
    "ItemRecord",
    "ItemSkipped",
    "Journal",
    "OutputRecord",
    "ProgressHook",
    "SqliteJournal",
    "SupportsBatch",
    "TargetDone",
    "TaskCreated",
    "UploadProgress",
    "Uploaded",
    "expand_inputs",
    "run_batch",
    "targets_signature",
]
