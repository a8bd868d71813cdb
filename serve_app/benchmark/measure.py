"""What the benchmarks measure with, shared by the one-configuration benchmark and the GPU check:
building the pipeline as a replica does, the transformer's FLOPs, the device's matrix-multiply
peak, the dtypes of the loaded modules, and a timed denoising."""

import collections
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from serve_app.config import AppArgs
from serve_app.engine.full_size import full_size_pipeline
from serve_app.engine.model import (
    LoadedModel,
    load_model,
    prepare_model,
    resolve_device,
    resolve_dtype,
    use_expandable_segments,
)
from serve_app.engine.pipeline import PipelineRunner
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest

BENCHMARK_CACHE = Path(tempfile.gettempdir()) / "wan-benchmark"  # where `tiny` is built
TEXT_TOKENS = 512  # prompts are padded to it (pipeline.MAX_SEQUENCE_LENGTH)
RANDOM_WEIGHTS = "random full-size Wan2.2-TI2V-5B"


def build(args: AppArgs, random_weights: bool, free_bytes: int | None = None) -> LoadedModel:
    """The model exactly as a replica prepares it: the checkpoint of `args.model`, or with
    `random_weights` the full-size modules (no download), built on the host in the replica's
    dtypes as from_pretrained loads them, then placed by the memory plan, which counts on
    `free_bytes` of GPU memory (default, and always for a checkpoint: what the device has free)."""
    device = resolve_device(args.device)
    options = args.pipeline_options
    if device.type == "cuda":
        use_expandable_segments()
    if random_weights:
        pipe = full_size_pipeline(torch.device("cpu"), resolve_dtype(options.dtype, device))
        return prepare_model(RANDOM_WEIGHTS, pipe, device, options, free_bytes)
    return load_model(args.model, device, args.cache_dir, options)


def request(width: int, height: int, frames: int, steps: int, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        prompt="a red fox running through fresh snow, cinematic", negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        width=width, height=height, num_frames=frames, num_inference_steps=steps, guidance_scale=5.0, fps=24,
        seed=0, **{"model": "benchmark", "shift": 5.0, **fields},
    )  # fmt: skip


def dtypes(model: LoadedModel) -> dict[str, dict[str, int]]:
    """Each module's parameter tensors by dtype, e.g. {"transformer": {"bfloat16": 58, "float32": 11}}."""
    return {
        name: dict(collections.Counter(str(p.dtype).removeprefix("torch.") for p in module.parameters()))
        for name, module in (
            ("transformer", model.t2v.transformer),
            ("text_encoder", model.t2v.text_encoder),
            ("vae", model.t2v.vae),
        )  # fmt: skip
    }


def transformer_flops(config: dict[str, Any], width: int, height: int, frames: int, batch: int = 1) -> int:
    """FLOPs of one transformer call, counted on a meta-device copy (shapes only, no memory, no
    time), with PyTorch's reference attention so that the counter sees its matrix products."""
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel(**config)
        latents = torch.empty(batch, config["in_channels"], (frames - 1) // 4 + 1, height // 16, width // 16)
        text = torch.empty(batch, TEXT_TOKENS, config["text_dim"])
        timestep = torch.empty(batch, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)
    return counter.get_total_flops()


def matmul_peak_tflops(device: torch.device) -> float:
    """The matrix-multiply throughput this device sustains, in the dtype the transformer runs in."""
    size, dtype, repeats = (8192, torch.bfloat16, 20) if device.type == "cuda" else (1024, torch.float32, 5)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        started = clock(device)
        for _ in range(repeats):
            a @ b
        best = min(best, (clock(device) - started) / repeats)
    return 2 * size**3 / best / 1e12


def clock(device: torch.device) -> float:
    """Seconds, once the work queued on `device` is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@torch.inference_mode()
def timed_denoising(runner: PipelineRunner, generation: GenerationRequest) -> tuple[float, torch.Tensor]:
    """Seconds a step (the text encoding excluded) and the latents, for comparing options."""
    device = runner.model.device
    prompts = runner.encode_prompts(generation)
    started = clock(device)
    latents = runner.denoise(generation, prompts)
    return (clock(device) - started) / generation.num_inference_steps, latents
