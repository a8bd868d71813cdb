"""The job store's SQL, shared by SQLite and PostgreSQL: each dialect supplies a transaction, its
clock, its serial keys and how it tells other replicas that a job changed."""

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from serve_app.jobs.store import DuplicateKey, NewJob, Orphan, Refusal, StoredJob, Usage, Webhook
from serve_app.messages import GenerationRequest, Job, JobStatus

# The statuses a job may still leave, as an SQL list.
ACTIVE = "(" + ", ".join(f"'{status}'" for status in JobStatus if not status.is_terminal) + ")"
Params = Sequence[object]  # a statement's `?` values
Row = tuple[Any, ...]  # a row as the database's driver gives it


class Transaction(Protocol):
    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement (`?` placeholders); its rows, if it returns any."""


# Schema versions, applied in order by `migrate`; {serial} and {real} are the dialect's. Version 1
# is the schema of the releases before versioning, so their databases upgrade in place.
MIGRATIONS = [
    [
        """CREATE TABLE IF NOT EXISTS jobs (
            seq {serial},                           -- submission order: the queue is first come, first served
            id TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,                    -- the API key's id
            status TEXT NOT NULL,
            expires_at {real},
            idempotency_key TEXT,
            request_hash TEXT,
            webhook_url TEXT,
            runner TEXT,                            -- the Jobs replica that holds the job (see runners)
            request TEXT NOT NULL,                  -- GenerationRequest JSON, to dispatch again after a restart
            job TEXT NOT NULL,                      -- Job JSON, without queue_position
            UNIQUE (owner, idempotency_key)
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq)",
        # Jobs replicas alive now, by the database's clock; one that stops beating leaves its jobs
        # to be adopted.
        "CREATE TABLE IF NOT EXISTS runners (id TEXT PRIMARY KEY, heartbeat {real} NOT NULL)",
    ],
    [
        "ALTER TABLE jobs ADD COLUMN stored_bytes BIGINT NOT NULL DEFAULT 0",
        """CREATE TABLE webhooks (
            id {serial},
            job_id TEXT NOT NULL,
            url TEXT NOT NULL,
            message_id TEXT NOT NULL,               -- the same at every attempt, so receivers can dedupe
            body TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            due_at {real} NOT NULL,
            leased_by TEXT,                         -- the replica sending it now, until lease_until
            lease_until {real}
        )""",
        "CREATE INDEX webhooks_by_due ON webhooks (due_at)",
    ],
    [
        # Each key's webhooks are signed with keys of its own, derived from its id.
        "ALTER TABLE webhooks ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "UPDATE webhooks SET owner = COALESCE((SELECT owner FROM jobs WHERE jobs.id = webhooks.job_id), '')",
    ],
]


