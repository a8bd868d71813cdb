"""The jobs deployment: the one source of truth for job state, and the queue.

One replica. It records every job in SQLite (`job_store`), hands queued jobs to the
generator deployment in submission order (Serve's router assigns them first come, first served
as replicas free up, and autoscales the generators on that queue), follows each generation's
progress stream, writes results to storage, sends webhooks and deletes what has expired. Ingress
replicas ask it for jobs; it never talks HTTP to users.

During a rolling update an old and a new replica overlap, sharing the database: each keeps a
heartbeat there and dispatches only the jobs it claimed; the old one hands its queued jobs over
and finishes its running ones. Jobs whose replica stopped beating are adopted.
"""

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Coroutine

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from serve_app.capacity import Capacity
from serve_app.config import AppArgs
from serve_app.job_store import JobStore
from serve_app.logs import use_serve_log_handlers
from serve_app.metrics import JobMetrics
from serve_app.outbound import OutboundPolicy
from serve_app.schemas import (
    GenerationFailure,
    GenerationRequest,
    GenerationResult,
    Job,
    JobError,
    JobList,
    JobTimings,
    Progress,
    Refusal,
    Started,
    VideoDetails,
    VideoShape,
)
from serve_app.storage import THUMBNAIL, VIDEO, ResultStorage
from serve_app.webhooks import WebhookSender, webhook_secret

logger = logging.getLogger(__name__)


