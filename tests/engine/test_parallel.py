"""One video over two ranks (`engine/parallel.py`), as two gloo processes on the CPU, on the tiny
model: Ulysses (the sequence split over the ranks) and CFG parallel (guidance's two passes on two
ranks) denoise to the latents of one process, for the same request and seed.

Tolerance: Ulysses runs every attention head whole on one rank, and every other layer on whole
tokens, so each value is computed by the same operations as in one process, but the matrix
products see half the rows: a CPU BLAS may block (and so sum) them otherwise, which changes the
last bits. CFG parallel computes each pass alone (a batch of one) where one process batches
them (two): the same. So float32 latents agree to within 1e-5 of their scale, not bit for bit
(measured here: Ulysses 0.0, CFG parallel 3.7e-6 on latents of scale 4.3). A LoRA adapter
(`tiny-style`) applies on every rank as in one process."""

import multiprocessing
import threading
from pathlib import Path

import pytest
import torch
from support.media import png_bytes
from support.service import SMALL

from serve_app.benchmark.local_cluster import LOOPBACK, free_port
from serve_app.common.outbound import OutboundPolicy
from serve_app.config import TINY_STYLE, ModelSpec, ParallelDegrees, PipelineOptions
from serve_app.engine.adapters import Adapters
from serve_app.engine.lora_files import LoraFiles, LoraPolicy
from serve_app.engine.model import LoadedModel, load_model
from serve_app.engine.pipeline import PipelineRunner
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, LoraChoice, LoraSource

pytestmark = pytest.mark.model

REQUEST = GenerationRequest(
    prompt="a lantern", negative_prompt=DEFAULT_NEGATIVE_PROMPT, guidance_scale=5.0, fps=24, seed=7, model="tiny",
    shift=3.0, **SMALL,
)  # fmt: skip
STYLE = LoraChoice(path=TINY_STYLE, scale=1.0, source=LoraSource(kind="tiny", location=TINY_STYLE))
# Text to video, text and image (the first frame given: both pipelines share the transformer), and
# text to video with an adapter.
REQUESTS = {
    "t2v": REQUEST,
    "ti2v": REQUEST.model_copy(update={"image_png": png_bytes((64, 64))}),
    "lora": REQUEST.model_copy(update={"loras": (STYLE,)}),
}
SPLITS = {"ulysses": ParallelDegrees(ulysses=2), "cfg": ParallelDegrees(cfg=2)}
TOLERANCE = 1e-5


def adapters(model: LoadedModel, cache: Path) -> Adapters:
    files = LoraFiles(cache, LoraPolicy(max_bytes=2**20, cache_bytes=2**24, fetch_timeout_s=5), OutboundPolicy())
    return Adapters(model.t2v, files, max_loaded=1)


def denoise(runner: PipelineRunner, request: GenerationRequest) -> torch.Tensor:
    """The request's latents, its adapters active (as `PipelineRunner.run` makes them)."""
    assert runner.adapters is not None
    runner.adapters.activate(request.loras)
    with torch.inference_mode():
        prompts = runner.encode_prompts(request)
        return runner.denoise(request, prompts, runner.step_end(lambda _: None, threading.Event()))


def denoise_on_rank(rank: int, ports: dict[str, int], cache: Path, out: "multiprocessing.Queue") -> None:
    """One rank: for each split, join a gang of two, denoise REQUEST, put (split, rank, latents)."""
    from serve_app.engine import parallel

    for name, degrees in SPLITS.items():
        store = parallel.rendezvous(LOOPBACK, ports[name], degrees.world, leader=rank == 0)
        joined = parallel.join(store, rank, degrees, torch.device("cpu"))
        model = load_model("tiny", torch.device("cpu"), cache, PipelineOptions())
        runner = parallel.RankRunner(model, ModelSpec(id="tiny", checkpoint="tiny"), joined, adapters(model, cache))
        for mode, request in REQUESTS.items():
            latents = denoise(runner, request)
            out.put((name, mode, rank, latents.numpy()))  # pickled whole: shared memory would end with this process
        parallel.leave()


@pytest.fixture(scope="module")
def one_process(tiny_cache) -> dict[str, torch.Tensor]:
    model = load_model("tiny", torch.device("cpu"), tiny_cache, PipelineOptions())
    runner = PipelineRunner(model, adapters=adapters(model, tiny_cache))
    latents = {mode: denoise(runner, request) for mode, request in REQUESTS.items()}
    assert not torch.equal(latents["lora"], latents["t2v"])  # the adapter changes the video
    return latents


@pytest.fixture(scope="module")
def two_ranks(tiny_cache, one_process) -> dict[tuple[str, int], torch.Tensor]:
    context = torch.multiprocessing.get_context("spawn")
    out = context.Queue()
    ports = {name: free_port() for name in SPLITS}
    processes = [context.Process(target=denoise_on_rank, args=(rank, ports, tiny_cache, out)) for rank in (0, 1)]
    for process in processes:
        process.start()
    results = {}
    for _ in range(len(SPLITS) * len(REQUESTS) * 2):
        name, mode, rank, latents = out.get(timeout=240)
        results[name, mode, rank] = torch.from_numpy(latents)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    return results


@pytest.mark.parametrize("mode", REQUESTS)
@pytest.mark.parametrize("split", SPLITS)
def test_two_ranks_denoise_to_the_latents_of_one_process(split, mode, one_process, two_ranks):
    expected = one_process[mode]
    for rank in (0, 1):
        latents = two_ranks[split, mode, rank]
        assert latents.shape == expected.shape
        assert (latents - expected).abs().max() <= TOLERANCE * expected.abs().max(), (split, rank)
    # Both ranks hold the very same latents: they stay in step with nothing exchanged but predictions.
    assert torch.equal(two_ranks[split, mode, 0], two_ranks[split, mode, 1])
