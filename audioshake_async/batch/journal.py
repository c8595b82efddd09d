"""The batch journal: what each input has reached, so a re-run resumes and never bills twice.

One row per (input, target set): content identity (size, mtime, SHA-256), the asset and when it
was uploaded, the client token written *before* ``POST /tasks``, the task id, and one row per
downloaded output with its SHA-256 (an ``s3://`` input: its URI as the source, its size, and
``etag:<ETag>`` where a file's SHA-256 goes). SQLite in WAL mode: every write is its own
transaction, so the file is consistent after a ``kill -9`` at any moment. One process at a time:
a second opener is refused (``journal_lock``), and SQLite's failures (a full disk) raise a typed
``JournalError``.

:class:`Journal` is the interface the engine uses; :class:`SqliteJournal` the embedded store.
The engine calls it through :class:`AsyncJournal` and a typed :class:`ItemJournal` per item, which
run each call on one worker thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import anyio.to_thread
import attrs

from .. import errors
from .._convert import unstructure
from .journal_lock import JournalLock, journal_step

if TYPE_CHECKING:
    from ..models import Target
    from .seam import BatchProvider

__all__ = [
    "AsyncJournal",
    "ItemJournal",
    "ItemRecord",
    "Journal",
    "OutputRecord",
    "SqliteJournal",
    "journal_key",
    "targets_signature",
]

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    source TEXT NOT NULL,
    targets TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    asset_id TEXT,
    asset_uploaded_at REAL,
    upload_name TEXT,
    token TEXT,
    task_id TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, targets)
);
CREATE TABLE IF NOT EXISTS outputs (
    source TEXT NOT NULL,
    targets TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    written_at REAL NOT NULL,
    PRIMARY KEY (source, targets, filename)
);
CREATE TABLE IF NOT EXISTS dirs (
    name TEXT PRIMARY KEY,
    source TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS stems (
    stem TEXT PRIMARY KEY,
    next INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_token ON items(token);
"""


@attrs.frozen
class OutputRecord:
    """A downloaded output file (relative to the item's directory)."""

    filename: str
    size: int
    sha256: str | None


@attrs.frozen
class ItemRecord:
    """Everything recorded for one input and target set."""

    source: str
    targets: str
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    asset_id: str | None = None
    asset_uploaded_at: float | None = None
    upload_name: str | None = None
    token: str | None = None
    task_id: str | None = None
    status: str = "pending"
    error: str | None = None
    outputs: tuple[OutputRecord, ...] = ()
    #: When the record last changed (epoch seconds): for a ``creating`` item, the intent time.
    updated_at: float | None = None


def record_from_row(
    source: str, targets: str, row: Sequence[Any], outputs: Sequence[Sequence[Any]]
) -> ItemRecord:
    """An :class:`ItemRecord` from a row of ``size, mtime_ns, sha256, asset_id,
    asset_uploaded_at, upload_name, token, task_id, status, error, updated_at`` (every store
    selects its columns in this order) and rows of ``filename, size, sha256``."""
    size, mtime_ns, sha256, asset_id, uploaded_at, upload_name, token, task_id = row[:8]
    status, error, updated_at = row[8:11]
    return ItemRecord(
        source,
        targets,
        size,
        mtime_ns,
        sha256,
        asset_id,
        uploaded_at,
        upload_name,
        token,
        task_id,
        status,
        error,
        outputs=tuple(OutputRecord(*o) for o in outputs),
        updated_at=updated_at,
    )