class Jobs:
    async def __init__(self, generator: DeploymentHandle, args: AppArgs) -> None:
        use_serve_log_handlers()
        self._store = JobStore(args.data_dir / "jobs.sqlite3")
        self._storage = ResultStorage(args.results_location)
        self._generator = generator.options(stream=True)
        self._retention_s = args.retention_hours * 3600
        self._max_queued = args.max_queued_jobs
        self._max_per_key = args.max_jobs_per_key
        # How long recent jobs ran, for the Retry-After of a refused submission.
        self._recent_run_s: deque[float] = deque([60.0], maxlen=20)
        key = webhook_secret()
        outbound = OutboundPolicy(tuple(args.url_allowlist))
        self._webhooks = (
            WebhookSender(key, outbound, args.webhook_retry_delays_s, args.webhook_timeout_s) if key else None
        )
        self._streams: dict[str, DeploymentResponseGenerator] = {}
        # How each generator replica runs the model, as it reported with its latest job: for /readyz.
        self._generators: dict[str, dict] = {}
        # What the generators' GPU memory allows, as the latest to start a job reported it.
        self._capacity: Capacity | None = None
        # Job id -> when it was queued, when it started (Job's timestamps are whole seconds).
        self._queued_at: dict[str, float] = {}
        self._started_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._changed = asyncio.Condition()
        self._metrics = JobMetrics()
        self._runner = "jobs-" + secrets.token_hex(6)
        self._releasing: set[str] = set()  # queued jobs handed over to the next replica
        self._stopping = False
        self._store.heartbeat(self._runner, time.time())
        await self._adopt_orphans()
        self._spawn(self._keep_alive())
        self._spawn(self._expire_periodically())

    async def __del__(self) -> None:
        """Serve calls this on a graceful shutdown (a rolling update, `serve.delete`), within the
        deployment's graceful_shutdown_timeout_s: jobs still queued are handed to the next jobs
        replica, running ones are followed to their end."""
        queued = [
            job_id for job_id in self._streams if (stored := self._store.get(job_id)) and stored.job.status == "queued"
        ]
        for job_id in queued:
            self._releasing.add(job_id)
            self._store.claim(job_id, None)
            self._streams.pop(job_id).cancel()
        running = [task for task in self._tasks if task.get_name().startswith("follow:")]
        logger.info("shutting down: %d queued jobs handed over, waiting for %d running", len(queued), len(running))
        if running:
            await asyncio.wait(running)
        self._store.retire(self._runner)

    # Called by the ingress.

    async def submit(
        self,
        owner: str,
        request: GenerationRequest,
        details: VideoDetails,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        webhook_url: str | None = None,
    ) -> Job | Refusal:
        """Queue a job, or say why not: the queue or the key's share is full, or the idempotency
        key was used with another request (the same request gets its earlier job back)."""
        if idempotency_key is not None:
            earlier = self._store.find_idempotent(owner, idempotency_key)
            if earlier is not None:
                if earlier.request_hash == request_hash:
                    return self._view(earlier.job)
                return Refusal(
                    status=409,
                    code="idempotency_conflict",
                    message="This Idempotency-Key was already used with a different request body.",
                    param="Idempotency-Key",
                )
        if refusal := await self.admit(owner, shape=request.shape):
            return refusal
        job = Job(
            id="video_" + secrets.token_hex(16),
            status="queued",
            created_at=int(time.time()),
            model=details.model or "",
            prompt=details.prompt,
            size=f"{details.width}x{details.height}",
            seconds=f"{details.num_frames / details.fps:.2f}",
            details=details,
        )
        self._store.add(
            job,
            owner,
            request,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            webhook_url=webhook_url,
        )
        logger.info("job %s: queued for key %s", job.id, owner)
        self._metrics.submitted(owner)
        self._dispatch(job.id, request)
        await self._notify()
        return self._view(job)

    async def admit(
        self, owner: str, idempotency_key: str | None = None, shape: VideoShape | None = None
    ) -> Refusal | None:
        """Whether a submission of this key would be queued now (checked again when it is): the
        video fits the generators' GPU memory, and the queue and the key's share have room. A
        retry of an earlier submission is always let through: it gets that job back."""
        if idempotency_key is not None and self._store.find_idempotent(owner, idempotency_key):
            return None
        if shape is not None and self._capacity is not None and (reason := shape.refusal(self._capacity)):
            return Refusal(status=400, code="video_too_large", message=reason)
        running = max(1, self._store.count("in_progress"))
        run_s = sum(self._recent_run_s) / len(self._recent_run_s)
        queued = self._store.count("queued")
        if queued >= self._max_queued:
            wait = run_s * (queued - self._max_queued + 1) / running
            return Refusal(
                status=503,
                code="queue_full",
                message=f"The queue is full ({queued} jobs waiting). Retry later.",
                retry_after_s=_bounded(wait),
            )
        active = self._store.count("queued", owner) + self._store.count("in_progress", owner)
        if active >= self._max_per_key:
            return Refusal(
                status=429,
                code="too_many_jobs",
                message=f"This API key already has {active} jobs queued or running, its limit. "
                "Retry when one has finished, or cancel one.",
                retry_after_s=_bounded(run_s),
            )
        return None

    async def generators(self) -> dict[str, dict]:
        """How each generator replica that ran a job since this replica started runs the model, by worker."""
        return dict(self._generators)

    async def get(self, owner: str, job_id: str) -> Job | None:
        """The job, or None when it does not exist or belongs to another key."""
        stored = self._store.get(job_id)
        return self._view(stored.job) if stored and stored.owner == owner else None

    async def page(
        self, owner: str, after: str | None = None, limit: int = 20, newest_first: bool = True
    ) -> JobList | None:
        """The owner's jobs after job `after`; None when `after` is not one of them."""
        jobs = self._store.page(owner, after, limit + 1, newest_first)
        if jobs is None:
            return None
        data = [self._view(job) for job in jobs[:limit]]
        return JobList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=len(jobs) > limit,
        )

    async def watch(self, owner: str, job_id: str, seen: Job | None, timeout_s: float) -> Job | None:
        """The job as soon as it differs from `seen`, or as it is after `timeout_s` (long poll)."""
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while True:
                job = await self.get(owner, job_id)
                remaining = deadline - time.monotonic()
                if job is None or job != seen or job.finished or remaining <= 0:
                    return job
                # Woken by our own changes, and every second for those of another jobs replica
                # (during a rolling update both write to the database).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    async def cancel(self, owner: str, job_id: str) -> Job | None:
        """Cancel a queued or running job (a finished one is returned as it is)."""
        job = await self.get(owner, job_id)
        if job is None or job.finished:
            return job
        job = await self._finish(job.id, "cancelled")
        return self._view(job)

    async def delete(self, owner: str, job_id: str) -> bool:
        """Cancel if needed, then delete the job and its files."""
        job = await self.cancel(owner, job_id)
        if job is None:
            return False
        await asyncio.to_thread(self._storage.delete, job_id)
        self._store.delete(job_id)
        await self._notify()
        logger.info("job %s: deleted", job_id)
        return True

    async def expire(self, now: float | None = None) -> int:
        """Delete the jobs, and their files, whose retention time is over."""
        expired = self._store.expired(time.time() if now is None else now)
        for job_id in expired:
            await asyncio.to_thread(self._storage.delete, job_id)
            self._store.delete(job_id)
            logger.info("job %s: expired and deleted", job_id)
        return len(expired)

    # Running jobs.

    async def _adopt_orphans(self) -> None:
        """Jobs whose jobs replica is gone (it crashed, or the application restarted): one that was
        running has lost its generation and fails; one that was queued is queued again, here."""
        for job in self._store.orphans(alive_since=time.time() - _RUNNER_TIMEOUT_S):
            if job.status == "in_progress":
                await self._finish(
                    job.id,
                    "failed",
                    JobError(
                        code="interrupted",
                        message="The jobs service stopped while this job ran (a crash); submit it again.",
                    ),
                )
            else:
                self._dispatch(job.id, self._store.request(job.id))

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(_HEARTBEAT_S)
            try:
                self._store.heartbeat(self._runner, time.time())
                if not self._stopping:
                    await self._adopt_orphans()
            except Exception:
                logger.exception("heartbeat failed; trying again")

    def _dispatch(self, job_id: str, request: GenerationRequest) -> None:
        self._store.claim(job_id, self._runner)
        self._queued_at[job_id] = time.time()
        stream = self._generator.generate.remote(request)
        self._streams[job_id] = stream
        self._spawn(self._follow(job_id, stream), name=f"follow:{job_id}")

    async def _follow(self, job_id: str, stream: DeploymentResponseGenerator) -> None:
        result: GenerationResult | GenerationFailure | None = None
        try:
            async for event in stream:
                if isinstance(event, Started):
                    await self._started(job_id, event)
                elif isinstance(event, Progress):
                    await self._progress(job_id, event)
                else:
                    result = event
        except Exception as exc:
            stored = self._store.get(job_id)
            # Cancelled, deleted or handed over: the stream was cancelled for it.
            if stored is None or stored.job.finished or job_id in self._releasing:
                return
            if isinstance(exc, RayActorError):
                error = JobError(
                    code="replica_died",
                    message="The generator replica running this job stopped (its process died). "
                    "The job is not retried: submit it again.",
                )
            else:
                error = JobError(
                    code="generation_failed",
                    message=f"Generation failed; the server log has the details under job id {job_id}.",
                )
            logger.error("job %s: %s", job_id, error.message, exc_info=exc)
            await self._finish(job_id, "failed", error)
            return
        finally:
            self._streams.pop(job_id, None)
        if isinstance(result, GenerationFailure):
            await self._finish(job_id, "failed", JobError(code=result.code, message=result.message))
        elif result is not None:
            await self._complete(job_id, result)

    async def _started(self, job_id: str, started: Started) -> None:
        self._generators[started.worker or "local"] = started.runtime
        self._capacity = started.capacity
        stored = self._store.get(job_id)
        if stored is None or stored.job.finished or job_id in self._releasing:
            return
        now = self._started_at[job_id] = time.time()
        self._metrics.started(now - self._queued_at.get(job_id, now))
        job = stored.job.model_copy(update={"status": "in_progress", "started_at": int(now), "worker": started.worker})
        logger.info("job %s: started", job_id)
        self._store.save(job)
        await self._notify()

    async def _progress(self, job_id: str, progress: Progress) -> None:
        stored = self._store.get(job_id)
        if stored is None or stored.job.finished or job_id in self._releasing:
            return
        # 100 is kept for a finished video: decoding and encoding come after the last step.
        job = stored.job.model_copy(update={"progress": min(99, 100 * progress.step // progress.total)})
        self._store.save(job)
        await self._notify()

    async def _complete(self, job_id: str, result: GenerationResult) -> None:
        files = {VIDEO: result.video_mp4, THUMBNAIL: result.thumbnail_jpeg}
        await asyncio.to_thread(self._storage.write, job_id, files)
        stored = self._store.get(job_id)
        if stored is None or stored.job.finished:  # deleted or cancelled while its files were written
            await asyncio.to_thread(self._storage.delete, job_id)
            return
        self._recent_run_s.append(time.time() - self._started_at.get(job_id, time.time()))
        queued_s = self._started_at.get(job_id, 0.0) - self._queued_at.get(job_id, 0.0)
        timings = JobTimings(queued_s=round(queued_s, 3), **result.timings.model_dump())
        details = stored.job.details.model_copy(
            update={"model": result.model, "timings": timings, "simulated": result.simulated or None}
        )
        await self._finish(job_id, "completed", details=details, peak_gpu_memory_bytes=result.peak_gpu_memory_bytes)

    async def _finish(
        self,
        job_id: str,
        status: str,
        error: JobError | None = None,
        details: VideoDetails | None = None,
        peak_gpu_memory_bytes: int | None = None,
    ) -> Job:
        """Move a job to its final status; a running generation is stopped."""
        stored = self._store.get(job_id)
        now = int(time.time())
        job = stored.job.model_copy(
            update={
                "status": status,
                "progress": 100 if status == "completed" else stored.job.progress,
                "completed_at": now,
                "expires_at": now + int(self._retention_s),
                "error": error,
                "details": details or stored.job.details,
            }
        )
        self._store.save(job)
        self._queued_at.pop(job_id, None)
        started_at = self._started_at.pop(job_id, None)
        gpu_s = time.time() - started_at if started_at is not None else 0.0
        self._metrics.finished_job(stored.owner, job, gpu_s, peak_gpu_memory_bytes)
        stream = self._streams.pop(job_id, None)
        if stream is not None:
            # Queued: the router never assigns it. Running: the replica stops at the step's end.
            stream.cancel()
        logger.info("job %s: %s", job_id, status if error is None else f"{status} ({error.code})")
        await self._notify()
        if stored.webhook_url and self._webhooks and status in ("completed", "failed"):
            self._spawn(self._webhooks.deliver(stored.webhook_url, job))
        return job

    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self._retention_s / 4))
            try:
                await self.expire()
            except Exception:
                logger.exception("expiring jobs failed; trying again later")

    # Helpers.

    def _view(self, job: Job) -> Job:
        if job.status != "queued":
            return job
        return job.model_copy(update={"queue_position": self._store.queue_position(job.id)})

    async def _notify(self) -> None:
        self._metrics.counts(self._store.count("queued"), self._store.count("in_progress"))
        async with self._changed:
            self._changed.notify_all()

    def _spawn(self, work: Coroutine, name: str | None = None) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)


_HEARTBEAT_S = 2.0
# A jobs replica not heard of for this long is gone: its jobs are adopted.
_RUNNER_TIMEOUT_S = 10.0


def _bounded(seconds: float) -> int:
    return min(3600, max(1, math.ceil(seconds)))
