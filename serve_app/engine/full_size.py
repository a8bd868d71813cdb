"""Wan2.2-TI2V-5B at full size without its weights: the real configs (transformer/, vae/,
text_encoder/ config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers), and the pipeline built from them
with random weights on any device, the meta device included. Speed and memory do not depend on
the weights' values: the benchmark and the memory model use it, no download needed."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from serve_app.engine.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from diffusers import ModelMixin, UniPCMultistepScheduler, WanPipeline
    from transformers import PreTrainedModel

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
VAE_CONFIG: dict[str, Any] = {
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


def full_size_pipeline(device: torch.device, dtype: torch.dtype) -> "WanPipeline":
    """The pipeline with random weights, created directly on `device` in the dtypes that
    `from_pretrained(dtype=dtype)` gives: `dtype` for the transformer and the text encoder but their
    `_keep_in_fp32_modules`, float32 for the VAE. Created in `dtype` straight: never a float32
    copy of all (42.4 GiB for 22.5 GiB in bf16)."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device(device):
        with default_dtype(dtype):
            transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG)
            text_encoder = UMT5EncoderModel(UMT5Config(**TEXT_ENCODER_CONFIG))
        vae = AutoencoderKLWan(**VAE_CONFIG)
    for module in (transformer, text_encoder):
        cast_like_from_pretrained(module, dtype)
    return WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=wan_scheduler(),
        expand_timesteps=True,
    )


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """New floating-point tensors in `dtype` inside this block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def wan_scheduler(shift: float = 5.0) -> "UniPCMultistepScheduler":
    """The checkpoint's scheduler (scheduler/scheduler_config.json): UniPC on flow sigmas, shift 5
    unless asked otherwise."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, num_train_timesteps=1000
    )


def cast_like_from_pretrained(module: "ModelMixin | PreTrainedModel", dtype: torch.dtype) -> None:
    """Cast to `dtype`, but keep in float32 what from_pretrained keeps there: a diffusers model's
    `_keep_in_fp32_modules`; a transformers model's `_keep_in_fp32_modules_strict` (and, for
    float16 only, its `_keep_in_fp32_modules`)."""
    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        keep = set(module._keep_in_fp32_modules_strict or ())
        if dtype == torch.float16:
            keep |= set(module._keep_in_fp32_modules or ())
    else:
        keep = set(module._keep_in_fp32_modules or ())
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
