"""The pipeline runner on the tiny model, on the CPU: a cancel stops the real pipeline at the end
of its step, and the same seed gives the same bytes (the determinism the API's `seed` promises;
checked here, not through HTTP)."""

import threading

import pytest
import torch
from support.service import SMALL

from serve_app.config import PipelineOptions
from serve_app.engine.errors import GenerationCancelled
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
