"""Speed and memory of one generation, stage by stage, beside the hardware's limit.

    python -m serve_app.benchmark --model tiny --size 64x64 --frames 25 --steps 4      (CPU)
    python -m serve_app.benchmark --random-weights --size 1280x704 --frames 121 --steps 50 \\
        --arg compile=regional --json h100-regional.json                                (GPU)

`--random-weights` builds full-size modules from the real Wan2.2-TI2V-5B configs with random
weights, directly on the device (no download: speed and memory do not depend on the values).
`--arg NAME=VALUE` sets any app argument (cfg_batch, attention_backend, compile, vae_tiling,
memory_mode, ...), so each optimisation is measured exactly as the service runs it.

It prints seconds for text encoding, per denoising step, VAE decoding, the copy to the host and
MP4 encoding; the peak GPU memory; the transformer FLOPs per step, counted by PyTorch's FLOP
counter on a shape-only (meta) copy of the transformer; the TFLOP/s achieved while denoising; and
the ratio of the denoising time to its floor, the FLOPs at the matrix-multiply peak that it
measures on the same device.

    python -m serve_app.benchmark --memory-model small.json medium.json large.json

fits the memory model to GPU runs at several sizes: the largest `max_video_pixels` of each GPU
class.
"""

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from serve_app.config import AppArgs
from serve_app.model import LoadedModel, load_model, prepare_model, resolve_device
from serve_app.pipeline import PipelineRunner
from serve_app.schemas import DEFAULT_NEGATIVE_PROMPT, GenerationRequest

# The configs of Wan-AI/Wan2.2-TI2V-5B-Diffusers (transformer/, vae/, text_encoder/ config.json).
TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "in_channels": 48,
    "out_channels": 48,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 14336,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
VAE_CONFIG = {
    "base_dim": 160,
    "decoder_base_dim": 256,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
    "latents_mean": [0.0] * 48,
    "latents_std": [1.0] * 48,
}
TEXT_ENCODER_CONFIG = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dense_act_fn": "gelu_new",
    "is_gated_act": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
BENCHMARK_CACHE = Path(tempfile.gettempdir()) / "wan-benchmark"  # where `tiny` is built
TEXT_TOKENS = 512  # prompts are padded to it (pipeline.MAX_SEQUENCE_LENGTH)
# GPU classes the memory model sizes `max_video_pixels` for, by memory.
GPU_CLASSES_GIB = {"24 GB (RTX 4090, L4)": 24, "48 GB (L40, L40S)": 48, "80 GB (A100, H100)": 80, "141 GB (H200)": 141}
# What PyTorch's allocator cannot use of a card: the CUDA context, fragmentation.
USABLE_SHARE = 0.9


