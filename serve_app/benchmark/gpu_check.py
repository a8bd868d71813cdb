"""The GPU check: Wan2.2-TI2V-5B at full size with random weights, the replica's own code (no Ray,
no weights, no internet), each speed and memory option measured in one process within a time
budget. It writes one JSON, rewritten after each section so that a run cut short keeps what it
measured; sections that would not fit the budget are recorded as skipped.

    make gpu-wheels                     # here: the wheels a GPU machine's image lacks, into .whl/
    bash benchmarks/gpu_check.sh        # there: installs them, runs this, JSON into benchmarks/results/

    python -m serve_app.benchmark.gpu_check --out DIR [--budget-s 330] [--size 1280x704x121] [--steps 3] \\
        [--gpu-gib N] [--gpus N] [--only SECTION]... [--skip SECTION]...
    python -m serve_app.benchmark.gpu_check --model tiny --device cpu --size 64x64x25 --out DIR  (the CPU test)

Sections, in order, so that one call of at most 6 minutes measures at least the first four: the
default configuration (plan, dtypes, every stage, peak memory beside the memory model's prediction,
TFLOP/s and the ratio to the floor); the memory model against measured peaks at three sizes (and
what the plan refuses or runs out of memory on); compilation, regional then full (the replica's
warm-up time, then the time a step); turbo (FastWan2.2's 3-step DMD recipe on the same weights:
every stage, the decode's share); then guidance one pass at a time; each attention backend that
runs here; fast mode (time a step, blocks skipped); VAE tiling off and on; the text encoder kept on
the GPU or brought there per job; with `--gpus N`, a replica of N GPUs (`gang_check.py`).
`--only SECTION` runs only the sections named, `--skip SECTION` all but those. Speed options are
compared on the latents they make from the same seed (max absolute difference against the
default's).

`--gpu-gib N` caps this process's GPU memory at N GiB (the CUDA allocator's per-process fraction)
and plans for N GiB free, as a replica on a smaller card would: one large GPU measures the plan,
the peaks and the refusals of each class (22, 44, 79: what 24, 48 and 80 GB cards have free). The
speed stays the large GPU's, and the JSON says so.
"""

import argparse
import dataclasses
import datetime
import json
import os
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from serve_app.benchmark import gang_check
from serve_app.benchmark.measure import (
    BENCHMARK_CACHE,
    RANDOM_WEIGHTS,
    build,
    clock,
    dtypes,
    matmul_peak_tflops,
    peak_gib,
    request,
    reset_peak,
    timed_denoising,
    transformer_flops,
)
from serve_app.benchmark.results import ROOT
from serve_app.capacity import GiB
from serve_app.config import AppArgs, CompileMode, ModelSpec, ParallelDegrees
from serve_app.engine.errors import VideoTooLarge
from serve_app.engine.model import (
    LoadedModel,
    decode_to_uint8,
    prepare_model,
    resolve_device,
    use_expandable_segments,
)
from serve_app.engine.parallel import bytes_per_step
from serve_app.engine.pipeline import PipelineRunner
from serve_app.engine.speedups import remove_speedups, set_first_working_backend, set_vae_tiling

ATTENTION_BACKENDS = ("_flash_3", "flash", "_native_cudnn", "_native_flash", "_native_efficient", "native", "sage")
MEMORY_SIZES = ((640, 352, 49), (960, 544, 81), (1280, 704, 121))
FAST_STEPS = 8  # fast mode skips only once consecutive steps are alike
SECTIONS = (
    "default", "memory_model", "compile_regional", "compile_full", "turbo", "cfg_batch_off", "attention_backends",
    "fast_mode", "vae_tiling", "text_encoder", "gang_auto", "gang_ulysses",
)  # fmt: skip