class Journal(Protocol):
    """What the batch engine needs from a store; every method is synchronous and durable."""

    def lookup(self, source: str, targets: str) -> ItemRecord | None:
        """The record of this input and target set, with its outputs."""

    def claim_dir(self, source: str, stem: str) -> str:
        """A directory name for ``source``, unique in the batch and stable across runs."""

    def reset(
        self, source: str, targets: str, size: int | None, mtime_ns: int | None, sha256: str | None
    ) -> None:
        """Start the item afresh (new or changed input): forget asset, task and outputs."""

    def touch_source(self, source: str, targets: str, size: int, mtime_ns: int) -> None:
        """The file was touched but its content is unchanged: remember the new stat."""

    def record_asset(
        self,
        source: str,
        targets: str,
        asset_id: str | None,
        uploaded_at: float | None,
        sha256: str | None = None,
    ) -> None:
        """The upload finished (or, with None, the asset is gone and must be uploaded again)."""

    def record_upload_intent(self, source: str, targets: str, upload_name: str) -> None:
        """About to upload the file under the unique name ``upload_name``."""

    def record_intent(self, source: str, targets: str, token: str) -> None:
        """About to ``POST /tasks`` carrying ``token`` in its metadata."""

    def record_task(self, source: str, targets: str, task_id: str | None) -> None:
        """The task exists (or, with None, it is gone and must be created again)."""

    def record_output(self, source: str, targets: str, output: OutputRecord) -> None:
        """One output file is complete on disk."""

    def finish(self, source: str, targets: str, status: str, error: str | None) -> None:
        """The item ended (``done`` or ``failed``)."""

    def close(self) -> None:
        """Release the store."""


