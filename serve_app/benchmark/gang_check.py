"""The GPU check's sections for a replica of several GPUs (`--gpus N`): N processes on one machine,
one GPU each (CPU processes over gloo with `--device cpu`), the same ones for every split; in each
split, each rank built and split as a gang's rank is (`engine/parallel.py`), timing the denoising
steps of the same request. No Ray, as for the rest of the check."""

import gc
import multiprocessing
from multiprocessing.process import BaseProcess
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


class Ranks:
    """The processes of a gang's `world` ranks, started at the first split measured and kept for
    the next ones (each process pays for torch's imports and a CUDA context once); a split that
    fails ends them, so the next starts afresh. A context manager: leaving it ends them."""

    def __init__(self, model: str, device: str, size: str, steps: int, world: int) -> None:
        self.job = (model, device, size, steps)
        self.world = world
        self.context = multiprocessing.get_context("spawn")  # a fresh CUDA context in each rank
        self.processes: list[BaseProcess] = []
        self.splits: list[multiprocessing.Queue[ParallelDegrees | None]] = []

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def measure(self, degrees: ParallelDegrees) -> dict[str, Any]:
        """Rank 0's figures for one split: seconds a step, and its latents (on the host)."""
        if degrees.world != self.world:
            raise ValueError(f"a split of {degrees.world} ranks, measured on {self.world}")
        if not self.processes:
            self._start()
        for split in self.splits:
            split.put(degrees)
        try:
            outcome: dict[str, Any] = self.results.get(timeout=RESULT_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if "error" in outcome:
            self.close()  # its ranks may be out of step
            raise RuntimeError(outcome["error"])
        return {**outcome, "latents": torch.from_numpy(outcome["latents"])}

    def _start(self) -> None:
        # Held here: a queue collected before a child unpickles it is gone for the child.
        self.results, self.port = self.context.Queue(), self.context.Queue()
        self.splits = [self.context.Queue() for _ in range(self.world)]
        self.processes = [
            self.context.Process(target=_rank, args=(rank, *self.job, self.splits[rank], self.port, self.results))
            for rank in range(self.world)
        ]
        for process in self.processes:
            process.start()

    def close(self) -> None:
        for split in self.splits:
            split.put(None)
        for process in self.processes:
            process.join(60)
            if process.is_alive():
                process.kill()
        self.processes, self.splits = [], []


def _rank(
    rank: int,
    model: str,
    device: str,
    size: str,
    steps: int,
    splits: "multiprocessing.Queue[ParallelDegrees | None]",
    port: "multiprocessing.Queue[int]",
    results: "multiprocessing.Queue[dict[str, Any]]",
) -> None:
    """Measure each split the parent sends, until it sends None."""
    target = resolve_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(rank)
    args = AppArgs.model_validate({"model": model, "device": device, "cache_dir": BENCHMARK_CACHE, "warmup_size": size})
    spec = ModelSpec(id=model, checkpoint=model)
    width, height, frames = (int(side) for side in size.split("x"))
    generation = request(width, height, frames, steps)
    while (degrees := splits.get()) is not None:
        try:
            # Rank 0 holds each split's meeting point on a free port, and tells the others.
            store = parallel.rendezvous(LOOPBACK, 0 if rank == 0 else port.get(), degrees.world, leader=rank == 0)
            if rank == 0:
                for _ in range(degrees.world - 1):
                    port.put(store.port)
            joined = parallel.join(store, rank, degrees, target)
            # Built again for each split: a split changes the model it is given.
            runner = parallel.RankRunner(build(args, model == RANDOM_WEIGHTS), spec, joined)
            timed_denoising(runner, generation)  # the first run pays the one-time costs (NCCL's, the kernels')
            step_s, latents = timed_denoising(runner, generation)
            if rank == 0:
                # As an array, pickled whole: a tensor would travel as shared memory, gone once this rank frees it.
                latents_array = latents.float().cpu().numpy()
                results.put({"step_s": step_s, "latents": latents_array, "plan": str(runner.model.plan)})
            del runner  # before the next split's model is built
            gc.collect()
            if target.type == "cuda":
                torch.cuda.empty_cache()
            parallel.leave()
        except Exception as exc:  # the parent waits on rank 0's answer: give it one
            if rank == 0:
                results.put({"error": f"{type(exc).__name__}: {exc}"})
            raise
