"""The PostgreSQL journal: one batch shared by many workers on many machines.

The same records as :class:`~audioshake_async.batch.journal.SqliteJournal` (content identity,
asset, client token written before ``POST /tasks``, task id, outputs), plus what sharing needs:

- **claims**: a worker takes pending items with ``SELECT ... FOR UPDATE SKIP LOCKED`` and a
  **lease** (owner, expiry on the database clock). A heartbeat renews the worker's leases several
  times per lease, and never renews one that has lapsed: a worker frozen past its lease (SIGSTOP,
  a long GC pause, a lost network) loses its items and must stop.
- **fencing**: every claim bumps the item's ``epoch``. Every journal write names the epoch it
  was claimed at and changes nothing unless that epoch still holds, unexpired, for this owner;
  otherwise it raises :class:`~audioshake_async.errors.LeaseLostError` and the worker stops.
- **time**: only the database clock decides expiry (``clock_timestamp()``). The worker measures
  durations from its answers with its monotonic clock; its wall clock never matters.

The schema is created and migrated by :meth:`PostgresJournal.migrate` (versioned, see
:data:`MIGRATIONS`); it needs ``CREATE`` on the database's schema, never a superuser.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .. import errors
from .journal import ItemRecord, OutputRecord, record_from_row
from .journal_pg_schema import (
    FENCE,
    ITEM_COLUMNS,
    KEY,
    MIGRATION_LOCK,
    MIGRATIONS,
    NOW,
    BatchStatus,
    Claim,
    LeasedJournal,
    claim_dir_in,
    connect,
    first_line,
    is_postgres_dsn,
    read_shared_tokens,
    read_status,
)
from .listing_pg import SharedListing
from .window import DEFAULT_POLL_SHARE

if TYPE_CHECKING:
    import psycopg

    from .seam import BatchProvider

__all__ = [
    "MIGRATIONS",
    "BatchStatus",
    "Claim",
    "LeasedJournal",
    "PostgresJournal",
    "is_postgres_dsn",
]


class PostgresJournal:
    """A :class:`~audioshake_async.batch.journal.Journal` on PostgreSQL for one named batch.

    ``lease`` is the seconds a claim lasts without a heartbeat (the heartbeat renews it every
    ``lease / 6``); ``create_window`` the seconds of lease a worker must still hold before it
    sends ``POST /tasks`` (the request timeout plus a margin). One connection per purpose
    (journal writes, heartbeat), each used by one thread at a time.
    """

    def __init__(
        self,
        dsn: str,
        batch: str,
        *,
        lease: float = 120.0,
        create_window: float = 75.0,
        worker_id: str | None = None,
    ) -> None:
        if not batch or len(batch) > 200:
            raise errors.ValidationError("a batch name is 1 to 200 characters")
        if lease <= 0 or create_window <= 0 or create_window >= lease:
            raise errors.ValidationError("need 0 < create_window < lease")
        self.batch = batch
        self.lease = float(lease)
        self.create_window = float(create_window)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = worker_id or f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._dsn = dsn
        self._lock = threading.Lock()
        self._db = connect(dsn)
        self._heartbeat_db: psycopg.Connection[Any] | None = None
        #: source -> epoch of every item this worker holds.
        self.held: dict[str, int] = {}
        #: time.monotonic() before which every held lease is known to be valid.
        self.valid_until = -1.0
        self.round_trips = 0
        self.migrate()

    def __repr__(self) -> str:
        return f"PostgresJournal(batch={self.batch!r}, owner={self.owner!r})"

    # ------------------------------------------------------------------ plumbing

    def _execute(
        self, sql: str, params: dict[str, Any] | Sequence[Any] | None = None
    ) -> psycopg.Cursor[Any]:
        import psycopg

        self.round_trips += 1
        try:
            return self._db.execute(sql, params)
        except psycopg.OperationalError as exc:
            raise errors.JournalError(f"PostgreSQL journal: {first_line(exc)}") from None

    def _params(self, source: str, targets: str, **extra: Any) -> dict[str, Any]:
        epoch = self.held.get(source)
        if epoch is None:
            raise errors.LeaseLostError(f"{source}: not claimed by this worker")
        return {
            "batch": self.batch,
            "source": source,
            "targets": targets,
            "owner": self.owner,
            "epoch": epoch,
            **extra,
        }

    def _fenced(self, sql: str, params: dict[str, Any]) -> None:
        with self._lock:
            cursor = self._execute(sql, params)
        if cursor.rowcount == 0:
            self._lose(params["source"])

    def _lose(self, source: str) -> None:
        self.held.pop(source, None)
        raise errors.LeaseLostError(
            f"{source}: lease lost (taken over or expired); this worker stops its work on it"
        )

    def shared_listing(
        self,
        provider: BatchProvider,
        *,
        interval: float,
        max_interval: float = 30.0,
        rate: float = 60.0,
        poll_share: float = DEFAULT_POLL_SHARE,
    ) -> SharedListing:
        """The batch's shared listing (one leader pages the API for every worker, within
        ``poll_share`` of the account's ``rate``)."""
        return SharedListing(
            self._dsn,
            self.batch,
            provider,
            interval=interval,
            max_interval=max_interval,
            rate=rate,
            poll_share=poll_share,
        )

    # ------------------------------------------------------------------ schema

    def migrate(self) -> int:
        """Create or upgrade the schema to the latest version; returns that version."""
        with self._lock, self._db.transaction():
            self._execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._execute("CREATE TABLE IF NOT EXISTS audioshake_schema (version INTEGER NOT NULL)")
            row = self._execute("SELECT max(version) FROM audioshake_schema").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > len(MIGRATIONS):
                raise errors.JournalError(
                    f"the journal schema is version {current}; this release knows up to "
                    f"{len(MIGRATIONS)}: upgrade audioshake-async"
                )
            for version in range(current + 1, len(MIGRATIONS) + 1):
                self._execute(MIGRATIONS[version - 1])
                self._execute("INSERT INTO audioshake_schema (version) VALUES (%s)", (version,))
        return len(MIGRATIONS)

    # ------------------------------------------------------------------ batches

    def register(self, targets: str, settings: dict[str, Any]) -> dict[str, Any]:
        """Create the batch, or check that an existing one has the same targets."""
        with self._lock:
            self._execute(
                "INSERT INTO audioshake_batches (name, targets, settings) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (self.batch, targets, json.dumps(settings)),
            )
            row = self._execute(
                "SELECT targets, settings FROM audioshake_batches WHERE name = %s", (self.batch,)
            ).fetchone()
        assert row is not None
        if row[0] != targets:
            raise errors.ValidationError(
                f"batch {self.batch!r} exists with other targets: pick another --batch name"
            )
        stored: dict[str, Any] = row[1]
        return stored

    def batch_settings(self) -> tuple[str, dict[str, Any]]:
        """The batch's target signature and settings, as submitted."""
        with self._lock:
            row = self._execute(
                "SELECT targets, settings FROM audioshake_batches WHERE name = %s", (self.batch,)
            ).fetchone()
        if row is None:
            raise errors.ValidationError(f"no batch named {self.batch!r} in this journal")
        return str(row[0]), dict(row[1])

    def add_inputs(self, sources: Iterable[str], targets: str) -> int:
        """Register inputs (idempotent: known ones are left alone); returns how many are new."""
        added = 0
        chunk: list[str] = []

        def flush() -> int:
            if not chunk:
                return 0
            with self._lock:
                cursor = self._execute(
                    "INSERT INTO audioshake_items (batch, source, targets, updated_at)"
                    f" SELECT %s, s, %s, {NOW} FROM unnest(%s::text[]) AS s"
                    " ON CONFLICT DO NOTHING",
                    (self.batch, targets, list(chunk)),
                )
            chunk.clear()
            return max(0, cursor.rowcount)

        for source in sources:
            chunk.append(source)
            if len(chunk) >= 500:
                added += flush()
        added += flush()
        return added

    # ------------------------------------------------------------------ claims and leases

    def register_worker(self) -> None:
        """Announce this worker (for ``status``)."""
        with self._lock:
            self._execute(
                "INSERT INTO audioshake_workers (id, batch, host, pid) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET seen_at = clock_timestamp()",
                (self.owner, self.batch, self.host, self.pid),
            )

    def claim(self, limit: int) -> list[Claim]:
        """Take up to ``limit`` open items whose lease is free or lapsed (bumping their epoch)."""
        started = time.monotonic()
        with self._lock:
            rows = self._execute(
                "WITH picked AS ("
                " SELECT batch, source, targets FROM audioshake_items"
                " WHERE batch = %(batch)s AND status NOT IN ('done', 'failed')"
                " AND (lease_expires IS NULL OR lease_expires < clock_timestamp())"
                " ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                " UPDATE audioshake_items AS i SET owner = %(owner)s, epoch = i.epoch + 1,"
                " attempts = i.attempts + 1,"
                " lease_expires = clock_timestamp() + make_interval(secs => %(lease)s)"
                " FROM picked WHERE i.batch = picked.batch AND i.source = picked.source"
                " AND i.targets = picked.targets RETURNING i.source, i.epoch",
                {"batch": self.batch, "limit": limit, "owner": self.owner, "lease": self.lease},
            ).fetchall()
        claims = [Claim(str(source), int(epoch)) for source, epoch in rows]
        if claims and not self.held:
            # Only fresh claims are held: their leases run from this call. Otherwise the
            # older leases, renewed at the last heartbeat, end first.
            self.valid_until = started + self.lease
        for claim in claims:
            self.held[claim.source] = claim.epoch
        return claims

    def heartbeat(self) -> set[str]:
        """Renew every lease still valid; returns the sources lost (taken over or lapsed).

        Runs on its own connection so a slow journal write never delays it.
        """
        if self._heartbeat_db is None:
            self._heartbeat_db = connect(self._dsn)
        started = time.monotonic()
        held = dict(self.held)
        import psycopg

        try:
            rows = self._heartbeat_db.execute(
                "UPDATE audioshake_items SET lease_expires = clock_timestamp()"
                " + make_interval(secs => %(lease)s)"
                " WHERE batch = %(batch)s AND owner = %(owner)s"
                " AND lease_expires > clock_timestamp() AND status NOT IN ('done', 'failed')"
                " RETURNING source, epoch",
                {"batch": self.batch, "owner": self.owner, "lease": self.lease},
            ).fetchall()
            self._heartbeat_db.execute(
                "UPDATE audioshake_workers SET seen_at = clock_timestamp() WHERE id = %s",
                (self.owner,),
            )
        except psycopg.OperationalError as exc:
            self._heartbeat_db = None
            raise errors.JournalError(f"PostgreSQL journal: {first_line(exc)}") from None
        self.round_trips += 2
        renewed = {str(source): int(epoch) for source, epoch in rows}
        lost = {s for s, epoch in held.items() if renewed.get(s) != epoch and s in self.held}
        if not lost:
            self.valid_until = started + self.lease
        return lost

    def lease_remaining(self) -> float:
        """Seconds every held lease is still known to last (measured on the monotonic clock)."""
        return self.valid_until - time.monotonic()

    def release_all(self) -> None:
        """Give back every lease this worker holds (a clean stop): others take them at once."""
        with self._lock:
            self._execute(
                "UPDATE audioshake_items SET owner = NULL, lease_expires = NULL"
                " WHERE batch = %s AND owner = %s",
                (self.batch, self.owner),
            )
            self._execute(
                "UPDATE audioshake_workers SET stopped_at = clock_timestamp() WHERE id = %s",
                (self.owner,),
            )
        self.held.clear()

    def open_items(self) -> int:
        """Items of the batch not yet done nor failed (held by anyone or not)."""
        with self._lock:
            row = self._execute(
                "SELECT count(*) FROM audioshake_items"
                " WHERE batch = %s AND status NOT IN ('done', 'failed')",
                (self.batch,),
            ).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ the Journal protocol

    def lookup(self, source: str, targets: str) -> ItemRecord | None:
        """The record of this input and target set, with its outputs."""
        with self._lock:
            row = self._execute(
                f"SELECT {ITEM_COLUMNS} FROM audioshake_items WHERE batch = %s"
                " AND source = %s AND targets = %s",
                (self.batch, source, targets),
            ).fetchone()
            if row is None:
                return None
            outputs = self._execute(
                "SELECT filename, size, sha256 FROM audioshake_outputs WHERE batch = %s"
                " AND source = %s AND targets = %s ORDER BY filename",
                (self.batch, source, targets),
            ).fetchall()
        record = record_from_row(source, targets, row, outputs)
        untouched = record.size is None and record.token is None and record.asset_id is None
        if record.status == "pending" and untouched:
            # Registered by submit, never started: nothing to resume.
            return None
        return record

    def claim_dir(self, source: str, stem: str) -> str:
        """A directory name for ``source``, unique in the batch and stable across workers."""
        with self._lock, self._db.transaction():
            self.round_trips += 4
            return claim_dir_in(self._db, self.batch, source, stem)

    def reset(
        self, source: str, targets: str, size: int | None, mtime_ns: int | None, sha256: str | None
    ) -> None:
        """Start the item afresh (new or changed input): forget asset, task and outputs."""
        params = self._params(source, targets, size=size, mtime_ns=mtime_ns, sha256=sha256)
        with self._lock, self._db.transaction():
            cursor = self._execute(
                "UPDATE audioshake_items SET size = %(size)s, mtime_ns = %(mtime_ns)s,"
                " sha256 = %(sha256)s, asset_id = NULL, asset_uploaded_at = NULL,"
                " upload_name = NULL, token = NULL, task_id = NULL, status = 'pending',"
                f" error = NULL, updated_at = {NOW} WHERE {KEY}{FENCE}",
                params,
            )
            if cursor.rowcount:
                self._execute(
                    f"DELETE FROM audioshake_outputs WHERE {KEY}",
                    params,
                )
        if cursor.rowcount == 0:
            self._lose(source)

    def touch_source(self, source: str, targets: str, size: int, mtime_ns: int) -> None:
        """The file was touched but its content is unchanged: remember the new stat."""
        self._fenced(
            "UPDATE audioshake_items SET size = %(size)s, mtime_ns = %(mtime_ns)s,"
            f" updated_at = {NOW} WHERE {KEY}{FENCE}",
            self._params(source, targets, size=size, mtime_ns=mtime_ns),
        )

    def record_asset(
        self,
        source: str,
        targets: str,
        asset_id: str | None,
        uploaded_at: float | None,
        sha256: str | None = None,
    ) -> None:
        """The upload finished (or, with None, the asset is gone and must be uploaded again)."""
        self._fenced(
            "UPDATE audioshake_items SET asset_id = %(asset)s, asset_uploaded_at = %(at)s,"
            f" sha256 = COALESCE(%(sha)s, sha256), updated_at = {NOW} WHERE {KEY}{FENCE}",
            self._params(source, targets, asset=asset_id, at=uploaded_at, sha=sha256),
        )

    def record_upload_intent(self, source: str, targets: str, upload_name: str) -> None:
        """About to upload the file under the unique name ``upload_name``."""
        self._fenced(
            "UPDATE audioshake_items SET upload_name = %(name)s,"
            f" updated_at = {NOW} WHERE {KEY}{FENCE}",
            self._params(source, targets, name=upload_name),
        )

    def record_intent(self, source: str, targets: str, token: str) -> None:
        """About to ``POST /tasks``: only while the lease covers the request (``create_window``).

        The check is on the database clock, in the same statement as the write.
        """
        self._fenced(
            "UPDATE audioshake_items SET token = %(token)s, status = 'creating',"
            f" updated_at = {NOW} WHERE {KEY}{FENCE}"
            " AND lease_expires > clock_timestamp() + make_interval(secs => %(window)s)",
            self._params(source, targets, token=token, window=self.create_window),
        )

    def record_task(self, source: str, targets: str, task_id: str | None) -> None:
        """The task exists (or, with None, it is gone and must be created again)."""
        self._fenced(
            "UPDATE audioshake_items SET task_id = %(task)s, status = %(status)s,"
            f" updated_at = {NOW} WHERE {KEY}{FENCE}",
            self._params(source, targets, task=task_id, status="created" if task_id else "pending"),
        )

    def record_output(self, source: str, targets: str, output: OutputRecord) -> None:
        """One output file is complete on disk (recorded only under a valid lease)."""
        self._fenced(
            "INSERT INTO audioshake_outputs"
            " (batch, source, targets, filename, size, sha256, written_at)"
            f" SELECT batch, source, targets, %(name)s, %(size)s, %(sha)s, {NOW}"
            f" FROM audioshake_items WHERE {KEY}{FENCE}"
            " ON CONFLICT (batch, source, targets, filename) DO UPDATE"
            " SET size = excluded.size, sha256 = excluded.sha256,"
            " written_at = excluded.written_at",
            self._params(
                source, targets, name=output.filename, size=output.size, sha=output.sha256
            ),
        )

    def finish(self, source: str, targets: str, status: str, error: str | None) -> None:
        """The item ended (``done`` or ``failed``); its lease is released."""
        self._fenced(
            "UPDATE audioshake_items SET status = %(status)s, error = %(error)s,"
            f" owner = NULL, lease_expires = NULL, updated_at = {NOW} WHERE {KEY}{FENCE}",
            self._params(source, targets, status=status, error=error),
        )
        self.held.pop(source, None)

    # ------------------------------------------------------------------ reports

    def status(self, *, failures: int = 50) -> BatchStatus:
        """Counts by state, workers seen in the last two leases, the first failures."""
        with self._lock:
            self.round_trips += 4
            return read_status(self._db, self.batch, self.lease, failures)

    def shared_tokens(self) -> list[tuple[str, list[str]]]:
        """Tokens recorded for more than one task id across items (the audit's journal side)."""
        with self._lock:
            self.round_trips += 1
            return read_shared_tokens(self._db, self.batch)

    def close(self) -> None:
        """Close the connections (leases are not released: see :meth:`release_all`)."""
        with self._lock:
            self._db.close()
            if self._heartbeat_db is not None:
                self._heartbeat_db.close()
