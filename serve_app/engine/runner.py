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
    on_gpu: bool
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


def make_runner(args: AppArgs, spec: ModelSpec) -> Runner:
    """The runner of the served model `spec`."""
    if spec.checkpoint == "simulated":
        from serve_app.engine.simulator import SimulatedRunner

        return SimulatedRunner(args.simulated_time_scale, spec.id)
    from serve_app.common.metrics import AdapterMetrics
    from serve_app.common.outbound import OutboundPolicy
    from serve_app.engine.adapters import Adapters
    from serve_app.engine.lora_files import LoraFiles, LoraPolicy
    from serve_app.engine.model import load_model, resolve_device
    from serve_app.engine.pipeline import PipelineRunner

    device = resolve_device(args.device)
    model = load_model(spec.checkpoint, device, args.cache_dir, args.pipeline_options, spec.revision)
    policy = LoraPolicy(
        max_bytes=int(args.max_lora_mb * 2**20),
        cache_bytes=int(args.lora_cache_gb * 2**30),
        fetch_timeout_s=args.lora_fetch_timeout_s,
    )
    files = LoraFiles(args.cache_dir, policy, OutboundPolicy(tuple(args.url_allowlist), tuple(args.url_ports)))
    adapters = Adapters(model.t2v, files, args.max_loras_per_replica, AdapterMetrics(spec.id), model.lora_slots)
    return PipelineRunner(model, spec, adapters)
