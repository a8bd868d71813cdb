"""What a Generator replica runs requests with, chosen in one place: the diffusers pipeline on a
checkpoint (`tiny` included), or the capacity simulator (`model: simulated`). Nothing else asks
which one it has."""

import threading
from collections.abc import Callable
from typing import Protocol

from serve_app.capacity import Capacity
from serve_app.config import AppArgs, ModelSpec
from serve_app.messages import GenerationRequest, GenerationResult, Progress


class Runner(Protocol):
    description: dict[str, object]  # how it runs: model, device, dtype, plan, options; reported with every job
    capacity: Capacity | None  # what its GPU memory allows; None where memory is no limit

    def warm_up(self, size: str) -> None:
        """Pay one-time costs (kernel selection, compilation) before the first job."""

    def run(
        self,
        request: GenerationRequest,
        report: Callable[[Progress], None] = ...,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Generate one video in the calling thread, reporting each step (by default to no one);
        `cancel` stops it at the end of the current step (raising GenerationCancelled)."""

    def check_health(self) -> None:
        """Raise if it can serve no more (its GPU is gone, a gang's rank does not answer); called
        on a thread by the replica's health check."""


def make_runner(args: AppArgs, spec: ModelSpec) -> Runner:
    """The runner of the served model `spec`: with `gpus_per_replica` > 1, a gang's (`gang.py`)."""
    if spec.checkpoint == "simulated":
        from serve_app.engine.simulator import SimulatedRunner

        return SimulatedRunner(args.simulated_time_scale, spec.id)
    if args.gpus_per_replica > 1:
        from serve_app.engine.gang import GangRunner

        return GangRunner(args, spec)
    from serve_app.common.metrics import AdapterMetrics
    from serve_app.engine.adapters import lora_adapters
    from serve_app.engine.model import load_model, resolve_device
    from serve_app.engine.pipeline import PipelineRunner

    device = resolve_device(args.device)
    model = load_model(spec.checkpoint, device, args.cache_dir, args.pipeline_options, spec.revision)
    return PipelineRunner(model, spec, lora_adapters(args, model.t2v, model.lora_slots, AdapterMetrics(spec.id)))