class Check:
    """The figures of one run, written to `path` after every section."""

    def __init__(self, path: Path, budget_s: float, skip: list[str], only: list[str]) -> None:
        self.path = path
        self.deadline = time.monotonic() + budget_s
        self.skip = set(skip)
        self.only = set(only)
        self.figures: dict[str, Any] = {"started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}

    def section(self, name: str, estimate_s: float, run: Callable[[], dict[str, Any]]) -> None:
        """Run a section if its estimated time fits what is left; record its figures or its error."""
        left = self.deadline - time.monotonic()
        if name in self.skip:
            self.skipped(name, "asked for (--skip)")
        elif self.only and name not in self.only:
            self.skipped(name, "not asked for (--only)")
        elif left < estimate_s:
            self.skipped(name, f"about {estimate_s:.0f} s needed, {max(0, left):.0f} s left")
        else:
            started = time.monotonic()
            try:
                self.figures[name] = {**run(), "section_s": round(time.monotonic() - started, 1)}
            except Exception as exc:  # a failing option must not cost the others their figures
                self.figures[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            self._write()

    def skipped(self, name: str, reason: str) -> None:
        self.figures[name] = {"skipped": reason}
        self._write()

    def _write(self) -> None:
        self.path.write_text(json.dumps(self.figures, indent=2))


def run_check(opts: argparse.Namespace) -> Path:
    width, height, frames = (int(side) for side in opts.size.split("x"))
    args = AppArgs(model=opts.model, device=opts.device, cache_dir=BENCHMARK_CACHE, warmup_size=opts.size)
    started = time.monotonic()
    device = resolve_device(opts.device)
    # What every plan of this run counts on, read once before anything is placed (as a replica
    # does), so that the compiled sections' plans do not count the weights already placed.
    free = planned_free_bytes(device, opts.gpu_gib)
    random_weights = opts.model == RANDOM_WEIGHTS
    if opts.gpu_gib and not random_weights:
        raise ValueError("--gpu-gib plans the random full-size weights only")
    model = build(args, random_weights, free_bytes=free if random_weights else None)
    runner = PipelineRunner(model)
    gpu = str(runner.description["device"])
    cap = f"-{opts.gpu_gib:g}gib" if opts.gpu_gib else ""
    path: Path = opts.out / f"{_slug(gpu)}{cap}-{datetime.date.today().isoformat()}.json"
    opts.out.mkdir(parents=True, exist_ok=True)
    check = Check(path, opts.budget_s - (time.monotonic() - started), opts.skip, opts.only)
    check.figures.update({
        "gpu": gpu,
        "torch": torch.__version__,
        "size": opts.size,
        "steps": opts.steps,
        "load_s": round(time.monotonic() - started, 1),
        "options": model.options,
        "plan": str(model.plan),
        "dtypes": dtypes(model),
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    })  # fmt: skip
    if device.type == "cuda":
        check.figures["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / GiB, 1)
    if free is not None:  # on a GPU
        check.figures["planned_free_gib"] = round(free / GiB, 1)
    if opts.gpu_gib:
        # The class the run stands for, in the GPU table; its speed is not that class's.
        check.figures["gpu_memory_gib"] = opts.gpu_gib
        check.figures["gpu_gib_cap"] = opts.gpu_gib
        check.figures["speed_of"] = f"the {gpu}'s, not a {opts.gpu_gib:g} GiB card's (its plan, peaks and refusals)"
    generation = request(width, height, frames, opts.steps)
    flops_per_pass = transformer_flops(model.t2v.transformer.config, width, height, frames)
    matmul_peak = matmul_peak_tflops(device)
    reference: dict[str, torch.Tensor] = {}

    def default() -> dict[str, Any]:
        warm = clock(device)
        runner.warm_up(opts.size)
        warmup_s = clock(device) - warm
        reset_peak(device)
        result = runner.run(generation)
        step_s, reference["latents"] = timed_denoising(runner, generation)
        timings = result.timings.model_dump()
        predicted = model.capacity.peak_bytes(width, height, frames, True, False) if model.capacity else None
        floor_s = 2 * flops_per_pass / (matmul_peak * 1e12)
        return {
            "warmup_s": round(warmup_s, 2),
            **timings,
            "step_s": round(step_s, 4),
            "peak_gpu_memory_gib": result.peak_gpu_memory_bytes and round(result.peak_gpu_memory_bytes / GiB, 2),
            "predicted_peak_gib": predicted and round(predicted / GiB, 2),
            "transformer_tflop_per_step": round(2 * flops_per_pass / 1e12, 2),
            "achieved_tflops": round(2 * flops_per_pass / step_s / 1e12, 1),
            "matmul_peak_tflops": round(matmul_peak, 1),
            "ratio_to_floor": round(step_s / floor_s, 2),
            "seconds_per_job": _extrapolated(timings, step_s),
        }

    def sequential_guidance() -> dict[str, Any]:
        plain = PipelineRunner(dataclasses.replace(model, guidance=None))
        step_s, latents = timed_denoising(plain, generation)
        return {"step_s": round(step_s, 4), **_difference(latents, reference)}

    def attention() -> dict[str, Any]:
        chosen = model.options["attention_backend"]
        figures: dict[str, dict[str, Any]] = {}
        for name in ATTENTION_BACKENDS:
            try:
                set_first_working_backend(model.t2v.transformer, (name,), device)
                step_s, latents = timed_denoising(runner, generation)
                figures[name] = {"step_s": round(step_s, 4), **_difference(latents, reference)}
            except Exception as exc:
                figures[name] = {"unavailable": f"{type(exc).__name__}: {str(exc)[:300]}"}
        set_first_working_backend(model.t2v.transformer, (chosen,), device)
        return figures

    def fast_mode() -> dict[str, Any]:
        last_block = model.t2v.transformer.blocks[-1]
        calls = [0]
        handle = last_block.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        longer = generation.model_copy(update={"num_inference_steps": FAST_STEPS})
        try:
            quality_s, quality = timed_denoising(runner, longer)
            full_calls, calls[0] = calls[0], 0
            fast_s, fast = timed_denoising(runner, longer.model_copy(update={"speed_mode": "fast"}))
        finally:
            handle.remove()
        return {
            "steps": FAST_STEPS,
            "quality_step_s": round(quality_s, 4),
            "fast_step_s": round(fast_s, 4),
            "blocks_skipped_share": round(1 - calls[0] / full_calls, 3),
            **_difference(fast, {"latents": quality}),
        }

    def vae_tiling() -> dict[str, Any]:
        vae = model.t2v.vae
        figures: dict[str, Any] = {}
        with torch.inference_mode():
            for tiled in (False, True):
                set_vae_tiling(vae, tiled)
                reset_peak(device)
                begun = clock(device)
                video = decode_to_uint8(vae, reference["latents"])
                figures["tiled" if tiled else "untiled"] = {
                    "decoding_s": round(clock(device) - begun, 3), "peak_gpu_memory_gib": peak_gib(device)
                }  # fmt: skip
                reference["video_tiled" if tiled else "video"] = video
            set_vae_tiling(vae, model.plan.vae_tiling)
        difference = (reference["video"].float() - reference["video_tiled"].float()).abs()
        figures["mean_level_difference"] = round(difference.mean().item(), 3)
        return figures

    def text_encoder() -> dict[str, Any]:
        encoder = model.t2v.text_encoder
        home = next(encoder.parameters()).device
        figures = {}
        with torch.inference_mode():
            encoder.to(device)
            begun = clock(device)
            runner.encode_prompts(generation)
            figures["on_gpu_s"] = round(clock(device) - begun, 3)
            begun = clock(device)
            encoder.to("cpu")
            encoder.to(device)
            runner.encode_prompts(generation)
            encoder.to("cpu")
            figures["offloaded_s"] = round(clock(device) - begun, 3)
            encoder.to(home)
        return figures

    def turbo() -> dict[str, Any]:
        """FastWan2.2's recipe (the production config's DMD model) on the same weights: 3 steps of
        one pass each, then the decode, which dominates such a job."""
        spec = next(spec for spec in production_models() if spec.recipe.fixed_timesteps)
        recipe = spec.recipe
        fast = PipelineRunner(model, spec)
        job = request(width, height, frames, recipe.default_steps).model_copy(
            update={
                "model": spec.id,
                "guidance_scale": recipe.default_guidance,
                "shift": recipe.shift_for(width, height),
            }
        )
        fast.run(job)  # the batch-of-one graph's first call
        timings = fast.run(job).timings.model_dump()
        total_s = sum(timings.values())
        return {
            "model": spec.id, "steps": recipe.default_steps, "transformer_passes": recipe.default_steps, **timings,
            "step_s": round(timings["denoising_s"] / recipe.default_steps, 4), "total_s": round(total_s, 3),
            "decoding_share": round(timings["decoding_s"] / total_s, 3),
        }  # fmt: skip

    def memory_model() -> dict[str, Any]:
        """Each size's measured peak beside the prediction; or the plan's refusal, or the GPU's
        out-of-memory error (after which the replica, like this, empties the cache and goes on)."""
        figures = {}
        for w, h, f in MEMORY_SIZES:
            if model.capacity is None:
                break
            sized = request(w, h, f, 1)
            predicted = model.capacity.peak_bytes(w, h, f, True, False)
            reset_peak(device)
            try:
                runner.run(sized)
            except VideoTooLarge as exc:
                figures[f"{w}x{h}x{f}"] = {"refused": str(exc), "predicted_gib": round(predicted / GiB, 2)}
                continue
            except torch.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                figures[f"{w}x{h}x{f}"] = {"out_of_memory": str(exc)[:300], "predicted_gib": round(predicted / GiB, 2)}
                continue
            measured = torch.cuda.max_memory_allocated(device)
            figures[f"{w}x{h}x{f}"] = {
                "measured_gib": round(measured / GiB, 2),
                "predicted_gib": round(predicted / GiB, 2),
                "error": round(predicted / measured - 1, 3),
            }
        return figures

    def gang(ranks: gang_check.Ranks, degrees: ParallelDegrees) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            measured = ranks.measure(degrees)
            one_gpu_step_s = check.figures["default"].get("step_s")
            return {
                "parallelism": degrees.details,
                "step_s": round(measured["step_s"], 4),
                "speedup": one_gpu_step_s and round(one_gpu_step_s / measured["step_s"], 2),
                "plan_per_rank": measured["plan"],
                "bytes_per_step_per_rank": bytes_per_step(model.t2v.transformer.config, width, height, frames, degrees),
                **_difference(measured["latents"], reference),
            }

        return run

    def prepared(mode: CompileMode) -> LoadedModel:
        """The same weights, prepared again as a replica with `compile: mode` and this plan would be."""
        remove_speedups(model.t2v.transformer)
        plan = model.plan
        options = dataclasses.replace(
            args.pipeline_options, compile=mode, memory_mode=plan.memory_mode,
            vae_tiling="on" if plan.vae_tiling else "off", cfg_batch=plan.cfg_batch,
        )  # fmt: skip
        return prepare_model(model.name, model.t2v, device, options, free)

    def compiled(mode: CompileMode) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            nonlocal model, runner
            try:
                compiled_runner = PipelineRunner(prepared(mode))
                begun = clock(device)
                compiled_runner.warm_up(opts.size)
                warmup_s = clock(device) - begun
                step_s, latents = timed_denoising(compiled_runner, generation)
            finally:
                # The sections after this one measure the default configuration's options.
                model = prepared("off")
                runner = PipelineRunner(model)
            return {"warmup_s": round(warmup_s, 1), "step_s": round(step_s, 4), **_difference(latents, reference)}

        return run

    estimate = opts.step_estimate_s
    # What the check is for comes first: the default, the memory model, compilation.
    check.section("default", 4 * estimate * opts.steps + 60, default)
    check.section("memory_model", 60, memory_model)
    check.section("compile_regional", 120, compiled("regional"))
    check.section("compile_full", 150, compiled("full"))
    check.section("turbo", 2 * (3 * estimate / 2 + 30), turbo)
    check.section("cfg_batch_off", 2 * estimate * opts.steps, sequential_guidance)
    check.section("attention_backends", len(ATTENTION_BACKENDS) * estimate * opts.steps, attention)
    check.section("fast_mode", 3 * estimate * FAST_STEPS, fast_mode)
    check.section("vae_tiling", 60, vae_tiling)
    check.section("text_encoder", 10, text_encoder)
    with gang_check.Ranks(opts.model, opts.device, opts.size, opts.steps, opts.gpus) as ranks:
        for name, degrees in gang_check.splits(opts.gpus).items():
            if opts.gpus == 1:
                check.skipped(name, "one GPU: --gpus N measures a replica of N")
            else:
                estimate_s = check.figures["load_s"] + 2 * opts.steps * opts.step_estimate_s
                check.section(name, estimate_s, gang(ranks, degrees))
    return path


def planned_free_bytes(device: torch.device, gpu_gib: float | None) -> int | None:
    """The GPU memory the plans of this run count on: what the device has free now, before anything
    is placed; with `gpu_gib`, that much, the process capped there (the CUDA allocator refuses
    more, as a card of that size would). None on a CPU."""
    if device.type != "cuda":
        if gpu_gib:
            raise ValueError("--gpu-gib caps a GPU's memory: this run has none")
        return None
    if not gpu_gib:
        return torch.cuda.mem_get_info(device)[0]
    total = torch.cuda.get_device_properties(device).total_memory
    if gpu_gib * GiB > total:
        raise ValueError(f"--gpu-gib {gpu_gib:g}: this GPU has {total / GiB:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(gpu_gib * GiB / total, device)
    return int(gpu_gib * GiB)


def production_models() -> list[ModelSpec]:
    """The models of serve_config.yaml, with their recipes."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    return AppArgs.model_validate(config["applications"][0]["args"]).served_models


def _extrapolated(timings: dict[str, Any], step_s: float) -> dict[str, float]:
    """Seconds a whole job takes at the guide's step counts: the fixed stages plus steps x step_s."""
    fixed = timings["text_encoding_s"] + timings["decoding_s"] + timings["transfer_s"] + timings["encoding_s"]
    return {str(steps): round(fixed + steps * step_s, 1) for steps in (20, 30, 50, 100)}


def _difference(latents: torch.Tensor, reference: dict[str, torch.Tensor]) -> dict[str, float]:
    if "latents" not in reference:
        return {}
    return {"max_latent_difference": round((latents.float() - reference["latents"].float()).abs().max().item(), 5)}


def _slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=RANDOM_WEIGHTS, help="full size with random weights (default), or tiny")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--size", default="1280x704x121", help="WIDTHxHEIGHTxFRAMES")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps per measurement")
    parser.add_argument("--budget-s", type=float, default=330, help="stop starting sections after this")
    parser.add_argument("--step-estimate-s", type=float, default=2.5, help="a step's expected time, for budgeting")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="a section not to run")
    parser.add_argument("--only", action="append", default=[], choices=SECTIONS, help="run only the sections named")
    parser.add_argument("--gpu-gib", type=float, help="cap the GPU memory at N GiB: stand for a smaller card")
    parser.add_argument(
        "--gpus", type=int, default=1, choices=(1, 2, 4, 8), help="also measure a replica of N GPUs (gang_* sections)"
    )
    opts = parser.parse_args(argv)
    # Before anything touches the GPU: the allocator reads it once.
    use_expandable_segments()
    try:
        print(run_check(opts))
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
