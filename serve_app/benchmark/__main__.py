"""Speed and memory of one generation, stage by stage, beside the hardware's limit.

    python -m serve_app.benchmark --model tiny --size 64x64 --frames 25 --steps 4      (CPU)
    python -m serve_app.benchmark --random-weights --size 1280x704 --frames 121 --steps 50 \\
        --arg compile=regional --json h100-regional.json                                (GPU)
    python -m serve_app.benchmark --plan --size 1280x704 --frames 121 --gpu-gib 44     (anywhere)

`--random-weights` builds full-size modules from the real Wan2.2-TI2V-5B configs with random
weights, directly on the device (no download: speed and memory do not depend on the values).
`--arg NAME=VALUE` sets any app argument (dtype, cfg_batch, attention_backend, compile,
vae_tiling, memory_mode, ...), so each option is measured exactly as the service runs it.

It prints seconds for text encoding, per denoising step, VAE decoding, the copy to the host and
MP4 encoding; the peak GPU memory beside the memory model's prediction; the plan and each module's
dtypes; the transformer FLOPs per step, counted by PyTorch's FLOP counter on a shape-only (meta)
copy of the transformer; the TFLOP/s achieved while denoising; and the ratio of the denoising time
to its floor, the FLOPs at the matrix-multiply peak that it measures on the same device.

`--plan` builds nothing: it traces the full-size modules on the meta device and prints the memory
plan a replica with `--gpu-gib` GiB free would choose for the size, each stage's predicted peak,
and the largest video the plan fits.
"""

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from serve_app.benchmark.measure import (
    BENCHMARK_CACHE,
    build,
    dtypes,
    matmul_peak_tflops,
    request,
    transformer_flops,
)
from serve_app.capacity import GiB
from serve_app.config import AppArgs
from serve_app.engine.full_size import full_size_pipeline
from serve_app.engine.model import candidate_plans, memory_tracer, resolve_dtype, usable_bytes
from serve_app.engine.pipeline import PipelineRunner
from serve_app.messages import StageTimings

STAGES = tuple(StageTimings.model_fields)


def app_args(opts: argparse.Namespace) -> AppArgs:
    """The app arguments the benchmark runs with: --model, --device and every --arg NAME=VALUE."""
    overrides = {}
    for item in opts.arg:
        name, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"--arg {item!r}: expected NAME=VALUE, e.g. compile=regional")
        overrides[name] = yaml.safe_load(value)
    return AppArgs(model=opts.model, device=opts.device, cache_dir=BENCHMARK_CACHE, **overrides)


def measure(opts: argparse.Namespace, args: AppArgs) -> dict[str, Any]:
    width, height = (int(side) for side in opts.size.split("x"))
    started = time.perf_counter()
    model = build(args, opts.random_weights)
    runner = PipelineRunner(model)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    runner.warm_up(f"{width}x{height}x{opts.frames}")
    warmup_s = time.perf_counter() - started

    generation = request(width, height, opts.frames, opts.steps, speed_mode=opts.speed_mode).model_copy(
        update={"guidance_scale": opts.guidance_scale}
    )
    runs = [runner.run(generation) for _ in range(opts.runs)]
    stages = {name: statistics.median(getattr(run.timings, name) for run in runs) for name in STAGES}
    guidance = opts.guidance_scale > 1
    passes = 2 if guidance else 1
    flops_per_step = passes * transformer_flops(model.t2v.transformer.config, width, height, opts.frames)
    peak = matmul_peak_tflops(model.device)
    step_s = stages["denoising_s"] / opts.steps
    floor_s = flops_per_step * opts.steps / (peak * 1e12)
    peaks = [run.peak_gpu_memory_bytes for run in runs if run.peak_gpu_memory_bytes is not None]
    capacity = model.capacity
    predicted = capacity.peak_bytes(width, height, opts.frames, guidance, image=False) if capacity else None
    return {
        "model": model.name,
        "device": runner.description["device"],
        "options": model.options,
        "plan": str(model.plan),
        "dtypes": dtypes(model),
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
        "peak_gpu_memory_gib": round(max(peaks) / GiB, 2) if peaks else None,
        "predicted_peak_gib": round(predicted / GiB, 2) if predicted else None,
        "transformer_flops_per_step": flops_per_step,
        "achieved_tflops": round(flops_per_step / step_s / 1e12, 3),
        "matmul_peak_tflops": round(peak, 2),
        "denoising_floor_s": round(floor_s, 4),
        "ratio_to_floor": round(stages["denoising_s"] / floor_s, 2),
    }


