"""Speed and memory options of the pipeline, applied once when a generator replica loads the
model, each switchable from the app arguments; and the per-request speed mode (step caching).

- cfg_batch: the conditional and unconditional passes of a step run as one batch of two.
- attention_backend: the fastest attention kernel that works here, chosen at start.
- compile: `torch.compile` of the transformer (whole, or its repeated block), warmed up at start.
- memory plan: where the models live and whether the VAE decodes in tiles (`capacity.Plan`,
  chosen by `memory.choose_plan`).

The decoded video is converted to uint8 on the device (see `pipeline.py`), so the host receives
one byte a channel whatever the options.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from types import MethodType
from typing import Any

import torch
from diffusers import AutoencoderKLWan, FirstBlockCacheConfig, WanPipeline, WanTransformer3DModel
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention_dispatch import dispatch_attention_fn

from serve_app.capacity import Plan

logger = logging.getLogger(__name__)

# FirstBlockCache's default: skip the other blocks while the first block's residual changes by
# less than 5% between steps.
FAST_MODE_THRESHOLD = 0.05
CFG_HOOK = "wan_serve_batched_guidance"
# VAE tiles of 512 pixels with 64 of overlap (diffusers' default: 256 and 64): a 1280x704 video
# decodes in 6 tiles instead of 28, a third less work for the overlaps, and a working set that
# is still a fraction of the untiled decode's.
VAE_TILE, VAE_TILE_STRIDE = 512, 448
# Attention kernels `auto` tries on a GPU, fastest first. SageAttention quantises Q and K to int8
# (and P and V to fp8 on Ada and Hopper): lossy, so never picked for you; ask for `sage` by name.
AUTO_ATTENTION = ("_flash_3", "flash", "_native_cudnn", "native")


class AttentionUnavailable(RuntimeError):
    """A named attention backend does not run here."""


def choose_attention_backend(transformer: WanTransformer3DModel, requested: str, device: torch.device) -> str:
    """Set the attention backend on every attention of `transformer` and return its name.

    `auto` tries AUTO_ATTENTION on a GPU (only `native` on a CPU) and keeps the first that diffusers
    accepts (its own availability and version checks) and that runs a first call; each one that
    does not is logged as a warning. A backend asked for by name must work, or AttentionUnavailable
    says why.
    """
    candidates = (AUTO_ATTENTION if device.type == "cuda" else ("native",)) if requested == "auto" else (requested,)
    return set_first_working_backend(transformer, candidates, device)


def set_first_working_backend(
    transformer: WanTransformer3DModel, candidates: tuple[str, ...], device: torch.device
) -> str:
    reasons: list[str] = []
    for name in candidates:
        try:
            transformer.set_attention_backend(name)  # diffusers checks the package and its version
            _first_call(transformer, name, device)
        except (RuntimeError, ValueError, ImportError) as exc:
            reasons.append(f"{name}: {exc}")
            if name != candidates[-1]:
                logger.warning("Attention backend %s does not work here (%s); trying the next one.", name, exc)
            continue
        return name
    raise AttentionUnavailable("No attention backend works here: " + "; ".join(reasons))


def _first_call(transformer: WanTransformer3DModel, name: str, device: torch.device) -> None:
    """One small attention call in the transformer's dtype and head size, as its layers make them."""
    config = transformer.config
    shape = (1, 64, config.num_attention_heads, config.attention_head_dim)
    query, key, value = (torch.randn(shape, device=device, dtype=transformer.dtype) for _ in range(3))
    with torch.inference_mode():
        dispatch_attention_fn(query, key, value, backend=name)


def place(pipe: WanPipeline, plan: Plan, device: torch.device) -> None:
    """Put the pipeline's models where `plan` says, and set the VAE's tiling."""
    if plan.memory_mode == "full":
        pipe.to(device)
    elif plan.memory_mode == "text_encoder_offload":
        # The text encoder stays on the host; the runner brings it to the GPU for each job's prompts.
        pipe.transformer.to(device)
        pipe.vae.to(device)
    elif plan.memory_mode == "model_offload":
        # One whole model on the GPU at a time: the text encoder, then the transformer, then the VAE.
        pipe.enable_model_cpu_offload(device=device)
    else:
        # Layer by layer, the next group's weights copied on a side stream while this one runs.
        pipe.enable_group_offload(onload_device=device, offload_type="leaf_level", use_stream=device.type == "cuda")
    set_vae_tiling(pipe.vae, plan.vae_tiling)


def set_vae_tiling(vae: AutoencoderKLWan, on: bool) -> None:
    if on:
        vae.enable_tiling(
            tile_sample_min_height=VAE_TILE,
            tile_sample_min_width=VAE_TILE,
            tile_sample_stride_height=VAE_TILE_STRIDE,
            tile_sample_stride_width=VAE_TILE_STRIDE,
        )
    else:
        vae.disable_tiling()


def compile_transformer(transformer: WanTransformer3DModel, mode: str) -> None:
    """`regional` compiles the repeated transformer block's own forward (one compilation serves
    all 30 blocks); `full` compiles the whole forward. Dynamic shapes: one compilation serves
    every video size.

    Regional compiles each block's `forward`, not its call: the step cache of `fast` mode wraps
    the blocks' forward with hooks that dynamo cannot trace in a full graph; this way the hooks run
    around the compiled forward."""
    if mode == "regional":
        for block in transformer.blocks:
            block.forward = torch.compile(block.forward, fullgraph=True, dynamic=True)
    elif mode == "full":
        transformer.forward = torch.compile(transformer.forward, dynamic=True)
    elif mode != "off":
        raise ValueError(f"unknown compile mode {mode!r}")


