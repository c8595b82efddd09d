"""The per-input record of a batch: its state is an enum, its journal a typed handle."""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import pathlib
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread
import attrs

from .. import errors
from ..core.files import safe_filename
from ..models import Output, Task
from .journal import ItemJournal, ItemRecord, OutputRecord

logger = logging.getLogger("audioshake_async.batch")


#: Bytes read per step while hashing an input.
HASH_CHUNK = 1 << 20


class ItemState(enum.Enum):
    """Where an item is; it only moves forward."""

    #: Admitted: being uploaded or created (no task yet).
    QUEUED = "queued"
    #: Its task exists and the watcher refreshes it.
    WATCHING = "watching"
    #: Its task ended (or the item failed); downloads may still be running.
    SETTLING = "settling"
    #: Reported: its result was sent.
    FINISHED = "finished"


class Origin(enum.Enum):
    """Where an item's task came from."""

    #: Created by this run.
    NEW = "new"
    #: Found in the journal (an earlier run created it).
    RESUMED = "resumed"
    #: The journal's task was gone (404) and this run created it again (once).
    RECREATED = "recreated"


@attrs.define(eq=False)
class WatchState:
    """The watcher's bookkeeping of one task in flight."""

    started: float = 0.0
    next_due: float = 0.0
    polls: int = 0
    last_read_ok: float = 0.0
    #: (target id, status) pairs deliveries announced that no read has confirmed yet.
    hint_keys: frozenset[tuple[str, str]] = frozenset()
    #: Reads since the last delivery that did not show its change (stale or forged).
    hint_tries: int = 0
    #: A delivery scheduled a read that has not begun yet: it is read even between sweeps.
    hinted: bool = False
    unsubscribe: Callable[[], None] | None = None


@attrs.define(eq=False)
class Item:
    """One input on its way through the pipeline."""

    display: str
    source: str
    is_url: bool
    #: Local output directory (disk sink); for another sink, the item's relative directory.
    directory: pathlib.Path
    journal: ItemJournal
    #: The output directory's name, relative to the sink's root.
    dirname: str = ""
    #: An ``s3://`` input: presigned just before each create, never uploaded.
    s3: bool = False
    state: ItemState = ItemState.QUEUED
    origin: Origin = Origin.NEW
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    asset_id: str | None = None
    upload_name: str | None = None
    #: The asset was found gone once and uploaded again (never twice).
    reuploaded: bool = False
    token: str | None = None
    #: Epoch seconds of the create intent: how far back a token search must look.
    intent_at: float | None = None
    task_id: str | None = None
    task: Task | None = None
    watch: WatchState = attrs.Factory(WatchState)
    known_outputs: dict[str, OutputRecord] = attrs.Factory(dict)
    used_names: set[str] = attrs.Factory(set)
    dispatched: set[tuple[str, str, str]] = attrs.Factory(set)
    reported_targets: set[str] = attrs.Factory(set)
    files: list[pathlib.Path] = attrs.Factory(list)
    locations: list[str] = attrs.Factory(list)
    problems: list[str] = attrs.Factory(list)
    #: The first exception that failed the item (for ItemFailed's error_type and retryable).
    failure: BaseException | None = None
    pending_downloads: int = 0

    @property
    def task_done(self) -> bool:
        """Its task ended or the item failed: only downloads may be left."""
        return self.state in (ItemState.SETTLING, ItemState.FINISHED)

    @property
    def finished(self) -> bool:
        """Its result was reported."""
        return self.state is ItemState.FINISHED

    def settle(self) -> None:
        """The task ended (or the item failed): finish once the downloads are done."""
        if not self.finished:
            self.state = ItemState.SETTLING


@attrs.define(eq=False)
class DownloadJob:
    """One output of one item, to be written as ``name`` in the item's output directory."""

    item: Item
    output: Output
    name: str

    @property
    def relative(self) -> str:
        """The output's name relative to the sink's root."""
        return f"{self.item.dirname}/{self.name}"


def is_url(value: str) -> bool:
    """True for an http(s) URL input (passed to the service as is)."""
    return value.startswith(("https://", "http://"))


