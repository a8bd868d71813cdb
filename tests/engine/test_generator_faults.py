"""GPU faults inside a generator replica: the real Generator (its stream, its recovery, its health
check) around one-behaviour runners that raise what a GPU's runner would, since a CPU cannot run
out of GPU memory or corrupt a CUDA context. (The real pipeline raising through it: test_pipeline's
cancel, timeout, out-of-memory and lost-GPU tests.)"""

import asyncio
import threading
from collections.abc import Callable

import pytest
from support.service import SMALL

from serve_app.config import AppArgs
from serve_app.engine.errors import GenerationCancelled, GpuOutOfMemory, LoraRefused, RankDied
from serve_app.engine.generator import Generator
from serve_app.messages import (
    DEFAULT_NEGATIVE_PROMPT,
    GenerationFailure,
    GenerationRequest,
    GenerationResult,
    Progress,
    StageTimings,
)

REQUEST = GenerationRequest(
    prompt="a lantern", negative_prompt=DEFAULT_NEGATIVE_PROMPT, guidance_scale=5.0, fps=24, seed=1, model="tiny",
    shift=3.0, **SMALL,
)
RESULT = GenerationResult(
    video_mp4=b"video", thumbnail_jpeg=b"thumbnail", model="fake",
    timings=StageTimings(text_encoding_s=0, denoising_s=0, decoding_s=0, encoding_s=0),
)  # fmt: skip


class FakeRunner:
    """A `Runner` whose run() does `behaviour` once, then succeeds; unhealthy once told so."""

    description = {"model": "fake"}
    capacity = None

    def __init__(self, behaviour: Callable[[threading.Event], None] = lambda _: None) -> None:
        self._behaviour = behaviour
        self.runs = 0
        self.unhealthy: Exception | None = None

    def warm_up(self, size: str) -> None:
        pass

    def check_health(self) -> None:
        if self.unhealthy:
            raise self.unhealthy

    def run(self, request: GenerationRequest, report: Callable[[Progress], None], cancel: threading.Event):
        self.runs += 1
        if self.runs == 1:
            self._behaviour(cancel)
        report(Progress(step=1, total=1))
        return RESULT


def raising(error: Exception) -> Callable[[threading.Event], None]:
    def behaviour(_: threading.Event) -> None:
        raise error

    return behaviour


def until_cancelled(cancel: threading.Event) -> None:
    """What the pipeline does when `cancel` is set: stop at the end of the step."""
    assert cancel.wait(30), "never cancelled"
    raise GenerationCancelled


def outcome(generator: Generator):
    async def last():
        return [event async for event in generator.generate(REQUEST)][-1]

    return asyncio.run(last())


def test_out_of_memory_fails_the_job_with_advice_and_the_replica_carries_on():
    out_of_memory = GpuOutOfMemory("CUDA out of memory.")
    generator = Generator(AppArgs(model="simulated"), runner=FakeRunner(raising(out_of_memory)))
    assert outcome(generator) == GenerationFailure(
        code="gpu_out_of_memory",
        message="The GPU ran out of memory for 64x64 with 25 frames. Try a smaller size or fewer frames.",
    )
    asyncio.run(generator.check_health())
    assert outcome(generator) == RESULT


def test_a_cuda_error_makes_the_health_check_fail():
    error = RuntimeError("CUDA error: an illegal memory access")
    generator = Generator(AppArgs(model="simulated"), runner=FakeRunner(raising(error)))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        outcome(generator)
    with pytest.raises(RuntimeError, match="CUDA error in an earlier job"):
        asyncio.run(generator.check_health())


def test_another_error_fails_the_job_but_not_the_replica():
    generator = Generator(AppArgs(model="simulated"), runner=FakeRunner(raising(RuntimeError("a bug"))))
    with pytest.raises(RuntimeError, match="a bug"):
        outcome(generator)
    asyncio.run(generator.check_health())


def test_a_dead_rank_of_a_gang_fails_the_job_as_replica_died_and_the_health_check():
    # What engine/gang.py raises when another rank died mid-job (tested for real in test_gang.py).
    died = RankDied("a rank of the gang died: the actor is dead")
    generator = Generator(AppArgs(model="simulated"), runner=FakeRunner(raising(died)))
    failure = outcome(generator)
    assert failure.code == "replica_died" and "submit it again" in failure.message
    with pytest.raises(RuntimeError, match="a rank of the gang died"):
        asyncio.run(generator.check_health())


def test_a_runner_that_can_serve_no_more_makes_the_health_check_fail():
    runner = FakeRunner()
    generator = Generator(AppArgs(model="simulated"), runner=runner)
    asyncio.run(generator.check_health())
    runner.unhealthy = RuntimeError("the replica's GPU is gone")
    with pytest.raises(RuntimeError, match="GPU is gone"):
        asyncio.run(generator.check_health())


def test_a_generation_past_its_deadline_fails_as_timeout_and_the_replica_takes_the_next():
    generator = Generator(AppArgs(model="simulated", max_generation_s=0.2), runner=FakeRunner(until_cancelled))
    failure = outcome(generator)
    assert failure.code == "timeout" and "limit of 0.2 s" in failure.message
    assert outcome(generator) == RESULT


def test_a_cancelled_call_stops_the_runner_and_ends_once_the_worker_is_free():
    runner = FakeRunner(until_cancelled)
    generator = Generator(AppArgs(model="simulated"), runner=runner)

    async def cancel_after_start():
        stream = generator.generate(REQUEST)
        await anext(stream)  # Started: the run begins
        task = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker is free again: the next generation runs at once.
        return [event async for event in generator.generate(REQUEST)][-1]

    assert asyncio.run(cancel_after_start()) == RESULT and runner.runs == 2


def test_a_refused_adapter_fails_the_job_as_a_400_naming_it_and_the_replica_carries_on():
    refused = LoraRefused("loras[1].path", "it adapts 'blocks.40.attn1.to_q', which this model lacks.")
    generator = Generator(AppArgs(model="simulated"), runner=FakeRunner(raising(refused)))
    failure = outcome(generator)
    assert failure == GenerationFailure(code="invalid_request", message=refused.message, param="loras[1].path")
    assert failure.code.http_status == 400
    asyncio.run(generator.check_health())
    assert outcome(generator) == RESULT
