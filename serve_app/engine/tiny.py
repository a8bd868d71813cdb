"""The `tiny` model: a randomly initialised Wan2.2 TI2V checkpoint built locally.

It has the component classes and folder layout of `Wan-AI/Wan2.2-TI2V-5B-Diffusers`, so the
service loads it through the very same `from_pretrained` code as the real weights. Its videos
are noise; it exists so that every part of the service runs and is tested on a CPU, offline.
"""

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


def _build_pipeline() -> "WanPipeline":
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


def ensure_tiny_checkpoint(cache_dir: Path) -> Path:
    """Return the folder of the tiny checkpoint, building it first if the cache lacks it.

    The build goes to a temporary folder that is renamed into place, so replicas starting
    together never see (or load) a half-written checkpoint.
    """
    target = Path(cache_dir) / f"tiny-wan2.2-ti2v-v{TINY_VERSION}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Building the tiny random Wan2.2 checkpoint in %s", target)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        _build_pipeline().save_pretrained(staging)
        os.rename(staging, target)
    except OSError:
        # Another replica finished first: its copy is as good as ours.
        if not (target / "model_index.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