def stem_of(source: str, is_url: bool) -> str:
    """The output directory name of an input: its file name without extension, made safe."""
    if is_url:
        tail = source.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        # Decoded (``Song%20Two.wav`` -> ``Song Two``), then made safe: a decoded ``%2F`` or
        # control character cannot leave the output directory or break a name.
        tail = urllib.parse.unquote(tail)
        stem = tail.rsplit(".", 1)[0] if "." in tail else tail
        return safe_filename(
            stem, fallback="url-" + hashlib.sha256(source.encode()).hexdigest()[:8]
        )
    return safe_filename(pathlib.Path(source).stem, fallback="input")


def task_metadata(item: Item, token: str, extra: Mapping[str, Any] | None, limit: int) -> str:
    """The task's ``metadata``: the user's fields, the client token and the input's name,
    falling back to the token alone when longer than the provider's ``limit``."""
    payload: dict[str, Any] = {**dict(extra or {}), "client_token": token}
    name = pathlib.PurePosixPath(item.display).name if not item.is_url else item.display
    payload["input"] = name[:512]
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    if len(text) > limit:
        text = json.dumps({"client_token": token}, separators=(",", ":"))
    return text


def unique_upload_name(filename: str) -> str:
    """``song.wav`` -> ``song.ab12cd34ef.wav``: unique, same extension (the type)."""
    stem, dot, ext = filename.rpartition(".")
    tag = uuid.uuid4().hex[:10]
    return f"{stem}.{tag}.{ext}" if dot and stem else f"{filename}.{tag}"


def hash_file(path: pathlib.Path) -> str:
    """SHA-256 of a file, read in chunks (runs in a worker thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def missing_formats(task: Task) -> list[str]:
    """Completed targets that lack an output in a format they list: work not delivered."""
    problems = []
    for target in task.targets:
        if not target.is_completed:
            continue
        delivered = {output.format.lower() for output in target.output}
        # "auto" (a provider's own choice of format) promises no particular one.
        missing = [f for f in target.formats if f.lower() not in delivered and f != "auto"]
        if missing:
            problems.append(
                f"target {target.model} completed without its {', '.join(missing)} output"
            )
    return problems


def retryable(error: BaseException) -> bool | None:
    """Whether running an item again may succeed after ``error``; None when nobody can tell."""
    if isinstance(error, errors.AmbiguousRequestError):
        return None  # it may have been created: look before running it again
    if isinstance(error, (errors.APIConnectionError, errors.ServerError, errors.RateLimitError)):
        return True
    if isinstance(error, (errors.TaskTimeoutError, errors.DownloadError)):
        return True
    if isinstance(error, (errors.ValidationError, errors.APIError, OSError)):
        return False
    return None


def failure_fields(failure: BaseException | None) -> dict[str, Any]:
    """``error_type`` and ``retryable`` of an :class:`~.events.ItemFailed` for ``failure``."""
    if failure is None:
        return {"error_type": None, "retryable": None}
    return {"error_type": type(failure).__name__, "retryable": retryable(failure)}


def note_failure(item: Item, message: str, error: BaseException | str) -> None:
    """Log an item's failure with structured fields; keep the first exception for its event."""
    logger.info(
        "%s failed: %s",
        item.display,
        message,
        extra={
            "input": item.display,
            "task_id": item.task_id,
            "error_type": None if isinstance(error, str) else type(error).__name__,
            "request_id": getattr(error, "request_id", None),
        },
    )
    if not isinstance(error, str) and item.failure is None:
        item.failure = error


async def check_content(
    item: Item, record: ItemRecord | None, *, checksum: bool
) -> ItemRecord | None:
    """Compare the file with the journal; a changed file starts over (None)."""
    if record is not None and record.size == item.size and record.mtime_ns == item.mtime_ns:
        item.sha256 = record.sha256
        return record
    if record is not None and record.sha256 and checksum:
        digest = await anyio.to_thread.run_sync(hash_file, pathlib.Path(item.source))
        if digest == record.sha256:
            assert item.size is not None and item.mtime_ns is not None
            await item.journal.touch_source(item.size, item.mtime_ns)
            item.sha256 = digest
            return record
        item.sha256 = digest
    await item.journal.reset(item.size, item.mtime_ns, item.sha256)
    return None
