"""The generator deployment: one replica per GPU holds the pipeline and runs one generation at
a time (`pipeline.py`), in a worker thread so that the replica's event loop keeps answering
health checks. It streams the job's progress, then its result, and turns GPU faults into a
failed job or a failed health check."""

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import ray
from ray import serve
from ray.serve.context import _get_internal_replica_context

from serve_app.common.logs import use_serve_log_handlers
from serve_app.config import AppArgs
from serve_app.engine.errors import (
    GenerationCancelled,
    GpuOutOfMemory,
    LoraRefused,
    RankDied,
    VideoNotSplittable,
    VideoTooLarge,
)
from serve_app.engine.runner import Runner, make_runner
from serve_app.error_codes import ErrorCode
from serve_app.messages import GenerationFailure, GenerationRequest, GenerationResult, Progress, Started

logger = logging.getLogger(__name__)


class Generator:
    """Loads its model (`model`: a served model's id; None: the default one) once in its
    constructor; `generate` turns a request into an MP4. One deployment per served model. `runner`
    replaces the one `args` and `model` name (tests pass one-behaviour fakes)."""

    def __init__(self, args: AppArgs, model: str | None = None, runner: Runner | None = None) -> None:
        use_serve_log_handlers()
        spec = next(spec for spec in args.served_models if model in (None, spec.id))
        self.runner = runner or make_runner(args, spec)
        self.runner.warm_up(args.warmup_size)
        # One thread: a replica never runs two generations at once, whatever its config says.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wan-generate")
        self._broken: str | None = None  # why this replica can no longer generate
        self._worker_name = _worker_name()
        self._max_generation_s = args.max_generation_s
        # Serve's model multiplexing, on the request's set of adapters: the replica tells Serve's
        # router which sets it holds, and the router sends a request to one that holds its set
        # (`handle.options(multiplexed_model_id=...)` in Jobs). The adapters themselves are loaded
        # by the runner, with the request (the set's key alone does not say what they are).
        self._hold_adapter_set = serve.multiplexed(max_num_models_per_replica=args.max_loras_per_replica)(
            _adapter_set_keeper()
        )

    async def generate(
        self, request: GenerationRequest
    ) -> AsyncIterator[Started | Progress | GenerationResult | GenerationFailure]:
        """Streams `Started`, then `Progress` as the job advances, then the `GenerationResult` (or a
        `GenerationFailure` the user can act on: the video is too large, the GPU ran out of memory,
        the generation outlasted `max_generation_s`).

        Called with `handle.options(stream=True)`. Cancelling the call stops the pipeline at the end
        of its current step, and the call ends only once the worker thread is free again, so the
        next job starts on a free replica.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Progress | None] = asyncio.Queue()
        cancel = threading.Event()

        def report(progress: Progress) -> None:
            loop.call_soon_threadsafe(events.put_nowait, progress)

        # Copy the context so that log lines from the worker thread carry Serve's request id.
        context = contextvars.copy_context()
        if adapter_set := serve.get_multiplexed_model_id():
            await self._hold_adapter_set(adapter_set)
        yield Started(worker=self._worker_name, runtime=self.runner.description, capacity=self.runner.capacity)
        work = loop.run_in_executor(self._worker, context.run, self.runner.run, request, report, cancel)
        # Queued after every `report` of the thread, so it comes last.
        work.add_done_callback(lambda _: events.put_nowait(None))
        # Past the deadline the pipeline stops at the end of its step, as for a cancel.
        deadline = loop.call_later(self._max_generation_s, cancel.set) if self._max_generation_s else None
        try:
            while (progress := await events.get()) is not None:
                yield progress
            yield self._outcome(work, request)
        except asyncio.CancelledError:
            cancel.set()
            await asyncio.wait([work])
            logger.info("generation cancelled")
            raise
        finally:
            cancel.set()
            if deadline is not None:
                deadline.cancel()

    def _outcome(
        self, work: asyncio.Future[GenerationResult], request: GenerationRequest
    ) -> GenerationResult | GenerationFailure:
        try:
            return work.result()
        except VideoTooLarge as exc:
            return GenerationFailure(code=ErrorCode.VIDEO_TOO_LARGE, message=str(exc))
        except LoraRefused as exc:
            logger.info("adapter refused: %s", exc.message)
            return GenerationFailure(code=ErrorCode.INVALID_REQUEST, message=exc.message, param=exc.param)
        except VideoNotSplittable as exc:
            return GenerationFailure(code=ErrorCode.INVALID_REQUEST, message=str(exc))
        except RankDied as exc:
            # A gang cannot continue without all its ranks: fail health checks to be replaced whole.
            self._broken = str(exc)
            logger.error("gang broken: %s", exc)
            return GenerationFailure(
                code=ErrorCode.REPLICA_DIED,
                message="A rank (one GPU's process) of the generator replica running this job stopped. "
                "The job is not retried: submit it again.",
            )
        except GenerationCancelled:
            # Nothing else cancels a generation whose caller still reads it: the deadline passed.
            logger.warning("generation stopped at its deadline of %g s", self._max_generation_s)
            return GenerationFailure(
                code=ErrorCode.TIMEOUT,
                message=f"The generation took longer than this server's limit of {self._max_generation_s:g} s "
                "and was stopped. Try fewer steps, a smaller size or fewer frames.",
            )
        except GpuOutOfMemory:
            # Recoverable (the runner freed what the job held): the replica stays in service.
            logger.warning("out of memory at %dx%dx%d", request.width, request.height, request.num_frames)
            return GenerationFailure(
                code=ErrorCode.GPU_OUT_OF_MEMORY,
                message=f"The GPU ran out of memory for {request.width}x{request.height} with "
                f"{request.num_frames} frames. Try a smaller size or fewer frames.",
            )
        except RuntimeError as exc:
            # A CUDA error (an illegal memory access, a device-side assert) poisons the process's
            # CUDA context: every later job would fail too. Fail health checks to be replaced.
            if "CUDA error" in str(exc):
                self._broken = f"CUDA error in an earlier job: {exc}"
            raise

    async def check_health(self) -> None:
        """Called by Ray Serve; raising marks the replica unhealthy and has it replaced."""
        if self._broken:
            raise RuntimeError(self._broken)
        # A gang's waits up to its timeout for its other ranks to answer: not on the event loop.
        await asyncio.to_thread(self.runner.check_health)


def _adapter_set_keeper() -> Callable[[str], Awaitable[str]]:
    """What Serve's multiplexing loads for a set of adapters: its key (the adapters are the
    runner's). A function of each replica's own: Serve keeps its list of keys on the function."""

    async def adapter_set(key: str) -> str:
        return key

    return adapter_set


def _worker_name() -> str | None:
    """The deployment (so, the model), Ray node and GPU of this replica, reported with each job
    (None outside Ray)."""
    if not ray.is_initialized():
        return None
    gpus = ",".join(map(str, ray.get_gpu_ids())) or "none"
    replica = _get_internal_replica_context()  # None when built outside a Serve replica (tests)
    deployment = f"{replica.deployment} on " if replica else ""
    return f"{deployment}node {ray.get_runtime_context().get_node_id()[:12]}, GPU {gpus}"
