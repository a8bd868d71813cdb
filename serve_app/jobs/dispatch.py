"""Running jobs: each job this Jobs replica holds waits in its model's `FairQueue` for its turn,
then is sent once to the model's Generator deployment (Serve's router queues it, first come first
served, and autoscales the generators on that queue), and its stream followed to the end:
`Started`, each step's `Progress`, then the result, written to storage before the job is marked
completed. Every transition is a compare-and-set in the store, so a job cancelled, deleted or
handed over meanwhile stops here at its next event, and its generation at the end of the current
step.

Fair between keys: Serve holds at most as many of a model's jobs, queued or running, as its
generators can run at once (`set_slots`, from `deployments.generator_slots`: max_replicas), enough
to scale them out to the maximum, from zero too. The rest wait here, and enter as slots free, keys
taking turns (`fair_queue`): a key that comes later waits for a slot, not for every job of the keys
before it. A job waiting here, not yet in Serve, is cancelled, deleted or handed over by forgetting
it; its queue position is its place in that order."""

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

from ray.exceptions import RayActorError

from serve_app.common.metrics import JobMetrics
from serve_app.common.storage import REFERENCE, THUMBNAIL, VIDEO, ResultStorage
from serve_app.common.tasks import spawn
from serve_app.error_codes import ErrorCode
from serve_app.handles import GenerationEvent, GeneratorDeployment, Handle
from serve_app.jobs.fair_queue import FairQueue
from serve_app.jobs.store import JobStore
from serve_app.jobs.webhooks import event
from serve_app.messages import (
    GenerationFailure,
    GenerationRequest,
    GenerationResult,
    Job,
    JobError,
    JobStatus,
    JobTimings,
    Progress,
    Started,
    VideoDetails,
)

logger = logging.getLogger(__name__)


class Stream(Protocol):
    """A generator replica's answer to one request: `generator.stream(GeneratorDeployment.generate, ...)`."""

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    def cancel(self) -> None: ...


