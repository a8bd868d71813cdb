"""The GPU check's sections for a replica of several GPUs (`--gpus N`): N processes on one machine,
one GPU each (CPU processes over gloo with `--device cpu`), each rank built and split as a gang's
rank is (`engine/parallel.py`), timing the denoising steps of the same request. No Ray, as for the
rest of the check."""

import multiprocessing
from typing import Any

import torch

from serve_app.benchmark.measure import BENCHMARK_CACHE, RANDOM_WEIGHTS, build, request, timed_denoising
from serve_app.config import AppArgs, ModelSpec, ParallelDegrees
from serve_app.engine import parallel
from serve_app.engine.model import resolve_device

LOOPBACK = "127.0.0.1"
# Rank 0's result, a whole section's ranks included (building the model takes most of it).
RESULT_TIMEOUT_S = 900


def splits(gpus: int) -> dict[str, ParallelDegrees]:
    """The sections' degrees: `auto`'s choice for a guided model (CFG first), and Ulysses over all."""
    return {
        "gang_auto": AppArgs.model_validate({"gpus_per_replica": gpus}).degrees(
            ModelSpec(id="benchmark", checkpoint=RANDOM_WEIGHTS)
        ),
        "gang_ulysses": ParallelDegrees(ulysses=gpus),
    }


def measure(model: str, device: str, size: str, steps: int, degrees: ParallelDegrees) -> dict[str, Any]:
    """Rank 0's figures for one split: seconds a step, and its latents (on the host)."""
    context = multiprocessing.get_context("spawn")  # a fresh CUDA context in each rank
    results, port = context.Queue(), context.Queue()
    ranks = [
        context.Process(target=_rank, args=(rank, model, device, size, steps, degrees, port, results))
        for rank in range(degrees.world)
    ]
    for process in ranks:
        process.start()
    try:
        outcome: dict[str, Any] = results.get(timeout=RESULT_TIMEOUT_S)
    finally:
        for process in ranks:
            process.join(60)
            if process.is_alive():
                process.kill()
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    return {**outcome, "latents": torch.from_numpy(outcome["latents"])}


def _rank(
    rank: int,
    model: str,
    device: str,
    size: str,
    steps: int,
    degrees: ParallelDegrees,
    port: "multiprocessing.Queue[int]",
    results: "multiprocessing.Queue[dict[str, Any]]",
) -> None:
    try:
        target = resolve_device(device)
        if target.type == "cuda":
            torch.cuda.set_device(rank)
        args = AppArgs.model_validate(
            {"model": model, "device": device, "cache_dir": BENCHMARK_CACHE, "warmup_size": size}
        )
        # Rank 0 holds the meeting point on a free port, and tells the others.
        store = parallel.rendezvous(LOOPBACK, 0 if rank == 0 else port.get(), degrees.world, leader=rank == 0)
        if rank == 0:
            for _ in range(degrees.world - 1):
                port.put(store.port)
        joined = parallel.join(store, rank, degrees, target)
        spec = ModelSpec(id=model, checkpoint=model)
        runner = parallel.RankRunner(build(args, model == RANDOM_WEIGHTS), spec, joined)
        width, height, frames = (int(side) for side in size.split("x"))
        generation = request(width, height, frames, steps)
        timed_denoising(runner, generation)  # the first run pays the one-time costs (NCCL's, the kernels')
        step_s, latents = timed_denoising(runner, generation)
        if rank == 0:
            # As an array, pickled whole: a tensor would travel as shared memory, gone when this process ends.
            results.put({"step_s": step_s, "latents": latents.float().cpu().numpy(), "plan": str(runner.model.plan)})
        parallel.leave()
    except Exception as exc:  # the parent waits on rank 0's answer: give it one
        if rank == 0:
            results.put({"error": f"{type(exc).__name__}: {exc}"})
        raise
