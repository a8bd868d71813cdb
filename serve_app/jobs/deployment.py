"""The Jobs deployment: the queue and the state of every job, in a store that all its replicas
share (SQLite on one machine, PostgreSQL for several replicas), none of them special.

A submission is admitted (`admission`), recorded, and dispatched by the replica that took it
(`dispatch`), which follows the generation to its end. Replicas pass jobs between them when one
stops or dies (`handover`), send webhooks from an outbox (`outbox`), and hear of every change,
whichever replica made it, from the store's change feed: that wakes the event streams and long
polls waiting on a job, and stops a generation cancelled through another replica. The Ingress
replicas call the methods below; Jobs never talks HTTP to users.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

from ray.serve.context import _get_internal_replica_context
from ray.serve.handle import DeploymentHandle

from serve_app.common.logs import use_serve_log_handlers
from serve_app.common.metrics import JobMetrics
from serve_app.common.outbound import OutboundPolicy
from serve_app.common.storage import REFERENCE, ResultStorage
from serve_app.common.tasks import spawn
from serve_app.config import AppArgs, webhook_secrets
from serve_app.deployments import generator_names, generator_slots
from serve_app.error_codes import ErrorCode
from serve_app.handles import GeneratorDeployment, Handle
from serve_app.jobs.admission import Admission
from serve_app.jobs.database import open_store
from serve_app.jobs.dispatch import Dispatcher
from serve_app.jobs.handover import Handover
from serve_app.jobs.outbox import Outbox
from serve_app.jobs.store import EVERY_JOB, DuplicateKey, NewJob, StoredJob
from serve_app.jobs.webhooks import WebhookSender
from serve_app.messages import Job, JobPage, JobStatus, Refusal, Started, Submission, VideoShape

logger = logging.getLogger(__name__)

# How often each model's slots (`Dispatcher.set_slots`) are read again: a redeploy that changes the
# generators' max_replicas takes effect within this.
SLOTS_PERIOD_S = 10.0


class Watchers:
    """Coroutines waiting for a job to change, woken by the change feed: none of them polls."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set at the job's next change; registered before the caller reads the job, so
        that no change between the read and the wait is missed."""
        changed = asyncio.Event()
        self._events[job_id].add(changed)
        try:
            yield changed
        finally:
            self._events[job_id].discard(changed)
            if not self._events[job_id]:
                del self._events[job_id]

    def notify(self, job_id: str) -> None:
        ids = list(self._events) if job_id == EVERY_JOB else [job_id]
        for changed_id in ids:
            for changed in self._events.get(changed_id, ()):
                changed.set()

    def __len__(self) -> int:
        return sum(map(len, self._events.values()))


class Jobs:
    """A plain class; `serve_app.app` makes it a deployment. `generators` holds each served
    model's Generator deployment handle (any object with the same `options(stream=True).generate.remote`)."""

    async def __init__(  # type: ignore[misc]  # mypy wants __init__ synchronous; Serve awaits this one
        self, generators: dict[str, DeploymentHandle[Any]], args: AppArgs
    ) -> None:
        use_serve_log_handlers()
        self._store = open_store(args.jobs_database_url)
        await self._store.migrate()
        self._storage = ResultStorage(args.results_location)
        self._retention_s = args.retention_hours * 3600
        self._runner = "jobs-" + secrets.token_hex(6)
        self._metrics = JobMetrics()
        self._admission = Admission(
            self._store,
            max_queued=args.max_queued_jobs,
            max_per_key=args.max_jobs_per_key,
            max_stored_jobs_per_key=args.max_stored_jobs_per_key,
            max_stored_bytes_per_key=int(args.max_stored_mb_per_key * 2**20),
            max_stored_bytes=int(args.max_stored_gb * 2**30) if args.max_stored_gb is not None else None,
        )
        # How each generator replica runs the model, as it reported with its latest job here.
        self._generators: dict[str, dict[str, object]] = {}
        handles = {model: Handle[GeneratorDeployment](handle) for model, handle in generators.items()}
        self._dispatcher = Dispatcher(
            self._store, self._storage, handles, self._runner, self._retention_s,
            self._metrics, on_started=self._generator_started, on_finished=lambda _, gpu_s: self._admission.ran(gpu_s),
        )  # fmt: skip
        self._handover = Handover(
            self._store, self._dispatcher, self._runner, args.jobs_heartbeat_s, args.jobs_silent_s
        )
        self._watchers = Watchers()
        # Outside Serve (the unit tests) there is no controller to read the generators' slots from.
        replica = _get_internal_replica_context()
        self._app = replica.app_name if replica is not None else None
        self._generator_deployments = generator_names(args)
        await self._read_slots()
        await self._store.heartbeat(self._runner)
        self._tasks = [
            spawn(self._handover.beat()),
            spawn(self._follow_changes()),
            spawn(self._every(min(60.0, self._retention_s / 4), self.expire)),
            spawn(self._every(args.jobs_heartbeat_s, self._count)),
            spawn(self._every(SLOTS_PERIOD_S, self._read_slots)),
        ]
        if webhook_secrets():
            outbound = OutboundPolicy(tuple(args.url_allowlist), tuple(args.url_ports))
            sender = WebhookSender(outbound, args.webhook_timeout_s)
            self._tasks.append(spawn(Outbox(self._store, sender, self._runner, args.webhook_retry_delays_s).run()))

    async def __del__(self) -> None:
        """Serve calls this on a graceful shutdown (a rolling update, a scale-down, `serve.delete`),
        within the deployment's graceful_shutdown_timeout_s: see `handover`."""
        await self._handover.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks)  # what they do as they end (the outbox's release) needs the store
        await self._store.close()

    # Called by the Ingress.

    async def submit(self, submission: Submission) -> Job | Refusal:
        """Queue a job, or say why not: it does not fit, the queue or the key's share is full, or
        the idempotency key was used with another request (the same request gets its job back)."""
        owner, request = submission.owner, submission.request
        if submission.idempotency_key is not None:
            earlier = await self._store.find_idempotent(owner, submission.idempotency_key)
            if earlier is not None:
                return await self._same_or_conflict(earlier, submission)
        if refusal := await self._admission.refusal(owner, request.shape, request.model):
            return refusal
        details = submission.details
        job = Job(
            id="video_" + secrets.token_hex(16),
            status=JobStatus.QUEUED,
            created_at=int(time.time()),
            model=details.model,
            prompt=details.prompt,
            size=f"{details.width}x{details.height}",
            seconds=f"{details.num_frames / details.fps:.2f}",
            details=details,
        )
        # From here on the job is stored and dispatched even if the caller goes away (Serve cancels
        # this call when the HTTP client disconnects): a job stored but never dispatched would wait,
        # held by this replica, until the replica stopped.
        return await asyncio.shield(spawn(self._queue(job, submission), name=f"queue {job.id}"))

    async def _queue(self, job: Job, submission: Submission) -> Job | Refusal:
        request = submission.request
        if request.image_png is not None:  # kept in storage until the job starts, not in the database
            await asyncio.to_thread(self._storage.write, job.id, {REFERENCE: request.image_png})
        new = NewJob(
            owner=submission.owner,
            request=request.model_copy(update={"image_png": None}),
            idempotency_key=submission.idempotency_key,
            request_hash=submission.request_hash,
            webhook_url=submission.webhook_url,
        )
        try:
            admit = lambda usage: self._admission.judge(usage, request.shape, request.model)  # noqa: E731
            refusal = await self._store.add(job, new, self._runner, admit)
        except DuplicateKey:  # the same Idempotency-Key, submitted at the same moment through another replica
            await asyncio.to_thread(self._storage.delete, job.id)
            # Raised for a key, whose job is stored: the one the other replica just added.
            earlier = await self._store.find_idempotent(submission.owner, cast(str, submission.idempotency_key))
            return await self._same_or_conflict(cast(StoredJob, earlier), submission)
        if refusal is not None:  # another submission took the room since `submit` checked
            await asyncio.to_thread(self._storage.delete, job.id)
            return refusal
        logger.info("job %s: queued for key %s", job.id, submission.owner)
        self._metrics.submitted(submission.owner)
        await self._dispatcher.dispatch(job.id, submission.owner, request)
        return await self._view(job)

    async def admit(
        self, owner: str, idempotency_key: str | None = None, shape: VideoShape | None = None, model: str | None = None
    ) -> Refusal | None:
        """Whether a submission would be queued now (checked again when it is). A retry of an
        earlier submission is always let through: it gets that job back."""
        if idempotency_key is not None and await self._store.find_idempotent(owner, idempotency_key):
            return None
        return await self._admission.refusal(owner, shape, model)

    async def generators(self) -> dict[str, dict[str, object]]:
        """How each generator replica that ran a job from this replica runs the model, by worker."""
        return dict(self._generators)

    async def get(self, owner: str, job_id: str) -> Job | None:
        """The job, or None when it does not exist or belongs to another key."""
        stored = await self._store.get(job_id)
        return await self._view(stored.job) if stored and stored.owner == owner else None

    async def page(
        self, owner: str, after: str | None = None, limit: int = 20, newest_first: bool = True
    ) -> JobPage | None:
        """The owner's jobs after job `after`; None when `after` is not one of them."""
        jobs = await self._store.page(owner, after, limit + 1, newest_first)
        if jobs is None:
            return None
        return JobPage(jobs=[await self._view(job) for job in jobs[:limit]], has_more=len(jobs) > limit)

    async def watch(self, owner: str, job_id: str, seen: Job | None, timeout_s: float) -> Job | None:
        """The job as soon as it differs from `seen`, or as it is after `timeout_s` (long poll)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._watchers.watching(job_id) as changed:
                job = await self.get(owner, job_id)
                remaining = deadline - time.monotonic()
                if job is None or job != seen or job.finished or remaining <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)

    async def cancel(self, owner: str, job_id: str) -> Job | None:
        """Cancel a queued or running job, whichever replica runs it (a finished one is returned as
        it is)."""
        job = await self.get(owner, job_id)
        if job is None or job.finished:
            return job
        await self._dispatcher.finish(job.id, JobStatus.CANCELLED)
        return await self.get(owner, job_id)

    async def delete(self, owner: str, job_id: str) -> bool:
        """Cancel if needed, then delete the job and its files."""
        if await self.cancel(owner, job_id) is None:
            return False
        await asyncio.to_thread(self._storage.delete, job_id)
        await self._store.delete(job_id)
        logger.info("job %s: deleted", job_id)
        return True

    async def expire(self, now: float | None = None) -> int:
        """Delete the jobs, and their files, whose retention time is over."""
        expired = await self._store.expired(time.time() if now is None else now)
        for job_id in expired:
            await asyncio.to_thread(self._storage.delete, job_id)
            await self._store.delete(job_id)
            logger.info("job %s: expired and deleted", job_id)
        return len(expired)

    async def watchers(self) -> int:
        """Event streams and long polls waiting on this replica now."""
        return len(self._watchers)

    # Internals.

    async def _same_or_conflict(self, earlier: StoredJob, submission: Submission) -> Job | Refusal:
        if earlier.request_hash == submission.request_hash:
            return await self._view(earlier.job)
        return Refusal(
            code=ErrorCode.IDEMPOTENCY_CONFLICT,
            message="This Idempotency-Key was already used with a different request body.",
            param="Idempotency-Key",
        )

    def _generator_started(self, model: str, started: Started) -> None:
        self._generators[started.worker or "local"] = started.runtime
        self._admission.capacity[model] = started.capacity

    async def _follow_changes(self) -> None:
        """Every change any replica makes: wake its watchers; stop a generation of ours that
        another replica cancelled."""
        while True:
            try:
                async for job_id in self._store.changes():
                    self._watchers.notify(job_id)
                    ids = list(self._dispatcher.running) if job_id == EVERY_JOB else [job_id]
                    for running_id in ids:
                        if running_id in self._dispatcher.running:
                            stored = await self._store.get(running_id)
                            if stored is None or stored.job.finished:
                                self._dispatcher.stop(running_id)
            except Exception:
                logger.exception("following the store's changes failed; again in a second")
                await asyncio.sleep(1.0)

    async def _read_slots(self) -> None:
        """How many jobs each model's generators run at once, from the Serve controller."""
        if self._app is None:
            return
        for model, deployment in self._generator_deployments.items():
            self._dispatcher.set_slots(model, await asyncio.to_thread(generator_slots, self._app, deployment))

    async def _count(self) -> None:
        self._metrics.counts(await self._store.count(JobStatus.QUEUED), await self._store.count(JobStatus.IN_PROGRESS))

    async def _every(self, period_s: float, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await work()
            except Exception:
                logger.exception("periodic %s failed; trying again", getattr(work, "__name__", work))

    async def _view(self, job: Job) -> Job:
        if job.status != JobStatus.QUEUED:
            return job
        # Its place in this replica's fair order; one another replica holds, by the store's estimate.
        position = self._dispatcher.queue_position(job.id) or await self._store.queue_position(job.id)
        if not position:  # it started (or ended) since `job` was read: what it is now, not "queued, 0th"
            stored = await self._store.get(job.id)
            return stored.job if stored else job
        return job.model_copy(update={"queue_position": position})
