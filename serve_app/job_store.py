"""The durable record of jobs: one SQLite file, written only by the jobs deployment's single
replica. It survives restarts of the application, so finished jobs stay listed until they expire
and queued jobs are not lost."""

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from serve_app.schemas import GenerationRequest, Job

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the queue is first come, first served
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,                    -- the API key's id
    status TEXT NOT NULL,
    expires_at REAL,
    idempotency_key TEXT,
    request_hash TEXT,
    webhook_url TEXT,
    runner TEXT,                            -- the jobs replica that dispatched it (see runners)
    request TEXT NOT NULL,                  -- GenerationRequest JSON, to dispatch again after a restart
    job TEXT NOT NULL,                      -- Job JSON, without queue_position
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
-- Jobs replicas alive now: during a rolling update the old one finishes its jobs while the new
-- one takes new ones; a replica whose heartbeat stops leaves its jobs to be adopted.
CREATE TABLE IF NOT EXISTS runners (
    id TEXT PRIMARY KEY,
    heartbeat REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
"""


@dataclass(frozen=True)
class StoredJob:
    job: Job
    owner: str
    webhook_url: str | None
    request_hash: str | None


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every write is durable at once. The default rollback journal, not WAL: the
        # file may sit on a network volume that two jobs replicas on two hosts share while one
        # cluster replaces another, and WAL needs memory shared by all its users.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self._db.executescript(_SCHEMA)
        columns = {name for _, name, *_ in self._db.execute("PRAGMA table_info(jobs)")}
        if "runner" not in columns:  # a database made before jobs replicas kept heartbeats
            self._db.execute("ALTER TABLE jobs ADD COLUMN runner TEXT")

    def add(
        self,
        job: Job,
        owner: str,
        request: GenerationRequest,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        webhook_url: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO jobs (id, owner, status, idempotency_key, request_hash, webhook_url, request, job)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                owner,
                job.status,
                idempotency_key,
                request_hash,
                webhook_url,
                request.model_dump_json(),
                job.model_dump_json(exclude={"queue_position"}),
            ),
        )

    def save(self, job: Job) -> None:
        self._db.execute(
            "UPDATE jobs SET status = ?, expires_at = ?, job = ? WHERE id = ?",
            (job.status, job.expires_at, job.model_dump_json(exclude={"queue_position"}), job.id),
        )

    def get(self, job_id: str) -> StoredJob | None:
        row = self._db.execute(
            "SELECT job, owner, webhook_url, request_hash FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return self._stored(row) if row else None

    def find_idempotent(self, owner: str, key: str) -> StoredJob | None:
        row = self._db.execute(
            "SELECT job, owner, webhook_url, request_hash FROM jobs WHERE owner = ? AND idempotency_key = ?",
            (owner, key),
        ).fetchone()
        return self._stored(row) if row else None

    def request(self, job_id: str) -> GenerationRequest:
        (request,) = self._db.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return GenerationRequest.model_validate_json(request)

    def queue_position(self, job_id: str) -> int:
        """1 for the next job to start."""
        (ahead,) = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq <= (SELECT seq FROM jobs WHERE id = ?)",
            (job_id,),
        ).fetchone()
        return ahead

    def count(self, status: str, owner: str | None = None) -> int:
        query = "SELECT COUNT(*) FROM jobs WHERE status = ?" + (" AND owner = ?" if owner else "")
        (count,) = self._db.execute(query, (status, owner) if owner else (status,)).fetchone()
        return count

    def page(self, owner: str, after: str | None, limit: int, newest_first: bool) -> list[Job] | None:
        """Up to `limit` of the owner's jobs that come after job `after` in the order asked for
        (None: `after` is not theirs)."""
        cursor = 2**63 - 1 if newest_first else 0
        if after is not None:
            row = self._db.execute("SELECT seq FROM jobs WHERE id = ? AND owner = ?", (after, owner)).fetchone()
            if row is None:
                return None
            (cursor,) = row
        query = (
            "SELECT job FROM jobs WHERE owner = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
            if newest_first
            else "SELECT job FROM jobs WHERE owner = ? AND seq > ? ORDER BY seq ASC LIMIT ?"
        )
        return [Job.model_validate_json(job) for (job,) in self._db.execute(query, (owner, cursor, limit))]

    def heartbeat(self, runner: str, now: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO runners (id, heartbeat) VALUES (?, ?)", (runner, now))

    def retire(self, runner: str) -> None:
        self._db.execute("DELETE FROM runners WHERE id = ?", (runner,))

    def claim(self, job_id: str, runner: str | None) -> None:
        self._db.execute("UPDATE jobs SET runner = ? WHERE id = ?", (runner, job_id))

    def orphans(self, alive_since: float) -> list[Job]:
        """Queued and running jobs, in submission order, whose runner has not been heard of
        since `alive_since` (or that have none)."""
        rows = self._db.execute(
            "SELECT job FROM jobs WHERE status IN ('queued', 'in_progress') AND (runner IS NULL OR runner NOT IN "
            "(SELECT id FROM runners WHERE heartbeat >= ?)) ORDER BY seq",
            (alive_since,),
        )
        return [Job.model_validate_json(job) for (job,) in rows]

    def expired(self, now: float) -> list[str]:
        return [job_id for (job_id,) in self._db.execute("SELECT id FROM jobs WHERE expires_at <= ?", (now,))]

    def delete(self, job_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    @staticmethod
    def _stored(row: tuple) -> StoredJob:
        job, owner, webhook_url, request_hash = row
        return StoredJob(Job.model_validate_json(job), owner, webhook_url, request_hash)
