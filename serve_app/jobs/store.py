"""The durable record of jobs that every Jobs replica shares: one interface, two databases.

SQLite (`sqlite:///path` or a path: the embedded default, one machine) and PostgreSQL
(`postgresql://...`: several Jobs replicas, several machines). A job's status changes only through
these methods, each a compare-and-set on the job's claim (`runner`, the Jobs replica that
dispatched it) and its status, so that two replicas never both run, start or finish one job.
Every method is a coroutine that keeps the event loop free.
"""

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from serve_app.messages import GenerationRequest, Job, JobStatus

Refusal = TypeVar("Refusal")

# Yielded by `changes` when any job may have changed unseen: as it begins, and after a lost connection.
EVERY_JOB = "*"


class DuplicateKey(Exception):
    """Another job of the owner has this idempotency key."""


@dataclass(frozen=True)
class StoredJob:
    """A job's record, the store's own: its state (the message the Ingress gets, `messages.Job`,
    kept without its queue position, which is counted on reading) and what only Jobs keeps."""

    job: Job
    owner: str
    runner: str | None
    webhook_url: str | None
    request_hash: str | None


@dataclass(frozen=True)
class NewJob:
    """What a submission stores beside the job object."""

    owner: str
    request: GenerationRequest  # without its image: that is in result storage
    idempotency_key: str | None = None
    request_hash: str | None = None
    webhook_url: str | None = None


@dataclass(frozen=True)
class Usage:
    """What admission weighs for a submission of `owner`, read in one transaction."""

    queued: int
    running: int
    owner_active: int  # the owner's jobs queued or running
    owner_jobs: int  # the owner's jobs stored, whatever their status
    owner_bytes: int  # their stored bytes
    total_bytes: int  # every key's stored bytes


@dataclass(frozen=True)
class Orphan:
    """A job adopted from a Jobs replica that stopped beating (or that released it)."""

    job_id: str
    status: JobStatus
    owner: str


@dataclass(frozen=True)
class Webhook:
    """A webhook event waiting in the outbox."""

    id: int
    job_id: str
    url: str
    message_id: str
    body: bytes
    attempts: int
    owner: str  # the job's API key id: its keys sign the event


class JobStore(Protocol):
    async def migrate(self) -> None:
        """Create or upgrade the schema; safe when several replicas start at once."""

    async def close(self) -> None: ...

    # Jobs.

    async def add(
        self, job: Job, new: NewJob, runner: str, admit: Callable[[Usage], Refusal | None] | None = None
    ) -> Refusal | None:
        """Record a queued job, claimed by `runner` (the replica that will dispatch it); DuplicateKey
        if the owner has another job with its idempotency key. With `admit`, the usage is read and
        judged in the transaction that inserts, one admission at a time across replicas: what
        `admit` answers other than None refuses the job (returned, nothing stored)."""

    async def get(self, job_id: str) -> StoredJob | None: ...

    async def find_idempotent(self, owner: str, key: str) -> StoredJob | None: ...

    async def request(self, job_id: str) -> GenerationRequest: ...

    async def queue_position(self, job_id: str) -> int:
        """1 for the next job to start, by submission order: an estimate, for a job another Jobs
        replica holds (the one that holds it knows its turn: `fair_queue`)."""

    async def count(self, status: JobStatus, owner: str | None = None) -> int: ...

    async def usage(self, owner: str) -> Usage:
        """What admission weighs, now (the check before any work; `add` judges again)."""

    async def page(self, owner: str, after: str | None, limit: int, newest_first: bool) -> list[Job] | None:
        """Up to `limit` of the owner's jobs after job `after` in the order asked for (None: `after`
        is not theirs)."""

    # Transitions, each a compare-and-set: False (or None) when the job is not in the state the
    # caller believed (cancelled, deleted, or claimed by another replica meanwhile).

    async def start(self, job: Job, runner: str) -> bool:
        """queued -> in_progress, if `runner` holds the claim."""

    async def progress(self, job: Job, runner: str) -> bool:
        """Save an in_progress job's progress, if `runner` holds the claim and it is still running."""

    async def finish(self, job: Job, webhook: tuple[str, bytes] | None = None, stored_bytes: int = 0) -> bool:
        """A queued or running job -> its final status (and its webhook event, `(message id, body)`,
        into the outbox in the same transaction); False if it had already finished."""

    async def release(self, job_id: str, runner: str) -> bool:
        """Give up the claim on a job that has not started, for another replica to dispatch."""

    async def delete(self, job_id: str) -> None: ...

    async def expired(self, now: float) -> list[str]: ...

    # Replicas, by the database's clock.

    async def heartbeat(self, runner: str) -> None: ...

    async def retire(self, runner: str) -> None: ...

    async def adopt(self, runner: str, silent_s: float) -> list[Orphan]:
        """Claim the queued and running jobs that no live replica holds: released ones, and those of
        replicas not heard of for `silent_s` seconds by the database's clock."""

    # The webhook outbox.

    async def due_webhooks(self, runner: str, lease_s: float, limit: int) -> list[Webhook]:
        """Lease the webhooks due now to `runner` for `lease_s` seconds (no other replica sends them
        meanwhile)."""

    async def webhook_done(self, webhook_id: int) -> None: ...

    async def webhook_retry(self, webhook_id: int, delay_s: float) -> None: ...

    async def release_webhooks(self, runner: str) -> None:
        """End `runner`'s leases: the webhooks it has not settled are due to any replica again."""

    # Changes.

    def changes(self) -> AsyncIterator[str]:
        """The ids of jobs changed by any replica (this one included), as they change; EVERY_JOB
        first, once it follows them (a change made before that, while the replica started, would
        otherwise be missed), and wherever it may have missed some."""

