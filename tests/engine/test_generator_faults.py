"""GPU faults inside a generator replica. A CPU cannot run out of GPU memory or corrupt a CUDA
context, so the tiny pipeline's transformer raises what CUDA would; the rest is the real
generator: its stream, its recovery and its health check."""

import asyncio

import pytest
import torch
from support.service import SMALL

from serve_app.config import AppArgs
from serve_app.engine.generator import Generator
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationFailure, GenerationRequest, GenerationResult

# The tiny pipeline runs here: seconds a test, not part of `make test-fast`.
pytestmark = pytest.mark.model

REQUEST = GenerationRequest(
    prompt="a lantern", negative_prompt=DEFAULT_NEGATIVE_PROMPT, guidance_scale=5.0, fps=24, seed=1, model="tiny",
    shift=3.0, **SMALL,
)  # fmt: skip


@pytest.fixture
def generator(tmp_path_factory) -> Generator:
    return Generator(AppArgs(model="tiny", device="cpu", cache_dir=tmp_path_factory.getbasetemp() / "faults-cache"))


def outcome(generator: Generator):
    async def last():
        events = [event async for event in generator.generate(REQUEST)]
        return events[-1]

    return asyncio.run(last())


def raising(error: Exception):
    def forward(*args, **kwargs):
        raise error

    return forward


def test_out_of_memory_fails_the_job_with_advice_and_the_replica_carries_on(generator, monkeypatch):
    transformer = generator.runner.model.t2v.transformer
    monkeypatch.setattr(transformer, "forward", raising(torch.OutOfMemoryError("CUDA out of memory.")))
    failure = outcome(generator)
    assert failure == GenerationFailure(
        code="gpu_out_of_memory",
        message="The GPU ran out of memory for 64x64 with 25 frames. Try a smaller size or fewer frames.",
    )
    generator.check_health()
    monkeypatch.undo()
    assert isinstance(outcome(generator), GenerationResult)


def test_a_cuda_error_makes_the_health_check_fail(generator, monkeypatch):
    transformer = generator.runner.model.t2v.transformer
    monkeypatch.setattr(transformer, "forward", raising(RuntimeError("CUDA error: an illegal memory access")))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        outcome(generator)
    with pytest.raises(RuntimeError, match="CUDA error in an earlier job"):
        generator.check_health()


def test_a_generation_past_its_deadline_fails_as_timeout_and_the_replica_takes_the_next(tmp_path_factory):
    generator = Generator(
        AppArgs(model="tiny", device="cpu", cache_dir=tmp_path_factory.getbasetemp() / "faults-cache",
                max_generation_s=0.5)
    )  # fmt: skip
    slow = REQUEST.model_copy(update={"num_inference_steps": 400, "width": 256, "height": 256})

    async def last(request):
        return [event async for event in generator.generate(request)][-1]

    failure = asyncio.run(last(slow))
    assert failure.code == "timeout" and "limit of 0.5 s" in failure.message
    assert isinstance(asyncio.run(last(REQUEST)), GenerationResult)
