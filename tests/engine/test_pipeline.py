"""The pipeline runner on the tiny model, on the CPU: a cancel stops the real pipeline at the end
of its step, the same seed gives the same bytes (the determinism the API's `seed` promises;
checked here, not through HTTP), and what it does where its GPU runs out of memory or is gone
(CUDA's calls replaced: there is no GPU here)."""

import threading

import pytest
import torch
from support.service import SMALL

from serve_app.config import PipelineOptions
from serve_app.engine.errors import GenerationCancelled, GpuOutOfMemory
from serve_app.engine.model import load_model
from serve_app.engine.pipeline import PipelineRunner
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, Progress

# The tiny pipeline runs here: seconds a test, not part of `make test-fast`.
pytestmark = pytest.mark.model

REQUEST = GenerationRequest(
    prompt="a lantern", negative_prompt=DEFAULT_NEGATIVE_PROMPT, guidance_scale=5.0, fps=24, seed=7, model="tiny",
    shift=3.0, **SMALL,
)  # fmt: skip


@pytest.fixture(scope="module")
def runner(tiny_cache) -> PipelineRunner:
    return PipelineRunner(load_model("tiny", torch.device("cpu"), tiny_cache, PipelineOptions()))


def test_a_cancel_stops_the_pipeline_at_the_end_of_the_step(runner):
    cancel = threading.Event()
    reported: list[int] = []

    def report(progress: Progress) -> None:
        reported.append(progress.step)
        if progress.step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        runner.run(REQUEST.model_copy(update={"num_inference_steps": 10}), report, cancel)
    # Step 3 ran (a step is not interrupted midway) and found the cancel: nothing after it.
    assert reported == [1, 2]


def test_the_same_seed_gives_the_same_bytes_and_another_seed_others(runner):
    first, again = runner.run(REQUEST), runner.run(REQUEST)
    other = runner.run(REQUEST.model_copy(update={"seed": 8}))
    assert first.video_mp4 == again.video_mp4 and first.thumbnail_jpeg == again.thumbnail_jpeg
    assert other.video_mp4 != first.video_mp4


@pytest.fixture
def on_a_gpu(runner, monkeypatch) -> list[str]:
    """The runner as a GPU replica's, CUDA's calls recorded: the names of those made."""
    calls: list[str] = []
    monkeypatch.setattr(runner, "on_gpu", True)
    for name in ("reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, lambda device, name=name: calls.append(name))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    return calls


def test_out_of_gpu_memory_frees_the_cache_and_is_raised_as_gpu_out_of_memory(runner, on_a_gpu, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "denoise", out_of_memory)
    with pytest.raises(GpuOutOfMemory, match="Tried to allocate"):
        runner.run(REQUEST)
    assert on_a_gpu[0] == "reset_peak_memory_stats" and on_a_gpu[-1] == "empty_cache"


def test_a_gpu_that_is_gone_fails_the_health_check(runner, on_a_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    runner.check_health()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="GPU is gone"):
        runner.check_health()