class SqliteJournal:
    """The embedded journal: one SQLite file (WAL), usable from one thread at a time.

    Locked until :meth:`close` (a second opener gets ``JournalBusyError``); every SQLite
    failure is a ``JournalError`` naming the step and the input.
    """

    @journal_step
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._temporary: str | None = None
        if path is None:
            # No journal asked for: keep the bookkeeping on disk anyway, not in RAM.
            handle, self._temporary = tempfile.mkstemp(prefix="audioshake-journal-", suffix=".db")
            os.close(handle)
            path = self._temporary
        else:
            parent = os.path.dirname(os.fspath(path))
            if parent:
                os.makedirs(parent, exist_ok=True)
        self.path = os.fspath(path)
        # Before the database is touched: a refused opener must not even migrate it.
        self._owner = JournalLock(self.path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only power loss can cost
            # the last commits, which the engine tolerates (it reconciles by token).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            with self._db:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._owner.release()  # the connection, if any, closes with this object
            raise

    def __repr__(self) -> str:
        return f"SqliteJournal({self.path!r})"

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)

    @journal_step
    def lookup(self, source: str, targets: str) -> ItemRecord | None:
        """The record of this input and target set, with its outputs."""
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, sha256, asset_id, asset_uploaded_at, upload_name, token,"
                " task_id,"
                " status, error, updated_at FROM items WHERE source=? AND targets=?",
                (source, targets),
            ).fetchone()
            if row is None:
                return None
            outputs = self._db.execute(
                "SELECT filename, size, sha256 FROM outputs WHERE source=? AND targets=?"
                " ORDER BY filename",
                (source, targets),
            ).fetchall()
        return record_from_row(source, targets, row, outputs)

    @journal_step
    def claim_dir(self, source: str, stem: str) -> str:
        """A directory name for ``source``, unique in the batch and stable across runs."""
        with self._lock:
            row = self._db.execute("SELECT name FROM dirs WHERE source=?", (source,)).fetchone()
            if row is not None:
                return str(row[0])
            # A counter per stem: a catalog of 100k "audio.wav" files must not try 1, 2, ...
            # k suffixes for its k-th file (quadratic). Older journals have no counter yet: the
            # insert loop below still finds the first free name.
            counted = self._db.execute("SELECT next FROM stems WHERE stem=?", (stem,)).fetchone()
            # None = the bare stem, else the "-<number>" suffix to try.
            number: int | None = int(counted[0]) if counted is not None else None
            while True:
                candidate = stem if number is None else f"{stem}-{number}"
                try:
                    self._db.execute(
                        "INSERT INTO dirs(name, source) VALUES (?, ?)", (candidate, source)
                    )
                except sqlite3.IntegrityError:
                    number = 2 if number is None else number + 1
                    continue
                self._db.execute(
                    "INSERT INTO stems(stem, next) VALUES (?, ?)"
                    " ON CONFLICT(stem) DO UPDATE SET next=excluded.next",
                    (stem, 2 if number is None else number + 1),
                )
                return candidate

    @journal_step
    def reset(
        self, source: str, targets: str, size: int | None, mtime_ns: int | None, sha256: str | None
    ) -> None:
        """Start the item afresh (new or changed input): forget asset, task and outputs."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM outputs WHERE source=? AND targets=?", (source, targets))
            self._db.execute(
                "INSERT INTO items(source, targets, size, mtime_ns, sha256, status, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)"
                " ON CONFLICT(source, targets) DO UPDATE SET size=excluded.size,"
                " mtime_ns=excluded.mtime_ns, sha256=excluded.sha256, asset_id=NULL,"
                " asset_uploaded_at=NULL, upload_name=NULL, token=NULL, task_id=NULL,"
                " status='pending',"
                " error=NULL, updated_at=excluded.updated_at",
                (source, targets, size, mtime_ns, sha256, time.time()),
            )

    @journal_step
    def touch_source(self, source: str, targets: str, size: int, mtime_ns: int) -> None:
        """The file was touched but its content is unchanged: remember the new stat."""
        self._write(
            "UPDATE items SET size=?, mtime_ns=?, updated_at=? WHERE source=? AND targets=?",
            (size, mtime_ns, time.time(), source, targets),
        )

    @journal_step
    def record_asset(
        self,
        source: str,
        targets: str,
        asset_id: str | None,
        uploaded_at: float | None,
        sha256: str | None = None,
    ) -> None:
        """The upload finished (or, with None, the asset is gone and must be uploaded again)."""
        self._write(
            "UPDATE items SET asset_id=?, asset_uploaded_at=?,"
            " sha256=COALESCE(?, sha256), updated_at=? WHERE source=? AND targets=?",
            (asset_id, uploaded_at, sha256, time.time(), source, targets),
        )

    @journal_step
    def record_upload_intent(self, source: str, targets: str, upload_name: str) -> None:
        """About to upload the file under the unique name ``upload_name``."""
        self._write(
            "UPDATE items SET upload_name=?, updated_at=? WHERE source=? AND targets=?",
            (upload_name, time.time(), source, targets),
        )

    @journal_step
    def record_intent(self, source: str, targets: str, token: str) -> None:
        """About to ``POST /tasks`` carrying ``token`` in its metadata."""
        self._write(
            "UPDATE items SET token=?, status='creating', updated_at=?"
            " WHERE source=? AND targets=?",
            (token, time.time(), source, targets),
        )

    @journal_step
    def record_task(self, source: str, targets: str, task_id: str | None) -> None:
        """The task exists (or, with None, it is gone and must be created again)."""
        status = "created" if task_id else "pending"
        self._write(
            "UPDATE items SET task_id=?, status=?, updated_at=? WHERE source=? AND targets=?",
            (task_id, status, time.time(), source, targets),
        )

    @journal_step
    def record_output(self, source: str, targets: str, output: OutputRecord) -> None:
        """One output file is complete on disk."""
        self._write(
            "INSERT OR REPLACE INTO outputs(source, targets, filename, size, sha256, written_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (source, targets, output.filename, output.size, output.sha256, time.time()),
        )

    @journal_step
    def finish(self, source: str, targets: str, status: str, error: str | None) -> None:
        """The item ended (``done`` or ``failed``)."""
        self._write(
            "UPDATE items SET status=?, error=?, updated_at=? WHERE source=? AND targets=?",
            (status, error, time.time(), source, targets),
        )

    @journal_step
    def counts(self) -> dict[str, int]:
        """Items per status (for reports)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()
        return {str(status): int(count) for status, count in rows}

    @journal_step
    def close(self) -> None:
        """Close the database (and delete it when it was a temporary one)."""
        try:
            with self._lock:
                self._db.close()
        finally:
            self._owner.release()
        if self._temporary:
            for suffix in ("", "-wal", "-shm", ".lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._temporary + suffix)


class AsyncJournal:
    """Runs a synchronous :class:`Journal` on one worker thread, one call at a time.

    The first :class:`~audioshake_async.errors.JournalError` is kept as ``failure`` and fails
    every later call at once: once a step could not be recorded, none after it is (the engine
    stops, and a re-run resumes from what was recorded). ``on_failure`` hears of it once.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.failure: errors.JournalError | None = None
        self.on_failure: Callable[[errors.JournalError], None] | None = None
        self._limiter = anyio.CapacityLimiter(1)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the journal's thread (``func`` is a method of the journal)."""
        if self.failure is not None:
            raise self.failure
        try:
            return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)
        except errors.JournalError as exc:
            if self.failure is None:
                self.failure = exc
                if self.on_failure is not None:
                    self.on_failure(exc)
            raise

    async def claim_dir(self, source: str, stem: str) -> str:
        """See :meth:`Journal.claim_dir`."""
        return await self.run(self.journal.claim_dir, source, stem)

    def item(self, source: str, targets: str) -> ItemJournal:
        """The typed handle of one input and target set."""
        return ItemJournal(self, source, targets)


