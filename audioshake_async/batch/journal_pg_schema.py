"""The PostgreSQL journal's schema (versioned migrations), connection and report types."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from .. import errors
from ..core.ratelimit_pg import RATE_BUDGET_DDL, RATE_MEMBERS_DDL

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "MIGRATIONS",
    "BatchStatus",
    "Claim",
    "LeasedJournal",
    "claim_dir_in",
    "connect",
    "first_line",
    "is_postgres_dsn",
    "lease_guard",
    "read_shared_tokens",
    "read_status",
]

#: Schema migrations, applied in order; the index + 1 is the version recorded.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS audioshake_batches (
        name TEXT PRIMARY KEY,
        targets TEXT NOT NULL,
        settings JSONB NOT NULL DEFAULT '{}'::jsonb,
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    );
    CREATE TABLE IF NOT EXISTS audioshake_items (
        batch TEXT NOT NULL REFERENCES audioshake_batches(name) ON DELETE CASCADE,
        source TEXT NOT NULL,
        targets TEXT NOT NULL,
        seq BIGSERIAL,
        size BIGINT,
        mtime_ns BIGINT,
        sha256 TEXT,
        asset_id TEXT,
        asset_uploaded_at DOUBLE PRECISION,
        upload_name TEXT,
        token TEXT,
        task_id TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        error TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        owner TEXT,
        lease_expires TIMESTAMPTZ,
        epoch BIGINT NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (batch, source, targets)
    );
    CREATE INDEX IF NOT EXISTS audioshake_items_open
        ON audioshake_items (batch, seq) WHERE status NOT IN ('done', 'failed');
    CREATE INDEX IF NOT EXISTS audioshake_items_token ON audioshake_items (token);
    CREATE INDEX IF NOT EXISTS audioshake_items_owner ON audioshake_items (owner);
    CREATE TABLE IF NOT EXISTS audioshake_outputs (
        batch TEXT NOT NULL,
        source TEXT NOT NULL,
        targets TEXT NOT NULL,
        filename TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT,
        written_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (batch, source, targets, filename),
        FOREIGN KEY (batch, source, targets)
            REFERENCES audioshake_items (batch, source, targets) ON DELETE CASCADE
    );
    CREATE TABLE IF NOT EXISTS audioshake_dirs (
        batch TEXT NOT NULL,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (batch, name),
        UNIQUE (batch, source)
    );
    CREATE TABLE IF NOT EXISTS audioshake_stems (
        batch TEXT NOT NULL,
        stem TEXT NOT NULL,
        next INTEGER NOT NULL,
        PRIMARY KEY (batch, stem)
    );
    CREATE TABLE IF NOT EXISTS audioshake_workers (
        id TEXT PRIMARY KEY,
        batch TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        seen_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
        stopped_at TIMESTAMPTZ
    );
    """,
    # 2: the listing leader records every task it sees (snapshot, client token).
    """
    CREATE TABLE IF NOT EXISTS audioshake_tasks_seen (
        task_id TEXT PRIMARY KEY,
        batch TEXT NOT NULL,
        token TEXT,
        body JSONB NOT NULL,
        seen_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    );
    CREATE INDEX IF NOT EXISTS audioshake_tasks_seen_token ON audioshake_tasks_seen (token);
    CREATE INDEX IF NOT EXISTS audioshake_tasks_seen_batch ON audioshake_tasks_seen (batch);
    """,
    # 3: the shared rate budget (one GCRA row per account, see core.ratelimit_pg).
    RATE_BUDGET_DDL,
    # 4: who shares each rate budget (batch windows plan on their share of it).
    RATE_MEMBERS_DDL,
)

#: The advisory lock key that serializes migrations (any constant shared by all versions).
MIGRATION_LOCK = 0x61756469  # "audi"

ITEM_COLUMNS = (
    "size, mtime_ns, sha256, asset_id, asset_uploaded_at, upload_name, token, task_id,"
    " status, error, updated_at"
)

#: The fence every write carries: this owner, this epoch, a lease not yet lapsed.
FENCE = (
    " AND owner = %(owner)s AND epoch = %(epoch)s AND lease_expires > clock_timestamp()"
    " AND status NOT IN ('done', 'failed')"
)
KEY = "batch = %(batch)s AND source = %(source)s AND targets = %(targets)s"
NOW = "extract(epoch from clock_timestamp())"


