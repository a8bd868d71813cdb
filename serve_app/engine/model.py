"""Loading a Wan2.2 TI2V checkpoint once: one set of weights, two pipelines (text-to-video and
text+image-to-video) that share them, placed on the device by a memory plan."""

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline

from serve_app.capacity import PLANS, Capacity, MemoryMode, Plan
from serve_app.config import CompileMode, PipelineOptions
from serve_app.engine.adapters import add_hotswap_slots
from serve_app.engine.checkpoint import check_files, check_tokenizer
from serve_app.engine.errors import ModelLoadError
from serve_app.engine.full_size import wan_scheduler
from serve_app.engine.memory import MemoryTracer, choose_plan
from serve_app.engine.speedups import (
    AttentionUnavailable,
    BatchedGuidance,
    batch_guidance,
    beneath_offload_hook,
    choose_attention_backend,
    compile_transformer,
    place,
    set_vae_tiling,
)
from serve_app.engine.tiny import TINY, TINY_TURBO, ensure_tiny_checkpoint

logger = logging.getLogger(__name__)

# Of the GPU memory free at start, what a plan may count on: the rest is for what the memory model
# does not see (cuBLAS and cuDNN workspaces, the allocator's rounding and fragmentation).
MEMORY_HEADROOM = 0.10
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

_WHAT_TO_DO = (
    "Give the `model` argument a local folder holding a Diffusers-format Wan2.2 TI2V checkpoint "
    "(with model_index.json), or a Hugging Face id this machine can download (set HF_TOKEN if it "
    "needs one; offline, download it first with `hf download` and set HF_HUB_OFFLINE=1), "
    "or use `tiny` to try the service without weights."
)


class ResolvedOptions(TypedDict):
    """The options as resolved on a replica (no `auto` left), reported with every job."""

    dtype: str
    memory_mode: MemoryMode
    vae_tiling: bool
    attention_backend: str
    compile: CompileMode
    cfg_batch: bool


@dataclass(frozen=True)
class LoadedModel:
    name: str
    device: torch.device
    t2v: WanPipeline
    i2v: WanImageToVideoPipeline
    plan: Plan
    options: ResolvedOptions
    guidance: BatchedGuidance | None = None
    # What this replica's GPU memory allows; None on a CPU, which has no such limit to plan for.
    capacity: Capacity | None = None
    # The hub commit loaded (a `revision` resolved); None for a local folder or a tiny checkpoint.
    commit: str | None = None
    # With compilation: the adapters' hot-swap slots (`engine.adapters.add_hotswap_slots`).
    lora_slots: tuple[str, ...] = ()


def resolve_device(requested: str) -> torch.device:
    """`auto` means the GPU Ray gave this replica when there is one, else the CPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but this replica sees no GPU.")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU (the model's training dtype, half the memory), float32 on a CPU
    (which runs bfloat16 slowly); either can be asked for, so that tests run the GPU's dtypes."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[requested]


def use_expandable_segments() -> None:
    """Fewer out-of-memory errors from fragmentation, unless the environment says otherwise. Read
    when this process first allocates GPU memory: call it before."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.count("/") > 1


