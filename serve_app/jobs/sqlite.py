"""The job store in one SQLite file: the embedded default, for one machine (a Jobs replica, and a
second one for the minutes a rolling update overlaps them).

Every call runs on one thread of its own, one at a time, so the event loop never waits on the
file; other processes' writers are waited for there (busy timeout), never on the loop. Changes
reach other replicas through a table that each polls once every `POLL_S`, whatever the number of
jobs or watchers (this process's own changes at once).
"""

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from serve_app.jobs.sql import Params, Row, SqlStore, Transaction
from serve_app.jobs.store import EVERY_JOB

POLL_S = 0.5
# Change records older than this are dropped: every replica has read them by then.
KEEP_CHANGES_S = 60.0
T = TypeVar("T")


class _Tx:
    def __init__(self, store: "SqliteStore") -> None:
        self._store = store

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._store._run(lambda db: db.execute(sql, tuple(params)).fetchall())


class SqliteStore(SqlStore):
    real = "REAL"
    unique_violation = sqlite3.IntegrityError
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    extra_migrations = {2: ["CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL,"
                            " at REAL NOT NULL)"]}  # fmt: skip

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wan-sqlite")
        self._lock = asyncio.Lock()
        self._db: sqlite3.Connection | None = None
        # Set once a change of this process is committed: the change feed reads it at once.
        self._changed_here = asyncio.Event()
        self._dirty = False

    def _connect(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Transactions are ours (BEGIN IMMEDIATE: the write lock from the start, so two replicas never
        # deadlock upgrading a read lock). The default rollback journal, not WAL: WAL needs memory
        # that every process using the file shares, which two hosts on one volume do not.
        return sqlite3.connect(self._path, isolation_level=None, timeout=30, check_same_thread=False)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                self._db = self._connect()
            return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._lock:
            await self._run(lambda db: db.execute("BEGIN IMMEDIATE"))
            try:
                yield _Tx(self)
            except BaseException:
                await self._run(lambda db: db.execute("ROLLBACK"))
                raise
            await self._run(lambda db: db.execute("COMMIT"))
        if self._dirty:
            self._dirty = False
            self._changed_here.set()

    async def _read(self, sql: str, params: Params = ()) -> list[Row]:
        # Outside a transaction: a read takes no write lock.
        async with self._lock:
            return await self._run(lambda db: db.execute(sql, tuple(params)).fetchall())

    async def _changed(self, tx: Transaction, job_id: str) -> None:
        await tx.execute(f"INSERT INTO changes (job_id, at) VALUES (?, {self.now})", (job_id,))
        self._dirty = True

    async def changes(self) -> AsyncIterator[str]:
        (start,) = (await self._read("SELECT COALESCE(MAX(seq), 0) FROM changes"))[0]
        yield EVERY_JOB  # what changed before `start` was read
        pruned = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed_here.wait(), POLL_S)
            self._changed_here.clear()
            rows = await self._read("SELECT seq, job_id FROM changes WHERE seq > ? ORDER BY seq", (start,))
            for seq, job_id in rows:
                start = seq
                yield job_id
            if time.monotonic() - pruned > KEEP_CHANGES_S:
                async with self.transaction() as tx:
                    await tx.execute(f"DELETE FROM changes WHERE at < {self.now} - ?", (KEEP_CHANGES_S,))
                pruned = time.monotonic()

    async def close(self) -> None:
        if self._db is not None:
            await self._run(lambda db: db.close())
        self._thread.shutdown(wait=False)