class SqlStore:
    """A JobStore in SQL; the dialect's subclass supplies `transaction`, `changes` and the rest."""

    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "REAL"
    now = "CURRENT_TIMESTAMP"
    skip_locked = ""
    extra_migrations: dict[int, list[str]] = {}
    # The driver's error for a broken UNIQUE constraint.
    unique_violation: type[Exception] = Exception

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Transaction]:
        raise NotImplementedError

    async def _changed(self, tx: Transaction, job_id: str) -> None:
        """Tell every replica, within `tx`, that the job changed."""
        raise NotImplementedError

    async def _lock_schema(self, tx: Transaction) -> None:
        """Hold off other replicas' migrations until `tx` ends."""

    async def _lock_admission(self, tx: Transaction) -> None:
        """Hold off other replicas' admissions until `tx` ends (SQLite's BEGIN IMMEDIATE already does)."""

    async def _read(self, sql: str, params: Params = ()) -> list[Row]:
        async with self.transaction() as tx:
            return await tx.execute(sql, params)

    async def migrate(self) -> None:
        async with self.transaction() as tx:
            await self._lock_schema(tx)
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = await tx.execute("SELECT version FROM schema_version")
            version = rows[0][0] if rows else 0
            for number, statements in enumerate(MIGRATIONS, start=1):
                if number > version:
                    for sql in (*statements, *self.extra_migrations.get(number, [])):
                        await tx.execute(sql.format(serial=self.serial, real=self.real))
            if not rows:
                await tx.execute("INSERT INTO schema_version (version) VALUES (?)", (len(MIGRATIONS),))
            elif version < len(MIGRATIONS):
                await tx.execute("UPDATE schema_version SET version = ?", (len(MIGRATIONS),))

    # Jobs.

    async def add(
        self, job: Job, new: NewJob, runner: str, admit: Callable[[Usage], Refusal | None] | None = None
    ) -> Refusal | None:
        try:
            async with self.transaction() as tx:
                if admit is not None:
                    await self._lock_admission(tx)
                    if (refusal := admit(await self._usage(tx, new.owner))) is not None:
                        return refusal
                await tx.execute(
                    "INSERT INTO jobs (id, owner, status, idempotency_key, request_hash, webhook_url, runner, request,"
                    " job) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, new.owner, job.status, new.idempotency_key, new.request_hash, new.webhook_url, runner,
                     new.request.model_dump_json(), _json(job)),
                )  # fmt: skip
                await self._changed(tx, job.id)
        except self.unique_violation as exc:
            raise DuplicateKey(new.idempotency_key) from exc
        return None

    async def get(self, job_id: str) -> StoredJob | None:
        if _NUL in job_id:
            return None
        rows = await self._read(f"SELECT {_STORED} FROM jobs WHERE id = ?", (job_id,))
        return _stored(rows[0]) if rows else None

    async def find_idempotent(self, owner: str, key: str) -> StoredJob | None:
        rows = await self._read(f"SELECT {_STORED} FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key))
        return _stored(rows[0]) if rows else None

    async def request(self, job_id: str) -> GenerationRequest:
        ((request,),) = await self._read("SELECT request FROM jobs WHERE id = ?", (job_id,))
        return GenerationRequest.model_validate_json(request)

    async def queue_position(self, job_id: str) -> int:
        ((ahead,),) = await self._read(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq <= (SELECT seq FROM jobs WHERE id = ?)",
            (job_id,),
        )
        return int(ahead)

    async def count(self, status: JobStatus, owner: str | None = None) -> int:
        query = "SELECT COUNT(*) FROM jobs WHERE status = ?" + (" AND owner = ?" if owner else "")
        ((count,),) = await self._read(query, (status, owner) if owner else (status,))
        return int(count)

    async def usage(self, owner: str) -> Usage:
        async with self.transaction() as tx:
            return await self._usage(tx, owner)

    async def _usage(self, tx: Transaction, owner: str) -> Usage:
        (((queued, running),), ((active, jobs, stored),), ((total,),)) = (
            await tx.execute(
                "SELECT COALESCE(SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END), 0), COALESCE(SUM(CASE WHEN "
                f"status = 'in_progress' THEN 1 ELSE 0 END), 0) FROM jobs WHERE status IN {ACTIVE}"
            ),
            await tx.execute(
                f"SELECT COALESCE(SUM(CASE WHEN status IN {ACTIVE} THEN 1 ELSE 0 END), 0), COUNT(*), "
                "COALESCE(SUM(stored_bytes), 0) FROM jobs WHERE owner = ?",
                (owner,),
            ),
            await tx.execute("SELECT COALESCE(SUM(stored_bytes), 0) FROM jobs"),
        )
        return Usage(int(queued), int(running), int(active), int(jobs), int(stored), int(total))

    async def page(self, owner: str, after: str | None, limit: int, newest_first: bool) -> list[Job] | None:
        cursor = 2**63 - 1 if newest_first else 0
        if after is not None:
            if _NUL in after:
                return None
            rows = await self._read("SELECT seq FROM jobs WHERE id = ? AND owner = ?", (after, owner))
            if not rows:
                return None
            ((cursor,),) = rows
        query = (
            "SELECT job FROM jobs WHERE owner = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
            if newest_first
            else "SELECT job FROM jobs WHERE owner = ? AND seq > ? ORDER BY seq ASC LIMIT ?"
        )
        return [Job.model_validate_json(job) for (job,) in await self._read(query, (owner, cursor, limit))]

    # Transitions.

    async def start(self, job: Job, runner: str) -> bool:
        return await self._set(
            job.id,
            "UPDATE jobs SET status = 'in_progress', job = ? WHERE id = ? AND runner = ? AND status = 'queued' "
            "RETURNING id",
            (_json(job), job.id, runner),
        )

    async def progress(self, job: Job, runner: str) -> bool:
        return await self._set(
            job.id,
            "UPDATE jobs SET job = ? WHERE id = ? AND runner = ? AND status = 'in_progress' RETURNING id",
            (_json(job), job.id, runner),
        )

    async def finish(self, job: Job, webhook: tuple[str, bytes] | None = None, stored_bytes: int = 0) -> bool:
        async with self.transaction() as tx:
            rows = await tx.execute(
                "UPDATE jobs SET status = ?, expires_at = ?, job = ?, stored_bytes = stored_bytes + ? "
                f"WHERE id = ? AND status IN {ACTIVE} RETURNING webhook_url, owner",
                (job.status, job.expires_at, _json(job), stored_bytes, job.id),
            )
            if not rows:
                return False
            ((url, owner),) = rows
            if webhook is not None and url is not None:
                message_id, body = webhook
                await tx.execute(
                    "INSERT INTO webhooks (job_id, url, message_id, body, owner, due_at) "
                    f"VALUES (?, ?, ?, ?, ?, {self.now})",
                    (job.id, url, message_id, body.decode(), owner),
                )
            await self._changed(tx, job.id)
            return True

    async def release(self, job_id: str, runner: str) -> bool:
        return await self._set(
            job_id, "UPDATE jobs SET runner = NULL WHERE id = ? AND runner = ? AND status = 'queued' RETURNING id",
            (job_id, runner),
        )  # fmt: skip

    async def delete(self, job_id: str) -> None:
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            await tx.execute("DELETE FROM webhooks WHERE job_id = ?", (job_id,))
            await self._changed(tx, job_id)

    async def expired(self, now: float) -> list[str]:
        return [job_id for (job_id,) in await self._read("SELECT id FROM jobs WHERE expires_at <= ?", (now,))]

    async def _set(self, job_id: str, sql: str, params: Params) -> bool:
        async with self.transaction() as tx:
            changed = bool(await tx.execute(sql, params))
            if changed:
                await self._changed(tx, job_id)
            return changed

    # Replicas.

    async def heartbeat(self, runner: str) -> None:
        async with self.transaction() as tx:
            await self._beat(tx, runner)

    async def _beat(self, tx: Transaction, runner: str) -> None:
        await tx.execute(
            f"INSERT INTO runners (id, heartbeat) VALUES (?, {self.now}) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
            (runner,),
        )

    async def retire(self, runner: str) -> None:
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM runners WHERE id = ?", (runner,))

    async def adopt(self, runner: str, silent_s: float) -> list[Orphan]:
        async with self.transaction() as tx:
            await self._beat(tx, runner)  # what it adopts is a live replica's at once
            rows = await tx.execute(
                "UPDATE jobs SET runner = ? WHERE id IN (SELECT id FROM jobs "
                f"WHERE status IN {ACTIVE} AND (runner IS NULL OR runner NOT IN "
                f"(SELECT id FROM runners WHERE heartbeat >= {self.now} - ?)) {self.skip_locked}) "
                "RETURNING seq, id, status, owner",
                (runner, silent_s),
            )
            for _, job_id, _, _ in rows:
                await self._changed(tx, job_id)
        return [Orphan(job_id, JobStatus(status), owner) for _, job_id, status, owner in sorted(rows)]

    # The webhook outbox.

    async def due_webhooks(self, runner: str, lease_s: float, limit: int) -> list[Webhook]:
        async with self.transaction() as tx:
            rows = await tx.execute(
                f"UPDATE webhooks SET leased_by = ?, lease_until = {self.now} + ? WHERE id IN (SELECT id FROM webhooks "
                f"WHERE due_at <= {self.now} AND (lease_until IS NULL OR lease_until < {self.now}) ORDER BY id LIMIT ? "
                f"{self.skip_locked}) RETURNING id, job_id, url, message_id, body, attempts, owner",
                (runner, lease_s, limit),
            )
        return [Webhook(id, job_id, url, message_id, body.encode(), attempts, owner) for id, job_id, url, message_id,
                body, attempts, owner in sorted(rows)]  # fmt: skip

    async def webhook_done(self, webhook_id: int) -> None:
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,))

    async def webhook_retry(self, webhook_id: int, delay_s: float) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                f"UPDATE webhooks SET attempts = attempts + 1, due_at = {self.now} + ?, leased_by = NULL, "
                "lease_until = NULL WHERE id = ?",
                (delay_s, webhook_id),
            )

    async def release_webhooks(self, runner: str) -> None:
        async with self.transaction() as tx:
            await tx.execute("UPDATE webhooks SET leased_by = NULL, lease_until = NULL WHERE leased_by = ?", (runner,))

    def changes(self) -> AsyncIterator[str]:
        raise NotImplementedError


# No id holds one, and PostgreSQL's text cannot: a caller's id with a NUL is no job, on either
# database (PostgreSQL would refuse the query).
_NUL = "\x00"
_STORED = "job, owner, runner, webhook_url, request_hash"


def _stored(row: Row) -> StoredJob:
    job, owner, runner, webhook_url, request_hash = row
    return StoredJob(Job.model_validate_json(job), owner, runner, webhook_url, request_hash)


def _json(job: Job) -> str:
    return job.model_dump_json(exclude={"queue_position"})
