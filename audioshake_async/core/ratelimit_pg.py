"""One rate budget for every worker of an account, kept in PostgreSQL.

The account's budget (60 requests/s for AudioShake) is a GCRA schedule in one row of
``audioshake_rate_budget``: ``next_slot``, the database time of the next free request slot, and
``paused_until``, the end of the last 429's Retry-After. A worker reserves a small block of slots
with a single ``UPDATE ... RETURNING`` statement that reads only the database clock
(``clock_timestamp()``) and answers in offsets from it ("your slots start in 12 ms"); the worker
turns them into ``time.monotonic()`` deadlines counted from the moment the answer arrived, which
is never earlier than the database's moment. So no worker's clock matters, neither its wall
clock nor its speed: a late answer only makes that worker later.

Budget: slots are ``(1 + jitter) / rate`` apart on the database clock (``jitter`` 0.02 s by
default) and the database never hands out a slot before its own now (``burst=1``). A slot's
database moment is known here within the round trip that fetched it, and a request leaves on
it only within ``jitter`` of the soonest that moment can be; one that cannot (its process
stalled, or the answer was slow) takes a fresh slot instead of crowding the next ones. So every
request leaves 0 to ``jitter`` after its slot, and no 1-second window of requests leaving
``acquire()``, counted over every process, holds more than ``rate`` (``rate + burst - 1`` with
a larger ``burst``). The price: a ceiling of ``rate / (1 + jitter)`` (98%), and the slots an
overloaded machine's stalls miss. A link to the database whose every round trip is slower than
``jitter / 2`` cannot place slots that well: then only the process's own delay is bounded and
windows may exceed ``rate`` by the round trip's share (raise ``jitter`` for such a link). Give
every worker of an account the same ``rate`` and ``jitter``.

Round trips: a block is only as large as the number of requests waiting in the process (at
most ``block``, a tenth of a second's worth by default), a process holds at most two blocks
ahead, and a slot a cancelled request leaves goes to the next request, so little budget is lost
even when a worker dies.

429: :meth:`PostgresRateLimiter.pause_until` holds this process back at once, then, in the
background, pushes ``paused_until`` in the row (later reservations start after it) and sends a
``NOTIFY`` so the other workers hold back within milliseconds, including requests already
holding a slot inside the pause. Errors there are logged, never raised into a request.

Database trouble: a lost connection is re-opened with backoff; meanwhile the limiter blocks
(requests wait, none is sent past the budget), and slots already granted are still used.
Connect through PostgreSQL directly or a session-mode pooler (``LISTEN`` needs a session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import errors
from . import ratelimit_pg_sql as sql
from .ratelimit import Slot, SlotBook
from .ratelimit_pg_sql import (
    CHANNEL,
    RATE_BUDGET_DDL,
    RATE_MEMBERS_DDL,
    account_for,
)
from .ratelimit_pg_sql import describe as _describe
from .ratelimit_pg_sql import driver as _psycopg

if TYPE_CHECKING:
    import psycopg

__all__ = ["RATE_BUDGET_DDL", "RATE_MEMBERS_DDL", "PostgresRateLimiter", "account_for"]

logger = logging.getLogger("audioshake_async")

_QUERY_TIMEOUT = 10.0
#: Seconds the pause listener waits for notifications before it checks whether it should stop.
_LISTEN_TICK = 0.25
#: Seconds between membership beats; a member unseen for three beats counts as gone.
MEMBER_BEAT = 5.0


class PostgresRateLimiter:
    """A :class:`~audioshake_async.core.ratelimit.Limiter` shared by every process that opens
    it on the same database and account.

    ``async with PostgresRateLimiter(dsn, rate=60, api_key=key, base_url=url) as limiter:``
    then ``AudioShake(key, url, rate_limit=limiter)`` in each worker. The row is keyed by
    ``account`` when given, else by :func:`account_for` of ``api_key`` and ``base_url``.
    ``block`` caps the slots reserved per round trip (default ``rate / 10``); ``burst`` is the
    GCRA burst (default 1: no 1-second window above ``rate``); ``jitter`` the delay, in
    seconds, a request may leave with after its slot (see the module notes).

    Every open limiter beats a row of ``audioshake_rate_members`` every ``MEMBER_BEAT`` s, so
    :attr:`members` tells how many processes share the budget now (one that stopped beating
    for three beats is gone) and :attr:`share` the fraction each may plan on: a batch sizes
    its in-flight window and poll share from ``rate x share``. ``round_trips``
    counts the statements sent (for the benchmark); ``slots_granted``/``slots_wasted`` what
    they brought.
    """

    def __init__(
        self,
        dsn: str,
        *,
        rate: float = 60.0,
        api_key: str | None = None,
        base_url: str | None = None,
        account: str | None = None,
        block: int | None = None,
        burst: int = 1,
        jitter: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pg = _psycopg()
        if not (isinstance(rate, int | float) and rate > 0 and math.isfinite(rate)):
            raise errors.ConfigurationError(f"rate must be a positive number, got {rate!r}")
        if (account is None) == (api_key is None):
            raise errors.ConfigurationError("pass exactly one of account= or api_key=")
        if api_key is not None:
            if not base_url:
                raise errors.ConfigurationError("api_key= needs the base_url= of its API")
            account = account_for(api_key, base_url)
        assert account is not None
        if not account.strip() or len(account) > 200:
            raise errors.ConfigurationError("account must be a non-empty name of <= 200 chars")
        if block is not None and block < 1:
            raise errors.ConfigurationError(f"block must be >= 1, got {block!r}")
        if burst < 1:
            raise errors.ConfigurationError(f"burst must be >= 1, got {burst!r}")
        self._dsn = dsn
        self.account = account
        if not (isinstance(jitter, int | float) and 0 <= jitter <= 0.5):
            raise errors.ConfigurationError(f"jitter must be 0 to 0.5 s, got {jitter!r}")
        self.rate = float(rate)
        self.jitter = float(jitter)
        # Slots a little further apart than 1/rate pay for the delay a request may leave with:
        # any 1-second window of requests then holds at most `rate` (see the module notes).
        self.interval = (1.0 + self.jitter) / self.rate
        self.block = block if block is not None else max(1, int(self.rate / 10))
        self._tolerance = (burst - 1) * self.interval
        self._clock = clock
        self._book = SlotBook(self.interval, self.jitter)
        #: Statements sent to PostgreSQL (reservations, pauses, setup), for the benchmark.
        self.round_trips = 0
        self.reconnects = 0
        #: Seconds: the longest statement round trip, and the longest any request left
        #: :meth:`acquire` after its slot's soonest moment (an upper bound of its lag behind
        #: the shared schedule; at most ``jitter`` unless the link to the database is slow).
        self.max_round_trip = 0.0
        self.max_lag = 0.0
        self._recent_round_trips: deque[float] = deque(maxlen=8)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._conn_lock = asyncio.Lock()
        self._refilling: asyncio.Future[None] | None = None
        self._waiting = 0  # requests waiting for a reservation
        self._sleeping = 0  # requests holding a slot, waiting for its deadline
        self._room = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._beater: asyncio.Task[None] | None = None
        #: This process's name in the members table (random: never the host or the pid).
        self.member = os.urandom(8).hex()
        self._members = 1
        self._pending_pause = -math.inf  # a local deadline not yet written to the row
        self._opened = False
        self._closed = False

    def __repr__(self) -> str:
        # The account is a hash or a name; the DSN (it may hold a password) is never shown.
        return f"PostgresRateLimiter(account={self.account[:16]!r}, rate={self.rate:g})"

    @property
    def slots_granted(self) -> int:
        """Slots the database handed this process."""
        return self._book.granted

    @property
    def slots_wasted(self) -> int:
        """Granted slots never used (voided by a pause, or left unused past their time)."""
        return self._book.wasted

    @property
    def members(self) -> int:
        """Processes sharing this budget, this one included (as of the last beat)."""
        return self._members

    @property
    def share(self) -> float:
        """The fraction of ``rate`` this process may plan on: ``1 / members``."""
        return 1.0 / self._members

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> PostgresRateLimiter:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Connect, create the table and the account's row if missing, start listening."""
        if self._closed:
            raise errors.ConfigurationError("the rate limiter is closed")
        if self._opened:
            return
        try:
            await self._connection()  # a wrong DSN fails here, not in the first request
        except self._pg.Error as exc:
            raise errors.ConfigurationError(
                f"cannot open the shared rate budget: {_describe(exc)}"
            ) from None
        if not self._opened:  # two first requests may both have opened: one listener
            self._opened = True
            loop = asyncio.get_running_loop()
            self._listener = loop.create_task(self._listen())
            self._beater = loop.create_task(self._beat_forever())
            # Known before the first request: the first batch window is sized on it.
            await self._beat_once()

    async def _beat_once(self) -> None:
        params = {"account": self.account, "member": self.member, "alive": 3 * MEMBER_BEAT}
        try:
            row, _, _ = await asyncio.wait_for(
                self._execute(sql.MEMBER_BEAT_SQL, params), _QUERY_TIMEOUT
            )
        except (TimeoutError, errors.ConfigurationError) as exc:
            logger.info("shared rate limit: membership beat failed: %s", _describe(exc))
            return
        if row is not None:
            self._members = 1 + int(row[0])

    async def _beat_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(MEMBER_BEAT)
            await self._beat_once()

    async def aclose(self) -> None:
        """Stop listening and close the connections; pending waiters get ConfigurationError."""
        tasks = (self._listener, self._publisher, self._refilling, self._beater)
        conn = self._conn
        self._closed = True
        for task in tasks:
            if task is not None:
                await self._stop(task)
        if conn is not None and not conn.closed:
            # Leave at once (the others' next beat sees it), not after three missed beats.
            with contextlib.suppress(Exception):
                params = {"account": self.account, "member": self.member}
                await asyncio.wait_for(self._fetch_one(conn, sql.MEMBER_FORGET_SQL, params), 2.0)
                self.round_trips += 1
        await self._drop(self._conn)

    async def _stop(self, task: asyncio.Future[Any]) -> None:
        # The listener ends by itself within a tick of _closed; the others are cancelled.
        # Bounded either way: a task that will not end is left behind, never waited forever.
        if task is self._listener:
            await asyncio.wait({task}, timeout=2 * _LISTEN_TICK + 1.0)
        for _ in range(3):
            if task.done():
                return
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    # ------------------------------------------------------------------ the Limiter protocol

    async def acquire(self) -> None:
        """Wait for a slot of the shared budget (and for the end of any pause)."""
        while True:
            slot = await self._slot()
            self._sleeping += 1
            try:
                delay = slot[0] - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
            except BaseException:
                self._book.give_back(slot, self._clock(), self._slow_link())
                raise
            finally:
                self._sleeping -= 1
                self._room.set()
            now = self._clock()
            # A pause may have arrived while this slept; or this process stalled past the slot:
            # sent now it would crowd the next slots (of every worker), so take another.
            if self._book.usable(slot, now, self._slow_link()):
                self.max_lag = max(self.max_lag, now - slot[1])
                return
            self._book.wasted += 1

    def pause_until(self, seconds_from_now: float) -> None:
        """Hold every worker back for ``seconds_from_now``: here at once, elsewhere via the row."""
        seconds = float(seconds_from_now)
        seconds = min(max(seconds, 0.0), 86400.0) if math.isfinite(seconds) else 0.0
        now = self._clock()
        self._book.pause(now, seconds)
        self._pending_pause = max(self._pending_pause, now + seconds)
        if self._closed or (self._publisher is not None and not self._publisher.done()):
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the local pause still holds
            self._publisher = asyncio.get_running_loop().create_task(self._publish_pause())

    # ------------------------------------------------------------------ reservations

    async def _slot(self) -> Slot:
        if not self._opened:
            await self.open()  # used without ``async with``: open on first use
        while True:
            if self._closed:
                raise errors.ConfigurationError("the rate limiter is closed")
            now = self._clock()
            if self._book.paused_until > now:
                await asyncio.sleep(self._book.paused_until - now)
                continue
            slot = self._book.take(now, self._slow_link())
            if slot is not None:
                return slot
            await self._refill()

    async def _refill(self) -> None:
        """Wait for the one reservation in flight (started here when there is none)."""
        if self._refilling is None or self._refilling.done():
            self._refilling = asyncio.ensure_future(self._reserve_block())
        refill = self._refilling
        self._waiting += 1
        try:
            # Shielded: one cancelled request must not cancel the others' reservation.
            await asyncio.shield(refill)
        except asyncio.CancelledError:
            if self._closed and refill.cancelled():
                raise errors.ConfigurationError("the rate limiter is closed") from None
            raise
        finally:
            self._waiting -= 1

    async def _reserve_block(self) -> None:
        # At most two blocks held ahead: a dead worker wastes little, a busy one queues locally.
        # Whole blocks only (a block of one is a round trip per request).
        while self._sleeping + len(self._book.slots) + self._wanted() > 2 * self.block:
            self._room.clear()
            await self._room.wait()
        count = self._wanted()
        params = {"account": self.account, "tolerance": self._tolerance}
        params["span"] = count * self.interval
        while True:
            row, sent, received = await self._execute(sql.RESERVE, params)
            if row is not None:
                break
            await self._execute(sql.ENSURE_ROW, {"account": self.account})  # the row was deleted
        self._recent_round_trips.append(received - sent)
        self._book.add_block(sent, received, float(row[0]), float(row[1]), count)

    def _slow_link(self) -> bool:
        # Every recent reservation took over half the jitter: a slow link, not one stall.
        recent = self._recent_round_trips
        return len(recent) == recent.maxlen and min(recent) > self.jitter / 2

    def _wanted(self) -> int:
        return max(1, min(self.block, self._waiting))

    # ------------------------------------------------------------------ pauses

    async def _publish_pause(self) -> None:
        try:
            while self._pending_pause > self._clock():
                target = self._pending_pause
                seconds = target - self._clock()
                await self._execute(
                    sql.PAUSE, {"account": self.account, "seconds": seconds, "channel": CHANNEL}
                )
                if self._pending_pause <= target:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never into the request path: the local pause still holds
            logger.warning("shared rate limit: could not publish a pause: %s", _describe(exc))

    def _on_notify(self, payload: str) -> None:
        account, _, seconds = payload.rpartition(" ")
        if account != self.account:
            return
        with contextlib.suppress(ValueError):
            self._book.pause(self._clock(), float(seconds))

    async def _listen(self) -> None:
        """Apply the other workers' pauses as they are published (reconnecting as needed)."""
        delay = 0.05
        while not self._closed:
            conn = None
            try:
                conn = await self._pg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=_QUERY_TIMEOUT
                )
                await conn.execute(f"LISTEN {CHANNEL}")
                delay = 0.05
                while not self._closed:
                    # A tick at a time, not one endless wait: closing never has to cancel a
                    # task inside notifies() (that could hang until a notification came).
                    # Closed explicitly: the generator holds the connection's lock.
                    notes = conn.notifies(timeout=_LISTEN_TICK)
                    async with contextlib.aclosing(notes):
                        async for note in notes:
                            self._on_notify(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Missed notifications are not lost: every reservation reads paused_until.
                logger.info("shared rate limit: pause listener reconnects: %s", _describe(exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(2.0, delay * 2)

    # ------------------------------------------------------------------ the database

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        async with self._conn_lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            conn = await self._pg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=_QUERY_TIMEOUT
            )
            try:
                # Another worker may create it at the same moment: that is success too.
                raced = (self._pg.errors.UniqueViolation, self._pg.errors.DuplicateTable)
                with contextlib.suppress(*raced):
                    await conn.execute(RATE_BUDGET_DDL)
                with contextlib.suppress(*raced):
                    await conn.execute(RATE_MEMBERS_DDL)
                await conn.execute(sql.ENSURE_ROW, {"account": self.account})
            except BaseException:
                await conn.close()
                raise
            self.round_trips += 3
            self._conn = conn
            return self._conn

    async def _drop(self, conn: psycopg.AsyncConnection[Any] | None) -> None:
        if conn is None:
            return
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(Exception):
            await conn.close()

    @staticmethod
    async def _fetch_one(
        conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        cursor = await conn.execute(sql, params)
        row: tuple[Any, ...] | None = await cursor.fetchone()
        return row

    async def _execute(
        self, sql: str, params: dict[str, Any]
    ) -> tuple[tuple[Any, ...] | None, float, float]:
        """Run one statement (its row, when it left, when its answer came); on a lost
        connection, reconnect with backoff and run it again.

        Blocks while the database is unreachable: no request goes out without a slot.
        """
        delay = 0.05
        failing = False
        while True:
            if self._closed:
                raise errors.ConfigurationError("the rate limiter is closed")
            conn = None
            try:
                conn = await self._connection()
                self.round_trips += 1
                sent = self._clock()
                row: tuple[Any, ...] | None = await asyncio.wait_for(
                    self._fetch_one(conn, sql, params), _QUERY_TIMEOUT
                )
                received = self._clock()
                self.max_round_trip = max(self.max_round_trip, received - sent)
                if failing:
                    logger.info("shared rate limit: database reachable again")
                return row, sent, received
            except (self._pg.OperationalError, self._pg.InterfaceError, TimeoutError) as exc:
                if not failing:
                    logger.warning(
                        "shared rate limit: database unreachable, requests wait: %s",
                        _describe(exc),
                    )
                failing = True
                self.reconnects += 1
                await self._drop(conn)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(2.0, delay * 2)
            except self._pg.Error as exc:  # not the connection: a schema or permission problem
                raise errors.ConfigurationError(f"shared rate budget: {_describe(exc)}") from None