class ItemJournal:
    """The journal of one input and target set: each write typed, and run off the event loop.

    Every method is the :class:`Journal` method of the same name, with the item's key filled in.
    """

    def __init__(self, owner: AsyncJournal, source: str, targets: str) -> None:
        self._owner = owner
        self._journal = owner.journal
        self._source = source
        self._targets = targets

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await self._owner.run(func, self._source, self._targets, *args)

    async def lookup(self) -> ItemRecord | None:
        """The record, with its outputs."""
        return await self._run(self._journal.lookup)

    async def reset(self, size: int | None, mtime_ns: int | None, sha256: str | None) -> None:
        """Start afresh (new or changed input)."""
        await self._run(self._journal.reset, size, mtime_ns, sha256)

    async def touch_source(self, size: int, mtime_ns: int) -> None:
        """The file was touched, its content unchanged."""
        await self._run(self._journal.touch_source, size, mtime_ns)

    async def record_asset(
        self, asset_id: str | None, uploaded_at: float | None, sha256: str | None = None
    ) -> None:
        """The upload finished (None: the asset is gone)."""
        await self._run(self._journal.record_asset, asset_id, uploaded_at, sha256)

    async def record_upload_intent(self, upload_name: str) -> None:
        """About to upload under ``upload_name``."""
        await self._run(self._journal.record_upload_intent, upload_name)

    async def record_intent(self, token: str) -> None:
        """About to create the task carrying ``token``."""
        await self._run(self._journal.record_intent, token)

    async def record_task(self, task_id: str | None) -> None:
        """The task exists (None: it is gone)."""
        await self._run(self._journal.record_task, task_id)

    async def record_output(self, output: OutputRecord) -> None:
        """One output file is complete."""
        await self._run(self._journal.record_output, output)

    async def finish(self, status: str, error: str | None) -> None:
        """The item ended."""
        await self._run(self._journal.finish, status, error)


def targets_signature(targets: Sequence[Target]) -> str:
    """A stable text identity of a target list (the journal keys items by input and this)."""
    return json.dumps([unstructure(t) for t in targets], sort_keys=True, separators=(",", ":"))


def journal_key(provider: BatchProvider, targets: Sequence[Target]) -> str:
    """The journal's key for a target list on one provider.

    Task ids of one provider mean nothing to another: a journal shared by a Tasks API run and a
    legacy run must not resume one's tasks through the other: each provider names its own
    namespace (an empty one keeps the bare signature).
    """
    signature = targets_signature(targets)
    namespace = provider.journal_namespace
    return f"{namespace}:{signature}" if namespace else signature