def load_model(
    model: str,
    device: torch.device,
    cache_dir: Path,
    options: PipelineOptions | None = None,
    revision: str | None = None,
) -> LoadedModel:
    """Load the checkpoint (at the hub `revision`) with the speed and memory `options`, or raise
    ModelLoadError saying what to do instead. A FastWan2.2 checkpoint's model_index.json names
    `WanDMDPipeline`, which diffusers lacks: its modules load into the WanPipeline run here, and its
    recipe's scheduler replaces the one of the checkpoint."""
    options = options or PipelineOptions()
    if device.type == "cuda":
        use_expandable_segments()
    if model in (TINY, TINY_TURBO):
        logger.warning("Loading the `%s` model: random weights, its videos are noise (for tests and demos).", model)
        source = str(ensure_tiny_checkpoint(cache_dir, model))
    else:
        source = model
        if _looks_like_path(model) and not Path(model).expanduser().is_dir():
            raise ModelLoadError(f"{model!r} is not a folder. {_WHAT_TO_DO}")
    dtype = resolve_dtype(options.dtype, device)
    try:
        check_files(source, revision)
        # The VAE stays float32: a bfloat16 Wan2.2 VAE visibly degrades the decoded video.
        # from_pretrained keeps each model's `_keep_in_fp32_modules` in float32. Safetensors only:
        # no pickles, and no fallback to `.bin` files that hides which file is missing.
        vae = AutoencoderKLWan.from_pretrained(
            source, subfolder="vae", dtype=torch.float32, use_safetensors=True, revision=revision
        )
        # The recipe's scheduler is made for each generation: the checkpoint's is not read.
        t2v = WanPipeline.from_pretrained(
            source, vae=vae, scheduler=wan_scheduler(), dtype=dtype, use_safetensors=True, revision=revision
        )
        check_tokenizer(t2v.tokenizer, t2v.text_encoder.config.vocab_size)
    except Exception as exc:
        raise ModelLoadError(f"Could not load the Wan2.2 checkpoint {model!r}: {exc} {_WHAT_TO_DO}") from exc
    if not t2v.config.get("expand_timesteps"):
        raise ModelLoadError(
            f"{model!r} is not a Wan2.2 TI2V checkpoint (its model_index.json does not set "
            "expand_timesteps: true). This service serves Wan-AI/Wan2.2-TI2V-5B-Diffusers and its layout."
        )
    commit = resolved_commit(source, revision)
    logger.info("Loaded %s at %s (transformer and text encoder %s, VAE float32)", model, commit or source, dtype)
    return dataclasses.replace(prepare_model(model, t2v, device, options), commit=commit)


def resolved_commit(source: str, revision: str | None) -> str | None:
    """The hub commit that `revision` of `source` resolved to, read from the hub cache that
    from_pretrained filled (`snapshots/<commit>/`); None for a local folder."""
    if Path(source).expanduser().is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "model_index.json", revision=revision)
    return Path(cached).parent.name if isinstance(cached, str) else None


def prepare_model(
    name: str, t2v: WanPipeline, device: torch.device, options: PipelineOptions, free_bytes: int | None = None
) -> LoadedModel:
    """Place a loaded pipeline (on the host) on `device` by its memory plan and apply the speed
    `options`. The plan counts on `free_bytes` of GPU memory, by default what the device has free
    before anything is placed (the GPU check passes less, to stand for a smaller card)."""
    # A CPU has no memory limit to plan for: the fastest allowed plan.
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
        # What the loaded LoRA adapters may take is not the plan's to count on.
        capacity = plan_memory(memory_tracer(t2v, options), free - options.lora_memory_bytes, options)
    else:
        capacity = None
    plan = capacity.plan if capacity else candidate_plans(options)[0]
    place(t2v, plan, device)
    try:
        attention = choose_attention_backend(t2v.transformer, options.attention_backend, device)
    except AttentionUnavailable as exc:
        raise ModelLoadError(f"attention_backend {options.attention_backend!r}: {exc}") from exc
    # Compiled before the guidance hook wraps it, so that `full` compiles the model's own forward;
    # both beneath model offload's hook, which every pipeline call installs again.
    # Hot-swap slots before compiling: adapters later replace their weights, nothing recompiles.
    lora_slots = add_hotswap_slots(t2v, options.lora_slots, options.lora_rank) if options.lora_slots else ()
    with beneath_offload_hook(t2v.transformer):
        compile_transformer(t2v.transformer, options.compile)
        guidance = batch_guidance(t2v.transformer) if plan.cfg_batch else None
    t2v.set_progress_bar_config(disable=True)
    # The same modules, uncast: `from_pipe` would cast them all to float32.
    i2v = WanImageToVideoPipeline(
        tokenizer=t2v.tokenizer,
        text_encoder=t2v.text_encoder,
        vae=t2v.vae,
        scheduler=t2v.scheduler,
        transformer=t2v.transformer,
        expand_timesteps=True,
    )
    i2v.set_progress_bar_config(disable=True)
    resolved: ResolvedOptions = {
        "dtype": str(t2v.transformer.dtype).removeprefix("torch."),
        "memory_mode": plan.memory_mode,
        "vae_tiling": plan.vae_tiling,
        "attention_backend": attention,
        "compile": options.compile,
        "cfg_batch": plan.cfg_batch,
    }
    logger.info("%s on %s with %s", name, device, resolved)
    return LoadedModel(
        name=name, device=device, t2v=t2v, i2v=i2v, plan=plan, options=resolved, guidance=guidance, capacity=capacity,
        lora_slots=lora_slots,
    )  # fmt: skip