def random_pipeline(device: torch.device):
    """Wan2.2-TI2V-5B at full size with random weights, created on `device` in the service's
    dtypes (bf16 transformer and text encoder on a GPU, fp32 VAE)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from serve_app.tiny import build_tokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    default = torch.get_default_dtype()
    try:
        with torch.device(device):
            torch.set_default_dtype(dtype)
            transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
            text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG))
            torch.set_default_dtype(torch.float32)
            vae = AutoencoderKLWan(**VAE_CONFIG)
    finally:
        torch.set_default_dtype(default)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0, num_train_timesteps=1000
    )
    return WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        expand_timesteps=True,
    )


def transformer_flops(config: dict, width: int, height: int, frames: int, batch: int = 1) -> int:
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
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * size**3 / best / 1e12


def build(opts: argparse.Namespace, args: AppArgs) -> LoadedModel:
    device = resolve_device(args.device)
    if opts.random_weights:
        return prepare_model("random full-size Wan2.2-TI2V-5B", random_pipeline(device), device, args.pipeline_options)
    return load_model(args.model, device, args.cache_dir, args.pipeline_options)


def app_args(opts: argparse.Namespace) -> AppArgs:
    """The app arguments the benchmark runs with: --model, --device and every --arg NAME=VALUE."""
    overrides = {}
    for item in opts.arg:
        name, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"--arg {item!r}: expected NAME=VALUE, e.g. compile=regional")
        overrides[name] = yaml.safe_load(value)
    return AppArgs(model=opts.model, device=opts.device, cache_dir=BENCHMARK_CACHE, **overrides)


def measure(opts: argparse.Namespace, args: AppArgs) -> dict:
    width, height = (int(side) for side in opts.size.split("x"))
    started = time.perf_counter()
    model = build(opts, args)
    runner = PipelineRunner(model)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    runner.warm_up(f"{width}x{height}x{opts.frames}")
    warmup_s = time.perf_counter() - started

    request = GenerationRequest(
        prompt="a red fox running through fresh snow, cinematic", negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        width=width, height=height, num_frames=opts.frames, num_inference_steps=opts.steps,
        guidance_scale=opts.guidance_scale, fps=24, seed=0, speed_mode=opts.speed_mode,
    )  # fmt: skip
    runs = [runner.run(request) for _ in range(opts.runs)]
    stages = {
        name: statistics.median(getattr(run.timings, name) for run in runs)
        for name in ("text_encoding_s", "denoising_s", "decoding_s", "transfer_s", "encoding_s")
    }
    passes = 2 if opts.guidance_scale > 1 else 1
    flops_per_step = passes * transformer_flops(model.t2v.transformer.config, width, height, opts.frames)
    peak = matmul_peak_tflops(model.device)
    step_s = stages["denoising_s"] / opts.steps
    floor_s = flops_per_step * opts.steps / (peak * 1e12)
    peaks = [run.peak_gpu_memory_bytes for run in runs if run.peak_gpu_memory_bytes is not None]
    return {
        "model": model.name,
        "device": runner.description["device"],
        "options": model.options,
        "speed_mode": opts.speed_mode,
        "size": f"{width}x{height}x{opts.frames}",
        "steps": opts.steps,
        "guidance_passes_per_step": passes,
        "runs": opts.runs,
        "load_s": round(load_s, 2),
        "warmup_s": round(warmup_s, 2),
        **{name: round(value, 4) for name, value in stages.items()},
        "step_s": round(step_s, 4),
        "total_s": round(sum(stages.values()), 3),
        "peak_gpu_memory_gib": round(max(peaks) / 2**30, 2) if peaks else None,
        "transformer_flops_per_step": flops_per_step,
        "achieved_tflops": round(flops_per_step / step_s / 1e12, 3),
        "matmul_peak_tflops": round(peak, 2),
        "denoising_floor_s": round(floor_s, 4),
        "ratio_to_floor": round(stages["denoising_s"] / floor_s, 2),
    }


def memory_model(runs: list[dict]) -> dict:
    """Peak memory as fixed + per-voxel x (width x height x frames), fitted to benchmark runs of one
    configuration at several sizes; and from it, the largest `max_video_pixels` of each GPU class."""
    points = sorted(
        (math.prod(int(side) for side in run["size"].split("x")), run["peak_gpu_memory_gib"])
        for run in runs
        if run.get("peak_gpu_memory_gib")
    )
    if len({volume for volume, _ in points}) < 2:
        raise ValueError("the memory model needs GPU runs (with a peak memory) at two sizes at least")
    slope, fixed = statistics.linear_regression([v for v, _ in points], [gib for _, gib in points])
    return {
        "fixed_gib": round(fixed, 2),
        "gib_per_megavoxel": round(slope * 1e6, 4),
        "max_video_pixels": {
            name: max(0, int((gib * USABLE_SHARE - fixed) / slope)) for name, gib in GPU_CLASSES_GIB.items()
        },
    }


def table(figures: dict) -> str:
    rows = [
        ("model", figures["model"]),
        ("device", figures["device"]),
        (
            "options",
            ", ".join(f"{k}={v}" for k, v in figures["options"].items()) + f", speed_mode={figures['speed_mode']}",
        ),
        ("video", f"{figures['size']}, {figures['steps']} steps, {figures['guidance_passes_per_step']} passes a step"),
        ("load / warm-up", f"{figures['load_s']} s / {figures['warmup_s']} s"),
        ("text encoding", f"{figures['text_encoding_s']} s"),
        ("denoising", f"{figures['denoising_s']} s ({figures['step_s']} s a step)"),
        ("VAE decoding", f"{figures['decoding_s']} s"),
        ("copy to host", f"{figures['transfer_s']} s"),
        ("MP4 encoding", f"{figures['encoding_s']} s"),
        ("total", f"{figures['total_s']} s"),
        ("peak GPU memory", f"{figures['peak_gpu_memory_gib']} GiB" if figures["peak_gpu_memory_gib"] else "n/a"),
        ("transformer FLOPs a step", f"{figures['transformer_flops_per_step'] / 1e12:.4g} TFLOP"),
        ("achieved while denoising", f"{figures['achieved_tflops']} TFLOP/s"),
        ("matmul peak (measured)", f"{figures['matmul_peak_tflops']} TFLOP/s"),
        ("denoising floor", f"{figures['denoising_floor_s']} s"),
        ("ratio to the floor", f"{figures['ratio_to_floor']}x"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, a local checkpoint folder or a hub id")
    parser.add_argument("--random-weights", action="store_true", help="full-size modules, random weights")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--size", default="1280x704", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--speed-mode", default="quality", choices=("quality", "fast"))
    parser.add_argument("--runs", type=int, default=1, help="generations measured (median reported)")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="an app argument")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--memory-model", nargs="+", type=Path, metavar="RUN.json",
        help="instead of measuring: fit the memory model to the JSON of earlier GPU runs at several sizes",
    )  # fmt: skip
    opts = parser.parse_args(argv)
    if opts.memory_model:
        fitted = memory_model([json.loads(path.read_text()) for path in opts.memory_model])
        print(json.dumps(fitted, indent=2))
        return
    try:
        args = app_args(opts)
    except (ValueError, ValidationError) as exc:
        parser.error(str(exc))
    figures = measure(opts, args)
    print(table(figures))
    if opts.json:
        opts.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