def is_postgres_dsn(value: object) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` connection URL."""
    return isinstance(value, str) and value.startswith(("postgresql://", "postgres://"))


def connect(dsn: str) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (each statement its own transaction)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        raise errors.ConfigurationError(
            "the PostgreSQL journal needs psycopg: pip install 'audioshake-async[postgres]'"
        ) from None
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=15)
    except psycopg.Error as exc:
        message = first_line(exc)
    # Raised outside the except clause: the driver's error (which may quote a malformed DSN)
    # is not kept as __context__. The password is cut from what the message quotes.
    with contextlib.suppress(ValueError):
        password = urllib.parse.urlsplit(dsn).password
        if password:
            message = message.replace(password, "***")
    raise errors.JournalError(f"cannot connect to the PostgreSQL journal: {message}")


def first_line(exc: BaseException) -> str:
    """The first line of a driver error (the server's own errors never quote a password)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line


@attrs.frozen
class Claim:
    """An item a worker holds: its key and the epoch its writes must name."""

    source: str
    epoch: int


@attrs.frozen
class BatchStatus:
    """What ``status`` reports: items per state, workers alive, failures with reasons."""

    name: str
    counts: dict[str, int]
    leased: int
    workers: list[dict[str, Any]]
    failures: list[tuple[str, str | None]]

    @property
    def open(self) -> int:
        """Items not yet done nor failed."""
        return sum(n for state, n in self.counts.items() if state not in ("done", "failed"))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "batch": self.name,
            "counts": dict(sorted(self.counts.items())),
            "open": self.open,
            "leased": self.leased,
            "workers": self.workers,
            "failures": [{"input": s, "error": e} for s, e in self.failures],
        }


@runtime_checkable
class LeasedJournal(Protocol):
    """A journal shared by many workers, whose items are held under leases."""

    #: Seconds of lease a worker must still hold to send ``POST /tasks``.
    create_window: float

    def lease_remaining(self) -> float:
        """Seconds every lease this worker holds is still known to last."""


def read_status(
    conn: psycopg.Connection[Any], batch: str, lease: float, failures: int
) -> BatchStatus:
    """Counts by state, workers seen in the last two leases, the first failures."""
    counts = dict(
        conn.execute(
            "SELECT status, count(*) FROM audioshake_items WHERE batch = %s GROUP BY status",
            (batch,),
        ).fetchall()
    )
    leased_row = conn.execute(
        "SELECT count(*) FROM audioshake_items WHERE batch = %s"
        " AND lease_expires > clock_timestamp()",
        (batch,),
    ).fetchone()
    workers = conn.execute(
        "SELECT id, host, pid, extract(epoch from clock_timestamp() - seen_at)"
        " FROM audioshake_workers WHERE batch = %s AND stopped_at IS NULL"
        " AND seen_at > clock_timestamp() - make_interval(secs => %s)"
        " ORDER BY started_at",
        (batch, 2 * lease),
    ).fetchall()
    failed = conn.execute(
        "SELECT source, error FROM audioshake_items WHERE batch = %s"
        " AND status = 'failed' ORDER BY seq LIMIT %s",
        (batch, failures),
    ).fetchall()
    return BatchStatus(
        batch,
        {str(k): int(v) for k, v in counts.items()},
        int(leased_row[0]) if leased_row else 0,
        [
            {"id": w, "host": h, "pid": int(p), "seen_seconds_ago": round(float(a), 1)}
            for w, h, p, a in workers
        ],
        [(str(s), e) for s, e in failed],
    )


def read_shared_tokens(conn: psycopg.Connection[Any], batch: str) -> list[tuple[str, list[str]]]:
    """Tokens recorded for more than one task id across items (the audit's journal side)."""
    rows = conn.execute(
        "SELECT token, array_agg(DISTINCT task_id) FROM audioshake_items"
        " WHERE batch = %s AND token IS NOT NULL AND task_id IS NOT NULL"
        " GROUP BY token HAVING count(DISTINCT task_id) > 1",
        (batch,),
    ).fetchall()
    return [(str(t), list(ids)) for t, ids in rows]


def claim_dir_in(conn: psycopg.Connection[Any], batch: str, source: str, stem: str) -> str:
    """A directory name for ``source`` (inside the caller's transaction)."""
    row = conn.execute(
        "SELECT name FROM audioshake_dirs WHERE batch = %s AND source = %s",
        (batch, source),
    ).fetchone()
    if row is not None:
        return str(row[0])
    # Row lock on the stem counter: two workers naming "audio" files wait in turn.
    conn.execute(
        "INSERT INTO audioshake_stems (batch, stem, next) VALUES (%s, %s, 0)"
        " ON CONFLICT DO NOTHING",
        (batch, stem),
    )
    counted = conn.execute(
        "SELECT next FROM audioshake_stems WHERE batch = %s AND stem = %s FOR UPDATE",
        (batch, stem),
    ).fetchone()
    number: int | None = int(counted[0]) if counted and counted[0] else None
    while True:
        candidate = stem if number is None else f"{stem}-{number}"
        inserted = conn.execute(
            "INSERT INTO audioshake_dirs (batch, name, source) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (batch, candidate, source),
        ).rowcount
        if inserted:
            conn.execute(
                "UPDATE audioshake_stems SET next = %s WHERE batch = %s AND stem = %s",
                (2 if number is None else number + 1, batch, stem),
            )
            return candidate
        number = 2 if number is None else number + 1


def lease_guard(journal: object, what: str) -> Callable[[], None] | None:
    """With a leased journal: a check that refuses to send ``POST /tasks`` for ``what`` unless
    the lease still covers the whole request (None for other journals)."""
    if not isinstance(journal, LeasedJournal):
        return None
    leased = journal

    def check() -> None:
        remaining = leased.lease_remaining()
        if remaining < leased.create_window:
            raise errors.LeaseLostError(
                f"{what}: {remaining:.0f} s of lease left, {leased.create_window:.0f} s needed "
                "to send POST /tasks; not sent"
            )

    return check