class BatchedGuidance(ModelHook):  # type: ignore[misc]  # ModelHook is Any: mypy skips diffusers (pyproject.toml)
    """Classifier-free guidance in one batch of two: the pipeline's conditional call computes both
    passes at once, and its unconditional call, which follows with the negative prompt's
    embeddings and the same latents, receives the half already computed.

    The calls must come in that order, with the very tensors given to `guiding` (the runner casts
    the embeddings to the transformer's dtype, so the pipeline passes them through unchanged), or
    copies of the same dtype and values: beneath model offload's hook, the transformer receives
    accelerate's copies of its inputs when it was not on the execution device (on a CPU always,
    `cpu:0` not being `cpu`); anything else raises rather than silently running every pass twice."""

    def __init__(self) -> None:
        super().__init__()
        self.negative: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (latents, unconditional output)

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
        # The text+image pipeline passes `encoder_hidden_states_image=None` (TI2V-5B encodes no
        # image apart), the text-only one leaves it out: left out either way, a transformer compiled
        # whole has one graph for both, not two to compile.
        if kwargs.get("encoder_hidden_states_image") is None:
            kwargs.pop("encoder_hidden_states_image", None)
        text = kwargs["encoder_hidden_states"]
        if self.negative is None:
            unbatched: tuple[torch.Tensor] = self.fn_ref.original_forward(hidden_states=hidden_states, **kwargs)
            return unbatched
        if self._pending is not None:
            latents, output = self._pending
            if not (_same(text, self.negative) and _same(latents, hidden_states)):
                raise RuntimeError("batched guidance: the call after a conditional one was not its unconditional one")
            self._pending = None
            return (output,)
        if text is self.negative:
            raise RuntimeError("batched guidance: an unconditional call came without its conditional one")
        conditional, unconditional = self.both_passes(hidden_states, kwargs, self.negative)
        self._pending = (hidden_states, unconditional)
        return (conditional,)

    def both_passes(
        self, hidden_states: torch.Tensor, kwargs: dict[str, Any], negative: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional and the unconditional noise predictions of one step: here one batch of two
        (CFG parallel computes them on two ranks instead)."""
        batched = {
            **kwargs,
            "encoder_hidden_states": torch.cat([kwargs["encoder_hidden_states"], negative]),
            "timestep": torch.cat([kwargs["timestep"]] * 2),
            "return_dict": False,
        }
        if kwargs.get("encoder_hidden_states_image") is not None:
            batched["encoder_hidden_states_image"] = torch.cat([kwargs["encoder_hidden_states_image"]] * 2)
        conditional, unconditional = self.fn_ref.original_forward(
            hidden_states=torch.cat([hidden_states] * 2), **batched
        )[0].chunk(2)
        return conditional, unconditional

    @contextmanager
    def guiding(self, negative: torch.Tensor | None) -> Iterator[None]:
        """Batch the passes of the generation run in this block (none when `negative` is None)."""
        self.negative, self._pending = negative, None
        try:
            yield
        finally:
            self.negative, self._pending = None, None


@contextmanager
def beneath_offload_hook(module: torch.nn.Module) -> Iterator[None]:
    """What this block sets as `module.forward` goes beneath accelerate's offload hook, if the
    module has one (`model_offload`), rather than over it.

    diffusers re-runs enable_model_cpu_offload at the end of every pipeline call: accelerate then
    resets `forward` to the `_old_forward` its hook calls, and hooks that again. A wrapper over the
    hook (the compiled forward, batched guidance) would be gone after the first generation; one
    beneath it is what `_old_forward` holds, and stays."""
    if not hasattr(module, "_hf_hook"):
        yield
        return
    # accelerate's `_old_forward` is a plain attribute of the instance (torch's types know an
    # unknown attribute of a module only as a submodule or a tensor).
    attributes = vars(module)
    offloaded = module.forward
    module.forward = attributes["_old_forward"]
    try:
        yield
    finally:
        attributes["_old_forward"], module.forward = module.forward, offloaded


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor, or a copy of it: same device, dtype, shape and values."""
    return a is b or (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))


def remove_speedups(transformer: WanTransformer3DModel) -> None:
    """Undo `compile_transformer` and `batch_guidance`: the GPU check measures several
    configurations on one set of weights."""
    with beneath_offload_hook(transformer):
        HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(CFG_HOOK, recurse=False)
        for module in (transformer, *transformer.blocks):
            module.__dict__.pop("forward", None)  # the compiled forward, an attribute of the instance


def batch_guidance(transformer: WanTransformer3DModel) -> BatchedGuidance:
    hook = BatchedGuidance()
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, CFG_HOOK)
    return hook


@contextmanager
def step_cache(transformer: WanTransformer3DModel, speed_mode: str, compile_mode: str) -> Iterator[None]:
    """`fast`: FirstBlockCache for this generation, off again afterwards.

    The cache decides between blocks, in Python, whether to run the rest: a whole-model graph
    cannot hold that, so a transformer compiled `full` runs fast generations eagerly (`regional`
    keeps its compiled blocks, which the cache's hooks wrap)."""
    if speed_mode != "fast":
        yield
        return
    transformer.enable_cache(FirstBlockCacheConfig(threshold=FAST_MODE_THRESHOLD))
    stance = torch.compiler.set_stance("force_eager") if compile_mode == "full" else nullcontext()
    try:
        with stance:
            yield
    finally:
        transformer.disable_cache()
        for block in transformer.blocks:
            # Removing a hook leaves the class's own forward behind as an instance attribute, which
            # a compiled whole model would see as a change and compile again: drop it.
            forward = block.__dict__.get("forward")
            if isinstance(forward, MethodType) and forward.__func__ is type(block).forward:
                del block.forward
