"""Loading a Wan2.2 TI2V checkpoint once: one set of weights, two pipelines (text-to-video and
text+image-to-video) that share them."""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline

from serve_app.config import PipelineOptions
from serve_app.errors import ModelLoadError
from serve_app.speedups import (
    BatchedGuidance,
    batch_guidance,
    choose_attention_backend,
    choose_memory_mode,
    compile_transformer,
    place,
)
from serve_app.tiny import ensure_tiny_checkpoint

logger = logging.getLogger(__name__)


_WHAT_TO_DO = (
    "Give the `model` argument a local folder holding a Diffusers-format Wan2.2 TI2V checkpoint "
    "(with model_index.json), or a Hugging Face id this machine can download (set HF_TOKEN if it "
    "needs one; offline, download it first with `huggingface-cli download` and set HF_HUB_OFFLINE=1), "
    "or use `tiny` to try the service without weights."
)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    device: torch.device
    t2v: WanPipeline
    i2v: WanImageToVideoPipeline
    # The options as resolved on this replica (no `auto` left), reported with every job.
    options: dict
    guidance: BatchedGuidance | None = None


def resolve_device(requested: str) -> torch.device:
    """`auto` means the GPU Ray gave this replica when there is one, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but this replica sees no GPU.")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1


def load_model(
    model: str, device: torch.device, cache_dir: Path, options: PipelineOptions | None = None
) -> LoadedModel:
    """Load the checkpoint with the speed and memory `options`, or raise ModelLoadError saying what
    to do instead."""
    if model == "tiny":
        logger.warning("Loading the `tiny` model: random weights, its videos are noise (for tests and demos).")
        source = str(ensure_tiny_checkpoint(cache_dir))
    else:
        source = model
        if _looks_like_path(model) and not Path(model).expanduser().is_dir():
            raise ModelLoadError(f"{model!r} is not a folder. {_WHAT_TO_DO}")
    # bf16 halves memory and is what the model was trained in; the VAE stays fp32 because a bf16
    # Wan2.2 VAE visibly degrades the decoded video. A CPU has no fast bf16: float32 throughout.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", dtype=torch.float32)
        t2v = WanPipeline.from_pretrained(source, vae=vae, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"Could not load the Wan2.2 checkpoint {model!r}: {exc} {_WHAT_TO_DO}") from exc
    if not t2v.config.get("expand_timesteps"):
        raise ModelLoadError(
            f"{model!r} is not a Wan2.2 TI2V checkpoint (its model_index.json does not set "
            "expand_timesteps: true). This service serves Wan-AI/Wan2.2-TI2V-5B-Diffusers and its layout."
        )
    logger.info("Loaded %s (transformer %s, VAE float32)", model, dtype)
    return prepare_model(model, t2v, device, options or PipelineOptions())


def prepare_model(name: str, t2v: WanPipeline, device: torch.device, options: PipelineOptions) -> LoadedModel:
    """Place a loaded pipeline on `device` and apply the speed and memory `options` to it."""
    resolved = {
        "memory_mode": choose_memory_mode(options.memory_mode, device),
        "attention_backend": choose_attention_backend(options.attention_backend, device),
        "compile": options.compile,
        "cfg_batch": options.cfg_batch,
    }
    resolved["vae_tiling"] = options.vae_tiling == "on" or (
        options.vae_tiling == "auto" and resolved["memory_mode"] != "full"
    )
    place(t2v, resolved["memory_mode"], device)
    # Set even when `native`: diffusers also keeps the last backend set as a process-wide default.
    t2v.transformer.set_attention_backend(resolved["attention_backend"])
    # Compiled before the guidance hook wraps it, so that `full` compiles the model's own forward.
    compile_transformer(t2v.transformer, options.compile)
    guidance = batch_guidance(t2v.transformer) if options.cfg_batch else None
    if resolved["vae_tiling"]:
        t2v.vae.enable_tiling()
    t2v.set_progress_bar_config(disable=True)
    i2v = WanImageToVideoPipeline.from_pipe(t2v)
    i2v.set_progress_bar_config(disable=True)
    logger.info("%s on %s with %s", name, device, resolved)
    return LoadedModel(name=name, device=device, t2v=t2v, i2v=i2v, options=resolved, guidance=guidance)
