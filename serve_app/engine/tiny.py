"""The `tiny` and `tiny-turbo` models: randomly initialised Wan2.2 TI2V checkpoints built locally.

`tiny` has the component classes and folder layout of `Wan-AI/Wan2.2-TI2V-5B-Diffusers`, and
`tiny-turbo` those of `FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers` (the same modules, its
model_index.json naming `WanDMDPipeline`, its own transformer), so the service loads them through
the very same code as the real weights. Their videos are noise; they exist so that every part of
the service runs and is tested on a CPU, offline.
"""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from serve_app.engine.full_size import wan_scheduler
from serve_app.engine.tokenizer import build_tokenizer

if TYPE_CHECKING:
    from diffusers import WanPipeline

logger = logging.getLogger(__name__)

# Bump when the recipe below changes, so stale caches are rebuilt rather than reused.
TINY_VERSION = "1"
TINY, TINY_TURBO = "tiny", "tiny-turbo"
# What FastWan2.2's model_index.json names; diffusers has no such class.
DMD_PIPELINE_CLASS = "WanDMDPipeline"


def _build_pipeline(name: str) -> "WanPipeline":
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text_dim = 32
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    z_dim = 48
    vae = AutoencoderKLWan(
        base_dim=12,
        decoder_base_dim=12,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    if name == TINY_TURBO:
        # The distilled model's own transformer; the text encoder and the VAE are tiny's.
        torch.manual_seed(1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=z_dim,
        out_channels=z_dim,
        text_dim=text_dim,
        freq_dim=32,
        ffn_dim=48,
        num_layers=2,
        rope_max_seq_len=64,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=wan_scheduler(),
        expand_timesteps=True,
    )


def ensure_tiny_checkpoint(cache_dir: Path, name: str = TINY) -> Path:
    """Return the folder of the `tiny` (or `tiny-turbo`) checkpoint, building it first if the
    cache lacks it.

    The build goes to a temporary folder that is renamed into place, so replicas starting
    together never see (or load) a half-written checkpoint.
    """
    folder = {TINY: "tiny-wan2.2-ti2v", TINY_TURBO: "tiny-fastwan2.2-ti2v"}[name]
    target = Path(cache_dir) / f"{folder}-v{TINY_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Building the %s random Wan2.2 checkpoint in %s", name, target)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        _build_pipeline(name).save_pretrained(staging)
        if name == TINY_TURBO:
            index_file = staging / "model_index.json"
            index = json.loads(index_file.read_text())
            index_file.write_text(json.dumps({**index, "_class_name": DMD_PIPELINE_CLASS}, indent=2))
        os.rename(staging, target)
    except OSError:
        # Another replica finished first: its copy is as good as ours.
        if not (target / "model_index.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# The attention projections of every block: what Wan LoRAs adapt.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora(transformer: torch.nn.Module, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A random LoRA of `transformer`'s attention (scaling 1: alpha = rank) as diffusers saves
    one (`transformer.blocks.0.attn1.to_q.lora_A.weight`, ...), made with PEFT on a copy of it."""
    import copy

    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False)
    adapted = inject_adapter_in_model(config, copy.deepcopy(transformer))
    return {f"transformer.{key}": value.contiguous() for key, value in get_peft_model_state_dict(adapted).items()}


def ensure_tiny_lora(cache_dir: Path) -> Path:
    """The file of `tiny-style`, a random LoRA of `tiny`'s transformer, built first if the cache
    lacks it (written under a temporary name, then renamed into place)."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import save_file

    target = Path(cache_dir) / f"tiny-style-v{TINY_VERSION}.safetensors"
    if target.exists():
        return target
    checkpoint = ensure_tiny_checkpoint(cache_dir, TINY)
    transformer = WanTransformer3DModel.from_pretrained(checkpoint, subfolder="transformer")
    staging = Path(tempfile.mkstemp(prefix=".tiny-style-", suffix=".safetensors", dir=target.parent)[1])
    try:
        save_file(random_lora(transformer, seed=7), staging)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target
