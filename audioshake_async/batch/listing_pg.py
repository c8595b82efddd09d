"""One listing reader for all the workers of a batch: polling scales with the account.

Without it, N workers each page ``GET /tasks`` over the same account listing to refresh their
own tasks: N times the requests for the same pages. Here one worker at a time, the **leader**
(whoever holds a PostgreSQL advisory lock, released by the server if its session dies), pages the
listing on an interval and records every task it sees (snapshot and client token) in the
database; every worker's watcher reads its list pages from there, and a token search (after an
ambiguous create, or for a dead worker's intent) looks in the recorded tasks before paging the
API. A task not yet recorded is still read by ``GET /tasks/{id}``: never wrong, at worst late.

The leader's pages cost the account's budget, so they follow the same poll share as one run's
sweeps (:class:`~.window.PollBudget`): a sweep of ``p`` pages is followed by a pause of
``p / (rate x share)`` seconds, between ``interval`` and ``max_interval``; the share is small
while items of the batch still wait to be created, large once all are.

Recorded snapshots hold the download links the API returned (short-lived, signed): the
database holding the journal must be trusted like the output directory.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .. import errors
from .._convert import structure, unstructure
from ..models import Task
from .journal_pg_schema import connect, first_line
from .reconcile import token_of
from .seam import BatchProvider
from .window import DEFAULT_POLL_SHARE, PollBudget

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("audioshake_async.batch")

__all__ = ["SharedListing"]

#: Advisory lock namespace of listing leaders (the batch name is hashed into the second key).
_LEADER_NAMESPACE = 0x6C697374  # "list"


class SharedListing:
    """List pages and token lookups served from the database; one leader feeds it.

    Satisfies :class:`~audioshake_async.batch.seam.Listing`. Run :meth:`run` in a background
    task for as long as the worker works.
    """

    def __init__(
        self,
        dsn: str,
        batch: str,
        provider: BatchProvider,
        *,
        interval: float = 2.0,
        max_interval: float = 30.0,
        rate: float = 60.0,
        poll_share: float = DEFAULT_POLL_SHARE,
    ) -> None:
        """``interval``/``max_interval``: the shortest and longest pause between sweeps;
        ``rate``: the account's requests/s, of which the pages spend ``poll_share``."""
        self.batch = batch
        self.provider = provider
        self.interval = interval
        self.polls = PollBudget(
            rate, share=poll_share, min_interval=interval, max_interval=max(interval, max_interval)
        )
        #: Whether items of the batch still wait for their task (as of the last sweep).
        self.creating = True
        #: Pages read by the last sweep.
        self.pages = 0
        #: Seconds after which a recorded snapshot is too old to stand for a read: past the
        #: longest pause between the leader's sweeps, with margin.
        self.stale_after = max(30.0, 10 * interval, 2 * max_interval)
        #: A task not recorded yet waits this long for the leader before a worker reads it
        #: itself (each such read costs the account a request: one per task, were it not).
        self.grace = self.stale_after
        self._dsn = dsn
        self._lock = threading.Lock()
        self._db: psycopg.Connection[Any] = connect(dsn)
        #: The leader's own session: the advisory lock lives and dies with it.
        self._leader_db: psycopg.Connection[Any] | None = None
        self.leader = False
        self.round_trips = 0
        self.sweeps = 0

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        with self._lock:
            self.round_trips += 1
            try:
                cursor = self._db.execute(sql, params)
                return list(cursor.fetchall()) if cursor.description is not None else []
            except psycopg.OperationalError as exc:
                raise errors.JournalError(f"PostgreSQL listing: {first_line(exc)}") from None

    # ------------------------------------------------------------------ readers

    async def page(self, *, skip: int, take: int) -> list[Task]:
        """Recorded snapshots of the batch's tasks in flight, a page at a time."""
        rows = await anyio.to_thread.run_sync(
            self._query,
            "SELECT s.body FROM audioshake_tasks_seen s JOIN audioshake_items i"
            " ON i.batch = s.batch AND i.task_id = s.task_id"
            " WHERE s.batch = %s AND i.status = 'created'"
            # A snapshot no leader refreshed lately (none leads, or its sweep stops short of
            # the task) is left out: the watcher then reads that task itself.
            " AND s.seen_at > clock_timestamp() - make_interval(secs => %s)"
            " ORDER BY s.task_id LIMIT %s OFFSET %s",
            (self.batch, self.stale_after, take, skip),
        )
        return [structure(body, Task) for (body,) in rows]

    async def find_token(self, token: str) -> Task | None:
        """A recorded task carrying ``token`` in its metadata, if the leader saw one."""
        rows = await anyio.to_thread.run_sync(
            self._query,
            "SELECT body FROM audioshake_tasks_seen WHERE token = %s ORDER BY seen_at LIMIT 1",
            (token,),
        )
        return structure(rows[0][0], Task) if rows else None

    # ------------------------------------------------------------------ the leader

    def _try_lead(self) -> bool:
        import psycopg

        try:
            if self._leader_db is None:
                self._leader_db = connect(self._dsn)
            row = self._leader_db.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LEADER_NAMESPACE, self.batch)
            ).fetchone()
        except (psycopg.OperationalError, errors.JournalError) as exc:
            logger.warning("listing leader election failed: %s", exc)
            self._leader_db = None
            return False
        self.round_trips += 1
        return bool(row and row[0])

    def _open_tasks(self) -> tuple[int, int, int]:
        rows = self._query(
            "SELECT count(*) FILTER (WHERE status = 'created'),"
            " count(*) FILTER (WHERE status = 'creating'),"
            " count(*) FILTER (WHERE status NOT IN ('created', 'done', 'failed'))"
            " FROM audioshake_items WHERE batch = %s",
            (self.batch,),
        )
        return int(rows[0][0]), int(rows[0][1]), int(rows[0][2])

    def _open_ids(self) -> set[str]:
        rows = self._query(
            "SELECT task_id FROM audioshake_items WHERE batch = %s AND status = 'created'",
            (self.batch,),
        )
        return {str(task_id) for (task_id,) in rows}

    def _record(self, tasks: list[Task]) -> None:
        if not tasks:
            return
        ids = [t.id for t in tasks]
        tokens = [token_of(t) for t in tasks]
        bodies = [json.dumps(unstructure(t)) for t in tasks]
        self._query(
            "INSERT INTO audioshake_tasks_seen (task_id, batch, token, body)"
            " SELECT id, %s, tok, body::jsonb FROM unnest(%s::text[], %s::text[], %s::text[])"
            " AS u(id, tok, body)"
            " ON CONFLICT (task_id) DO UPDATE SET body = excluded.body,"
            " token = excluded.token, seen_at = clock_timestamp()",
            (self.batch, ids, tokens, bodies),
        )

    async def sweep(self) -> None:
        """Page the account listing until every task in flight is seen; record each task."""
        created, creating, waiting = await anyio.to_thread.run_sync(self._open_tasks)
        self.creating = waiting > 0
        self.pages = 0
        if not created and not creating:
            return
        wanted = await anyio.to_thread.run_sync(self._open_ids)
        size = self.provider.page_size
        # A task an intent left behind is among the newest: one page covers it.
        limit = max(1, 2 * (math.ceil(len(wanted) / size) + 1))
        skip = 0
        for _ in range(limit):
            page = await self.provider.page(skip=skip, take=size)
            self.pages += 1
            await anyio.to_thread.run_sync(self._record, page)
            wanted -= {t.id for t in page}
            if not wanted or len(page) < size:
                break
            skip += size
        self.sweeps += 1

    def _still_leading(self) -> bool:
        import psycopg

        if self._leader_db is None:
            return False
        try:
            self._leader_db.execute("SELECT 1")
        except psycopg.Error:
            self._leader_db = None
            return False
        self.round_trips += 1
        return True

    def pause(self) -> float:
        """Seconds until the next sweep: the last one's pages at the poll share's pace."""
        return self.polls.sweep_interval(self.pages, creating=self.creating)

    async def run(self) -> None:
        """Try to lead; while leading, sweep on the poll share's interval. Never returns."""
        while True:
            if self.leader:
                # A lost session took the lock with it: another worker may lead now.
                self.leader = await anyio.to_thread.run_sync(self._still_leading)
            if not self.leader:
                self.leader = await anyio.to_thread.run_sync(self._try_lead)
            if self.leader:
                try:
                    await self.sweep()
                except errors.JournalError as exc:
                    # The session may be gone, and the lock with it: elect again.
                    logger.warning("listing sweep failed: %s", exc)
                    self.leader = False
                    self._leader_db = None
                except errors.AudioShakeError as exc:
                    logger.info("listing sweep failed: %s", exc)
            await anyio.sleep(self.pause() if self.leader else self.interval)

    def close(self) -> None:
        """Close both sessions (the leader's lock goes with its session)."""
        with self._lock:
            self._db.close()
            if self._leader_db is not None:
                self._leader_db.close()
