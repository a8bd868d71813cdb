"""Speed and memory options of the pipeline, applied once when a generator replica loads the
model, each switchable from the app arguments; and the per-request speed mode (step caching).

- cfg_batch: the conditional and unconditional passes of a step run as one batch of two.
- attention_backend: the fastest attention kernel installed, chosen at start.
- compile: `torch.compile` of the transformer (whole, or its repeated block), warmed up at start.
- vae_tiling: VAE decoding in tiles, for large sizes on small GPUs.
- memory_mode: all on the GPU, or model / group CPU offload so that 24 GB cards work.

The decoded video is converted to uint8 on the device (see `pipeline.py`), so the host receives
one byte a channel whatever the options.
"""

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import FirstBlockCacheConfig, WanPipeline
from diffusers.hooks import HookRegistry, ModelHook

GiB = 2**30
# Free GPU memory at start above which everything stays on the GPU (the guide's 48 GB L40 ran the
# model whole), and above which whole models are offloaded (a 24 GB card); below, group offload.
FULL_MEMORY_BYTES = 40 * GiB
MODEL_OFFLOAD_BYTES = 20 * GiB
# FirstBlockCache's default: skip the other blocks while the first block's residual changes by
# less than 5% between steps.
FAST_MODE_THRESHOLD = 0.05
CFG_HOOK = "wan_serve_batched_guidance"
# The Python packages of the attention kernels that `auto` may pick, by preference.
ATTENTION_PACKAGES = ("flash_attn_interface", "sageattention", "flash_attn")


def choose_attention_backend(requested: str, device: torch.device) -> str:
    """`auto` resolved for this replica's device and the attention kernels installed."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "native"
    installed = {name for name in ATTENTION_PACKAGES if importlib.util.find_spec(name)}
    return pick_attention_backend(torch.cuda.get_device_capability(device), installed)


def pick_attention_backend(capability: tuple[int, int], installed: set[str]) -> str:
    """FlashAttention-3 on Hopper, else SageAttention, else FlashAttention-2 (when installed), else
    PyTorch's cuDNN attention (Ampere and later), else PyTorch's default."""
    major, _ = capability
    if major == 9 and "flash_attn_interface" in installed:
        return "_flash_3"
    if major >= 8 and "sageattention" in installed:
        return "sage"
    if major >= 8 and "flash_attn" in installed:
        return "flash"
    return "_native_cudnn" if major >= 8 else "native"


def choose_memory_mode(requested: str, device: torch.device) -> str:
    """`auto`: by the GPU memory free when the replica starts."""
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "full"
    free, _ = torch.cuda.mem_get_info(device)
    if free >= FULL_MEMORY_BYTES:
        return "full"
    return "model_offload" if free >= MODEL_OFFLOAD_BYTES else "group_offload"


def place(pipe: WanPipeline, memory_mode: str, device: torch.device) -> None:
    """Put the pipeline's models where `memory_mode` says."""
    if memory_mode == "full":
        pipe.to(device)
    elif memory_mode == "model_offload":
        # One whole model on the GPU at a time: the text encoder, then the transformer, then the VAE.
        pipe.enable_model_cpu_offload(device=device)
    elif memory_mode == "group_offload":
        # Layer by layer, the next group's weights copied on a side stream while this one runs.
        pipe.enable_group_offload(onload_device=device, offload_type="leaf_level", use_stream=device.type == "cuda")
    else:
        raise ValueError(f"unknown memory_mode {memory_mode!r}")


def compile_transformer(transformer: torch.nn.Module, mode: str) -> None:
    """`regional` compiles the repeated transformer block once for all 30 (faster to compile);
    `full` compiles the whole forward. Dynamic shapes: one compilation serves every video size."""
    if mode == "regional":
        transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
    elif mode == "full":
        transformer.forward = torch.compile(transformer.forward, dynamic=True)
    elif mode != "off":
        raise ValueError(f"unknown compile mode {mode!r}")


class BatchedGuidance(ModelHook):
    """Classifier-free guidance in one batch of two: the pipeline's conditional call computes both
    passes at once, and its unconditional call, which follows with the negative prompt's
    embeddings and the same latents, receives the half already computed."""

    def __init__(self) -> None:
        super().__init__()
        self.negative: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (latents, unconditional output)

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, **kwargs):
        text = kwargs["encoder_hidden_states"]
        if self.negative is None:
            return self.fn_ref.original_forward(hidden_states=hidden_states, **kwargs)
        if text is self.negative:
            latents, output = self._pending
            if latents is not hidden_states:
                raise RuntimeError("batched guidance: the unconditional call did not follow its conditional call")
            self._pending = None
            return (output,)
        batched = {
            **kwargs,
            "encoder_hidden_states": torch.cat([text, self.negative]),
            "timestep": torch.cat([kwargs["timestep"]] * 2),
            "return_dict": False,
        }
        if kwargs.get("encoder_hidden_states_image") is not None:
            batched["encoder_hidden_states_image"] = torch.cat([kwargs["encoder_hidden_states_image"]] * 2)
        conditional, unconditional = self.fn_ref.original_forward(
            hidden_states=torch.cat([hidden_states] * 2), **batched
        )[0].chunk(2)
        self._pending = (hidden_states, unconditional)
        return (conditional,)

    @contextmanager
    def guiding(self, negative: torch.Tensor | None) -> Iterator[None]:
        """Batch the passes of the generation run in this block (none when `negative` is None)."""
        self.negative, self._pending = negative, None
        try:
            yield
        finally:
            self.negative, self._pending = None, None


def batch_guidance(transformer: torch.nn.Module) -> BatchedGuidance:
    hook = BatchedGuidance()
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, CFG_HOOK)
    return hook


@contextmanager
def step_cache(transformer: torch.nn.Module, speed_mode: str) -> Iterator[None]:
    """`fast`: FirstBlockCache for this generation, off again afterwards."""
    if speed_mode != "fast":
        yield
        return
    transformer.enable_cache(FirstBlockCacheConfig(threshold=FAST_MODE_THRESHOLD))
    try:
        yield
    finally:
        transformer.disable_cache()