def plan(opts: argparse.Namespace, args: AppArgs) -> dict[str, Any]:
    """The memory plan a replica with `--gpu-gib` GiB free would choose, from the full-size
    modules traced on the meta device."""
    width, height = (int(side) for side in opts.size.split("x"))
    options = dataclasses.replace(args.pipeline_options, warmup_size=f"{width}x{height}x{opts.frames}")
    # The dtypes of a GPU replica.
    pipe = full_size_pipeline(torch.device("meta"), resolve_dtype(options.dtype, torch.device("cuda")))
    tracer = memory_tracer(pipe, options)
    budget = usable_bytes(int(opts.gpu_gib * GiB))
    rows, chosen = [], None
    for candidate in candidate_plans(options):
        capacity = tracer.capacity(candidate, budget)
        fits = capacity.fits(width, height, opts.frames, guidance=True, image=True)
        chosen = chosen or (capacity if fits else None)
        rows.append({
            "plan": str(candidate),
            "peak_gib": round(capacity.peak_bytes(width, height, opts.frames, True, True) / GiB, 2),
            "fits": fits,
        })  # fmt: skip
    figures = {
        "size": f"{width}x{height}x{opts.frames}",
        "gpu_gib_free": opts.gpu_gib,
        "usable_gib": round(budget / GiB, 2),
        "weights_gib": {name: round(size / GiB, 2) for name, size in tracer.weights.items()},
        "plans": rows,
        "chosen": str(chosen.plan) if chosen else None,
    }
    if chosen:
        figures["stages_gib"] = {
            stage: round(fit.bytes(width, height, opts.frames) / GiB, 2) for stage, fit in chosen.stages.items()
        }
        figures["largest_frames_at_size"] = chosen.largest_frames(width, height, guidance=True, image=True)
    return figures


def table(rows: list[tuple[str, object]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def measured_table(figures: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in figures["options"].items()) + f", speed_mode={figures['speed_mode']}"
    memory = f"{figures['peak_gpu_memory_gib']} GiB" if figures["peak_gpu_memory_gib"] else "n/a"
    return table([
        ("model", figures["model"]),
        ("device", figures["device"]),
        ("options", options),
        ("plan", figures["plan"]),
        ("video", f"{figures['size']}, {figures['steps']} steps, {figures['guidance_passes_per_step']} passes a step"),
        ("load / warm-up", f"{figures['load_s']} s / {figures['warmup_s']} s"),
        ("text encoding", f"{figures['text_encoding_s']} s"),
        ("denoising", f"{figures['denoising_s']} s ({figures['step_s']} s a step)"),
        ("VAE decoding", f"{figures['decoding_s']} s"),
        ("copy to host", f"{figures['transfer_s']} s"),
        ("MP4 encoding", f"{figures['encoding_s']} s"),
        ("total", f"{figures['total_s']} s"),
        ("peak GPU memory", f"{memory} (predicted: {figures['predicted_peak_gib'] or 'n/a'} GiB)"),
        ("transformer FLOPs a step", f"{figures['transformer_flops_per_step'] / 1e12:.4g} TFLOP"),
        ("achieved while denoising", f"{figures['achieved_tflops']} TFLOP/s"),
        ("matmul peak (measured)", f"{figures['matmul_peak_tflops']} TFLOP/s"),
        ("denoising floor", f"{figures['denoising_floor_s']} s"),
        ("ratio to the floor", f"{figures['ratio_to_floor']}x"),
    ])  # fmt: skip


def plan_table(figures: dict[str, Any]) -> str:
    rows = [
        ("video", f"{figures['size']}, with guidance and a reference image"),
        ("GPU memory", f"{figures['gpu_gib_free']} GiB free, {figures['usable_gib']} GiB usable"),
        ("weights", ", ".join(f"{name} {gib} GiB" for name, gib in figures["weights_gib"].items())),
        *(
            (f"  {row['plan']}", f"{row['peak_gib']} GiB{'' if row['fits'] else ' (does not fit)'}")
            for row in figures["plans"]
        ),  # fmt: skip
        ("chosen", figures["chosen"] or "none fits"),
    ]
    if figures["chosen"]:
        rows += [(f"  {stage}", f"{gib} GiB") for stage, gib in figures["stages_gib"].items()]
        rows.append(("largest at this size", f"{figures['largest_frames_at_size']} frames"))
    return table(rows)


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
    parser.add_argument("--plan", action="store_true", help="print the memory plan for --gpu-gib; build nothing")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="with --plan: the GPU memory free, GiB")
    opts = parser.parse_args(argv)
    try:
        args = app_args(opts)
    except (ValueError, ValidationError) as exc:
        parser.error(str(exc))
    figures = plan(opts, args) if opts.plan else measure(opts, args)
    print(plan_table(figures) if opts.plan else measured_table(figures))
    if opts.json:
        opts.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