@dataclass
class RunningJob:
    """What this replica keeps about a job it dispatched, until the job's stream ends: while the job
    waits for its turn it has its request and no stream; once sent to Serve, its stream."""

    job_id: str
    model: str
    request: GenerationRequest | None
    stream: Stream | None = None
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self.started_at is not None


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        storage: ResultStorage,
        generators: dict[str, Handle[GeneratorDeployment]],
        runner: str,
        retention_s: float,
        metrics: JobMetrics,
        on_started: Callable[[str, Started], None],
        on_finished: Callable[[Job, float], None],
    ) -> None:
        self._store = store
        self._storage = storage
        self._generators = generators  # by served model: each has its own Generator deployment
        self._runner = runner
        self._retention_s = retention_s
        self._metrics = metrics
        self._on_started = on_started
        self._on_finished = on_finished
        self.running: dict[str, RunningJob] = {}
        # By model: how many of its jobs Serve may hold at once (none: no limit, until `set_slots`), and
        # the order its jobs enter Serve in.
        self._slots: dict[str, int] = {}
        self._queues: dict[str, FairQueue] = {model: FairQueue() for model in generators}

    async def dispatch(self, job_id: str, owner: str, request: GenerationRequest | None = None) -> None:
        """Queue the job for the generators, in its key's line, and follow it. Without `request` (a job
        adopted from another replica) it comes from the store, and its reference image from storage."""
        if request is None:
            request = await self._store.request(job_id)
        if request.image_png is None and await asyncio.to_thread(self._storage.exists, job_id, REFERENCE):
            image = await asyncio.to_thread(self._storage.read, job_id, REFERENCE)
            request = request.model_copy(update={"image_png": image})
        generator = self._generators.get(request.model)
        if generator is None:  # queued under a config that served it, adopted under one that does not
            message = f"This server no longer serves the model {request.model!r}: submit the job again."
            await self.finish(job_id, JobStatus.FAILED, JobError(code=ErrorCode.MODEL_NOT_SERVED, message=message))
            return
        self.running[job_id] = RunningJob(job_id, request.model, request)
        self._queues[request.model].add(job_id, owner)
        self._enter(request.model)

    def set_slots(self, model: str, slots: int) -> None:
        """How many of the model's jobs Serve may hold at once, queued or running: the most its
        generators run at once."""
        self._slots[model] = slots
        self._enter(model)

    def _enter(self, model: str) -> None:
        """Send the model's waiting jobs to its generators while Serve has slots for them, fairest first."""
        queue = self._queues[model]
        while (job_id := queue.next(self._slots.get(model))) is not None:
            running = self.running[job_id]
            request, running.request = cast(GenerationRequest, running.request), None
            # A request with adapters goes where its set is loaded, where it can (see engine/generator.py).
            generator = self._generators[model].multiplexed(request.adapter_set)
            running.stream = generator.stream(GeneratorDeployment.generate, request)
            running.task = spawn(self._follow(running), name=f"follow {job_id}")

    def queue_position(self, job_id: str) -> int | None:
        """The job's place in its model's queue, 1 for the next to start; None if this replica does not
        hold it queued."""
        running = self.running.get(job_id)
        return self._queues[running.model].position(job_id) if running is not None else None

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        error: JobError | None = None,
        details: VideoDetails | None = None,
        result: GenerationResult | None = None,
    ) -> Job | None:
        """Move a job to its final status, from any replica; None if it had already finished or is
        gone. A generation this replica runs for it is stopped (another replica's hears of it)."""
        stored = await self._store.get(job_id)
        if stored is None or stored.job.finished:
            return None
        now = int(time.time())
        job = stored.job.model_copy(
            update={
                "status": status,
                "progress": 100 if status == JobStatus.COMPLETED else stored.job.progress,
                "completed_at": now,
                "expires_at": now + int(self._retention_s),
                "error": error,
                "details": details or stored.job.details,
            }
        )
        webhook = None
        if stored.webhook_url and status in (JobStatus.COMPLETED, JobStatus.FAILED):
            message_id = "msg_" + secrets.token_hex(12)
            webhook = (message_id, event(job, message_id))
        stored_bytes = len(result.video_mp4) + len(result.thumbnail_jpeg) if result else 0
        if not await self._store.finish(job, webhook, stored_bytes):
            return None
        running = self._forget(job_id)
        if running is not None and running.stream is not None and result is None:
            running.stream.cancel()
        await asyncio.to_thread(self._storage.delete_file, job_id, REFERENCE)
        gpu_s = time.time() - running.started_at if running and running.started_at else 0.0
        self._metrics.finished_job(stored.owner, job, gpu_s, result.peak_gpu_memory_bytes if result else None)
        self._on_finished(job, gpu_s)
        logger.info("job %s: %s", job_id, status if error is None else f"{status} ({error.code})")
        return job

    def stop(self, job_id: str) -> None:
        """Stop following a job: one waiting for its turn never goes to Serve, the router never assigns
        one queued there; a generation stops at the end of its step."""
        running = self._forget(job_id)
        if running is not None and running.stream is not None:
            running.stream.cancel()

    def _forget(self, job_id: str) -> RunningJob | None:
        """Drop the job from this replica; the next waiting job of its model takes its slot."""
        running = self.running.pop(job_id, None)
        if running is not None:
            self._queues[running.model].remove(job_id)
            self._enter(running.model)
        return running

    async def _follow(self, running: RunningJob) -> None:
        job_id = running.job_id
        try:
            async for message in cast(Stream, running.stream):
                if isinstance(message, Started):
                    following = await self._started(running, message)
                elif isinstance(message, Progress):
                    following = await self._progress(job_id, message)
                elif isinstance(message, GenerationFailure):
                    await self.finish(job_id, JobStatus.FAILED, JobError(**message.model_dump()))
                    return
                else:
                    await self._complete(running, message)
                    return
                if not following:
                    return
            raise RuntimeError("the generator's stream ended without a result")
        except Exception as exc:
            if self.running.get(job_id) is running:  # not stopped on purpose
                await self._failed(job_id, exc)

    async def _started(self, running: RunningJob, started: Started) -> bool:
        self._on_started(running.model, started)
        stored = await self._store.get(running.job_id)
        if stored is None:
            self.stop(running.job_id)
            return False
        running.started_at = time.time()
        job = stored.job.model_copy(
            update={"status": JobStatus.IN_PROGRESS, "started_at": int(running.started_at), "worker": started.worker}
        )
        if not await self._store.start(job, self._runner):
            # Cancelled, or handed over to another replica, just as the generator took it.
            self.stop(running.job_id)
            return False
        self._queues[running.model].start(running.job_id)
        self._metrics.started(running.started_at - running.queued_at)
        await asyncio.to_thread(self._storage.delete_file, running.job_id, REFERENCE)
        logger.info("job %s: started on %s", running.job_id, started.worker)
        return True

    async def _progress(self, job_id: str, progress: Progress) -> bool:
        stored = await self._store.get(job_id)
        if stored is None or stored.job.finished:
            self.stop(job_id)
            return False
        # 100 is kept for a finished video: decoding and encoding come after the last step.
        job = stored.job.model_copy(update={"progress": min(99, 100 * progress.step // progress.total)})
        if not await self._store.progress(job, self._runner):
            self.stop(job_id)
            return False
        return True

    async def _complete(self, running: RunningJob, result: GenerationResult) -> None:
        job_id = running.job_id
        files = {VIDEO: result.video_mp4, THUMBNAIL: result.thumbnail_jpeg}
        # Whole files under their final names before the job says completed.
        await asyncio.to_thread(self._storage.write, job_id, files)
        stored = await self._store.get(job_id)
        if stored is None or stored.job.finished:  # deleted or cancelled while its files were written
            await asyncio.to_thread(self._storage.delete, job_id)
            return
        started_at = running.started_at or time.time()
        timings = JobTimings(queued_s=round(started_at - running.queued_at, 3), **result.timings.model_dump())
        # The adapters' SHA-256 as the replica read them (a simulated one reads none).
        loras = result.loras or stored.job.details.loras
        update = {"timings": timings, "loras": loras, "parallelism": result.parallelism}
        details = stored.job.details.model_copy(update=update)
        await self.finish(job_id, JobStatus.COMPLETED, details=details, result=result)

    async def _failed(self, job_id: str, exc: Exception) -> None:
        if isinstance(exc, RayActorError):
            error = JobError(
                code=ErrorCode.REPLICA_DIED,
                message="The generator replica running this job stopped (its process died). "
                "The job is not retried: submit it again.",
            )
        else:
            error = JobError(
                code=ErrorCode.GENERATION_FAILED,
                message=f"Generation failed; the server log has the details under job id {job_id}.",
            )
        logger.error("job %s: %s", job_id, error.message, exc_info=exc)
        await self.finish(job_id, JobStatus.FAILED, error)
