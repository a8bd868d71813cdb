"""The cost of one job of each served model, counted, not timed (anywhere, nothing downloaded):
its transformer passes (steps, two a step with guidance) and FLOPs at a size, the VAE decode's
FLOPs, and the decode's share of the job. With 3 passes and no guidance the decode dominates.

    python -m serve_app.benchmark.models                       (the production config, 1280x704x121)
    python -m serve_app.benchmark.models --config serve_config.local.yaml --size 64x64 --frames 25
    python -m serve_app.benchmark.models --config serve_config.local.yaml --size 64x64 --frames 25 --measure

`--measure` also loads each model as a replica would (the config's device) and times its default
job, stage by stage (the median of `--runs`, after one unmeasured run): on a CPU, `tiny` against
`tiny-turbo`.

FLOPs come from PyTorch's FLOP counter on shape-only (meta) copies of the full-size modules: the
transformer (`measure.transformer_flops`), the text encoder on 512 tokens, the VAE decoder. The
share is of FLOPs: the float32 VAE decode runs its convolutions at a lower rate than the bfloat16
transformer, so its share of the time is larger still (the GPU check measures both).
"""

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from serve_app.benchmark.measure import TEXT_TOKENS, transformer_flops
from serve_app.config import AppArgs, ModelSpec
from serve_app.engine.full_size import TEXT_ENCODER_CONFIG, TRANSFORMER_CONFIG, VAE_CONFIG


def decode_flops(width: int, height: int, frames: int) -> int:
    """FLOPs of the full-size VAE decoding the latents of one video."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**VAE_CONFIG)
        latents = torch.empty(1, VAE_CONFIG["z_dim"], (frames - 1) // 4 + 1, height // 16, width // 16)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        vae.decode(latents, return_dict=False)
    return counter.get_total_flops()


def text_encoder_flops() -> int:
    """FLOPs of the full-size UMT5 encoder on one prompt (padded to 512 tokens)."""
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        encoder = UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG))
        tokens = torch.zeros(1, TEXT_TOKENS, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        encoder(input_ids=tokens)
    return counter.get_total_flops()


def job_costs(models: list[ModelSpec], width: int, height: int, frames: int) -> list[dict[str, Any]]:
    """Each model's default job at this size: passes, FLOPs by stage, the decode's share."""
    per_pass = transformer_flops(TRANSFORMER_CONFIG, width, height, frames)
    decode = decode_flops(width, height, frames)
    prompt = text_encoder_flops()
    rows = []
    for spec in models:
        recipe = spec.recipe
        guided = recipe.default_guidance > 1.0
        passes = recipe.default_steps * (2 if guided else 1)
        # The prompt, and with guidance the negative prompt too.
        text = prompt * (2 if guided else 1)
        total = text + passes * per_pass + decode
        rows.append({
            "model": spec.id,
            "size": f"{width}x{height}x{frames}",
            "steps": recipe.default_steps,
            "guidance": guided,
            "transformer_passes": passes,
            "transformer_flops_per_pass": per_pass,
            "transformer_flops": passes * per_pass,
            "text_encoder_flops": text,
            "vae_decode_flops": decode,
            "total_flops": total,
            "vae_decode_share": round(decode / total, 4),
        })  # fmt: skip
    return rows


def measure_stages(args: AppArgs, width: int, height: int, frames: int, runs: int) -> list[dict[str, Any]]:
    """Each model's default job, timed stage by stage on this machine."""
    from serve_app.engine.runner import make_runner
    from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, StageTimings

    rows = []
    for spec in args.served_models:
        recipe = spec.recipe
        runner = make_runner(args, spec)
        job = GenerationRequest(
            prompt="a red fox running through fresh snow, cinematic", negative_prompt=DEFAULT_NEGATIVE_PROMPT,
            width=width, height=height, num_frames=frames, num_inference_steps=recipe.default_steps,
            guidance_scale=recipe.default_guidance, fps=24, seed=0, model=spec.id,
            shift=recipe.shift_for(width, height),
        )  # fmt: skip
        runner.run(job)  # the first call pays one-time costs
        timings = [runner.run(job).timings for _ in range(runs)]
        stages = {name: statistics.median(getattr(t, name) for t in timings) for name in StageTimings.model_fields}
        rows.append({"model": spec.id, "size": f"{width}x{height}x{frames}", "steps": recipe.default_steps,
                     **{name: round(value, 4) for name, value in stages.items()},
                     "total_s": round(sum(stages.values()), 4)})  # fmt: skip
    return rows


def stages_table(rows: list[dict[str, Any]]) -> str:
    names = [name for name in rows[0] if name.endswith("_s")]
    lines = ["| model | video | steps | " + " | ".join(names) + " |", "|---|---|---:|" + "---:|" * len(names)]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['size']} | {row['steps']} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |"
        )
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | video | steps | passes | transformer PFLOP | text encoder TFLOP | VAE decode PFLOP | job PFLOP "
        "| decode share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['size']} | {row['steps']} | {row['transformer_passes']} | "
            f"{row['transformer_flops'] / 1e15:.2f} | {row['text_encoder_flops'] / 1e12:.1f} | "
            f"{row['vae_decode_flops'] / 1e15:.2f} | {row['total_flops'] / 1e15:.2f} | {row['vae_decode_share']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("serve_config.yaml"), help="a Serve config: its models")
    parser.add_argument("--size", default="1280x704", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--measure", action="store_true", help="also time each model's job, stage by stage")
    parser.add_argument("--runs", type=int, default=3, help="with --measure: runs timed (median reported)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    opts = parser.parse_args(argv)
    args = AppArgs.model_validate(yaml.safe_load(opts.config.read_text())["applications"][0]["args"])
    width, height = (int(side) for side in opts.size.split("x"))
    figures = {"costs": job_costs(args.served_models, width, height, opts.frames)}
    print(table(figures["costs"]))
    if opts.measure:
        figures["stages"] = measure_stages(args, width, height, opts.frames, opts.runs)
        print()
        print(stages_table(figures["stages"]))
    if opts.json:
        opts.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