def candidate_plans(options: PipelineOptions) -> tuple[Plan, ...]:
    """The plans the memory options allow, fastest first."""
    plans = tuple(
        plan
        for plan in PLANS
        if options.memory_mode in ("auto", plan.memory_mode)
        and options.vae_tiling in ("auto", "on" if plan.vae_tiling else "off")
        and (options.cfg_batch or not plan.cfg_batch)
    )
    if not plans:  # every memory_mode has tiled and untiled plans
        raise ModelLoadError(f"no memory plan has memory_mode={options.memory_mode}, vae_tiling={options.vae_tiling}")
    return plans


def plan_memory(tracer: MemoryTracer, free: int, options: PipelineOptions) -> Capacity:
    """The fastest allowed plan that fits `options.warmup_size` in `free` bytes of GPU memory (less
    the headroom), by the memory model of the pipeline's modules; ModelLoadError if none does."""
    width, height, frames = options.warmup_dimensions
    budget = usable_bytes(free)
    candidates = candidate_plans(options)
    capacity = choose_plan(tracer, budget, (width, height, frames), candidates)
    if capacity is None:
        frugal = tracer.capacity(candidates[-1], budget)
        frames_fit = frugal.largest_frames(width, height, guidance=True, image=True)
        raise ModelLoadError(
            f"No allowed memory plan fits warmup_size {options.warmup_size} in the {budget / 2**30:.1f} GiB usable "
            f"of this GPU ({free / 2**30:.1f} GiB free); the most frugal ({frugal.plan}) makes up to {frames_fit} "
            f"frames at {width}x{height}. Set warmup_size (and max_video_pixels) to what this GPU can make."
        )
    logger.info(
        "Memory plan %s: predicted peak %.1f GiB at %dx%dx%d of %.1f GiB usable",
        capacity.plan, capacity.peak_bytes(width, height, frames, guidance=True, image=True) / 2**30,
        width, height, frames, capacity.budget_bytes / 2**30,
    )  # fmt: skip
    return capacity


def memory_tracer(t2v: WanPipeline, options: PipelineOptions) -> MemoryTracer:
    """The memory model of the pipeline's models, fitted around `options.warmup_size`."""
    width, height, _ = options.warmup_dimensions
    modules = (t2v.text_encoder, t2v.transformer, t2v.vae)
    return MemoryTracer(*modules, decode=decode_to_uint8, tiling=set_vae_tiling, target=(width, height))


def usable_bytes(free: int) -> int:
    """What a plan may count on of `free` bytes of GPU memory."""
    return int(free * (1 - MEMORY_HEADROOM))


def decode_to_uint8(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """Denormalise and decode latents to (frames, height, width, 3) uint8, on the VAE's device: the
    host never holds a float copy of the video, and receives one byte a channel."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=vae.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=vae.dtype).view(shape)
    video: torch.Tensor = vae.decode(latents.to(vae.dtype) * std + mean, return_dict=False)[0]
    # (1, 3, frames, height, width) in [-1, 1] -> (frames, height, width, 3) uint8, in place.
    video = video[0].clamp_(-1, 1).add_(1).mul_(127.5).round_().to(torch.uint8)
    return video.permute(1, 2, 3, 0).contiguous()
