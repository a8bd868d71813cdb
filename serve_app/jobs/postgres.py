"""The job store in PostgreSQL: for several Jobs replicas on several machines.

psycopg 3 with its connection pool; schema migrations under an advisory lock, so replicas that
start together apply them once; every change is announced with NOTIFY in the transaction that
makes it, and each replica LISTENs, so a cancel or a progress step reaches every replica at once
and nothing polls.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import psycopg
from psycopg_pool import AsyncConnectionPool

from serve_app.jobs.sql import Params, Row, SqlStore, Transaction
from serve_app.jobs.store import EVERY_JOB

logger = logging.getLogger(__name__)

CHANNEL = "wan_jobs"
# Any constant: the advisory lock that serialises migrations across replicas.
MIGRATION_LOCK = 7_302_215_001
ADMISSION_LOCK = 7_302_215_002  # one admission at a time, across replicas
RECONNECT_S = 1.0


class _Tx:
    def __init__(self, cursor: psycopg.AsyncCursor[Row]) -> None:
        self._cursor = cursor

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        await self._cursor.execute(sql.replace("?", "%s"), tuple(params))
        return await self._cursor.fetchall() if self._cursor.description else []


class PostgresStore(SqlStore):
    serial = "BIGSERIAL PRIMARY KEY"
    real = "DOUBLE PRECISION"
    now = "extract(epoch from clock_timestamp())"
    skip_locked = "FOR UPDATE SKIP LOCKED"
    unique_violation = psycopg.errors.UniqueViolation

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool = AsyncConnectionPool(url, min_size=1, max_size=10, open=False)
        self._opened = False

    async def _open(self) -> None:
        if not self._opened:
            self._opened = True
            await self._pool.open(wait=True)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        await self._open()
        async with (
            self._pool.connection() as connection,
            connection.transaction(),
            connection.cursor() as cursor,
        ):
            yield _Tx(cursor)

    async def _lock_schema(self, tx: Transaction) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    async def _lock_admission(self, tx: Transaction) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock(?)", (ADMISSION_LOCK,))

    async def _changed(self, tx: Transaction, job_id: str) -> None:
        await tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, job_id))

    async def changes(self) -> AsyncIterator[str]:
        """Every job id NOTIFYed, from a connection of its own; EVERY_JOB once it LISTENs, at the
        start (what changed while it connected) and after each reconnection (while it was away)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    yield EVERY_JOB
                    async for notice in connection.notifies():
                        yield notice.payload
            except psycopg.OperationalError as exc:
                logger.warning("LISTEN connection lost (%s); reconnecting", exc)
                await asyncio.sleep(RECONNECT_S)

    async def close(self) -> None:
        await self._pool.close()
