"""The database side of the shared rate budget (``core.ratelimit_pg``): its tables,
statements, row keys and driver helpers.

Every statement reads only the database clock (``clock_timestamp()``), never a worker's.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .. import errors
from .http import normalize_base_url, origin

__all__ = [
    "CHANNEL",
    "ENSURE_ROW",
    "MEMBER_BEAT_SQL",
    "MEMBER_FORGET_SQL",
    "PAUSE",
    "RATE_BUDGET_DDL",
    "RATE_MEMBERS_DDL",
    "RESERVE",
    "account_for",
    "describe",
    "driver",
]

#: The table, for the journal's schema migration to fold in; created idempotently on open.
RATE_BUDGET_DDL = """
CREATE TABLE IF NOT EXISTS audioshake_rate_budget (
    account      text PRIMARY KEY,
    next_slot    timestamptz NOT NULL,
    paused_until timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
)
"""
#: Who shares each budget: every open limiter beats its row (``PostgresRateLimiter.members``).
RATE_MEMBERS_DDL = """
CREATE TABLE IF NOT EXISTS audioshake_rate_members (
    account text NOT NULL,
    member  text NOT NULL,
    seen_at timestamptz NOT NULL,
    PRIMARY KEY (account, member)
)
"""
CHANNEL = "audioshake_rate_budget"

ENSURE_ROW = """
INSERT INTO audioshake_rate_budget (account, next_slot, paused_until, updated_at)
VALUES (%(account)s, clock_timestamp(), to_timestamp(0), clock_timestamp())
ON CONFLICT (account) DO NOTHING
"""
# One statement, one clock reading (the FROM item is evaluated once): the block starts at the
# next free slot, never before now - tolerance, never inside a pause.
RESERVE = """
UPDATE audioshake_rate_budget AS b
SET next_slot = GREATEST(b.next_slot, c.now - make_interval(secs => %(tolerance)s),
                         b.paused_until) + make_interval(secs => %(span)s),
    updated_at = c.now
FROM (SELECT clock_timestamp() AS now) AS c
WHERE b.account = %(account)s
RETURNING EXTRACT(EPOCH FROM b.next_slot - c.now)::float8,
          EXTRACT(EPOCH FROM b.paused_until - c.now)::float8
"""
PAUSE = """
WITH p AS (
    UPDATE audioshake_rate_budget
    SET paused_until = GREATEST(paused_until,
                                clock_timestamp() + make_interval(secs => %(seconds)s)),
        updated_at = clock_timestamp()
    WHERE account = %(account)s
    RETURNING paused_until
)
SELECT pg_notify(%(channel)s::text, %(account)s::text || ' '
                 || EXTRACT(EPOCH FROM p.paused_until - clock_timestamp())::float8::text)
FROM p
"""
# One statement: this member's beat, and how many others beat lately (the CTE's insert is not
# visible to the count, hence "others").
MEMBER_BEAT_SQL = """
WITH beat AS (
    INSERT INTO audioshake_rate_members (account, member, seen_at)
    VALUES (%(account)s, %(member)s, clock_timestamp())
    ON CONFLICT (account, member) DO UPDATE SET seen_at = excluded.seen_at
    RETURNING 1
)
SELECT count(*) FROM audioshake_rate_members
WHERE account = %(account)s AND member <> %(member)s
  AND seen_at > clock_timestamp() - make_interval(secs => %(alive)s)
"""
# A member that left or died long ago: its row goes (bounded table; an hour is generous).
MEMBER_FORGET_SQL = """
DELETE FROM audioshake_rate_members
WHERE account = %(account)s AND (member = %(member)s
      OR seen_at < clock_timestamp() - make_interval(secs => 3600))
RETURNING 1
"""


def account_for(api_key: str, base_url: str) -> str:
    """The row key of an account: a SHA-256 of the API origin and key (never the key itself)."""
    scheme, host, port = origin(normalize_base_url(base_url))
    material = f"{scheme}://{host}:{port}\n{api_key}".encode()
    return hashlib.sha256(material).hexdigest()


def driver() -> Any:
    """psycopg, or a ConfigurationError naming the extra that installs it."""
    try:
        import psycopg
    except ImportError:
        raise errors.ConfigurationError(
            "PostgresRateLimiter needs psycopg 3: pip install 'audioshake-async[postgres]'"
        ) from None
    return psycopg


def describe(exc: BaseException) -> str:
    """A driver error in one line (its class and first line: no DSN, no query)."""
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__
