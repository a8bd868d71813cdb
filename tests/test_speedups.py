"""Each speed and memory option against the plain path, on the CPU with the tiny model: the same
latents within a stated tolerance, and proof that the option did what it says (fewer transformer
calls, compiled blocks, offload hooks, tiles, skipped blocks). Their speed is the GPU benchmark's
business (`python -m serve_app.benchmark`), not a test's."""

from contextlib import nullcontext

import pytest
import torch

from serve_app.config import PipelineOptions
from serve_app.model import LoadedModel, load_model
from serve_app.pipeline import PipelineRunner
from serve_app.schemas import DEFAULT_NEGATIVE_PROMPT
from serve_app.speedups import pick_attention_backend, step_cache

CPU = torch.device("cpu")
# Float32 on a CPU: batching or compiling changes only the order of floating-point sums.
SAME = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("speedups-cache")


def latents(model: LoadedModel, steps: int = 3, size: int = 64, image=None, batched: bool = True, speed="quality"):
    """Denoise as the runner does (the guidance hook on when `batched`), stopping at the latents."""
    pipe = model.i2v if image is not None else model.t2v
    prompt, negative = pipe.encode_prompt(
        prompt="a fox in the snow", negative_prompt=DEFAULT_NEGATIVE_PROMPT, max_sequence_length=512, device=CPU
    )
    guidance = model.guidance.guiding(negative) if batched and model.guidance else nullcontext()
    with guidance, step_cache(pipe.transformer, speed):
        return pipe(
            prompt_embeds=prompt, negative_prompt_embeds=negative, height=size, width=size, num_frames=25,
            num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(3),
            output_type="latent", return_dict=False, **({"image": image} if image is not None else {}),
        )[0]  # fmt: skip


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_guidance_in_one_batch_gives_the_same_latents_with_half_the_transformer_calls(cache):
    from PIL import Image

    model = load_model("tiny", CPU, cache)
    assert model.options["cfg_batch"]
    first_block = count_calls(model.t2v.transformer.blocks[0])
    plain = latents(model, batched=False)
    plain_calls, first_block[0] = first_block[0], 0
    batched = latents(model)
    assert plain_calls == 2 * 3 and first_block[0] == 3
    torch.testing.assert_close(batched, plain, **SAME)
    # Text+image to video too: its first frame is conditioned the same way.
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    torch.testing.assert_close(latents(model, image=image), latents(model, image=image, batched=False), **SAME)


@pytest.mark.parametrize("mode", ["regional", "full"])
def test_a_compiled_transformer_gives_the_same_latents(cache, mode):
    plain = latents(load_model("tiny", CPU, cache, PipelineOptions(cfg_batch=False)), batched=False)
    model = load_model("tiny", CPU, cache, PipelineOptions(compile=mode))
    transformer = model.t2v.transformer
    if mode == "regional":
        assert all(block._compiled_call_impl is not None for block in transformer.blocks)
    else:
        # The guidance hook wraps the model's forward, compiled by torch.compile.
        assert hasattr(model.guidance.fn_ref.original_forward, "_torchdynamo_orig_callable")
    # The replica's warm-up pays the compilation; the videos after it reuse it.
    PipelineRunner(model).warm_up("64x64x25")
    torch.testing.assert_close(latents(model), plain, **SAME)


@pytest.mark.parametrize("memory_mode", ["model_offload", "group_offload"])
def test_offloaded_models_give_the_same_latents_and_turn_vae_tiling_on(cache, memory_mode):
    plain = latents(load_model("tiny", CPU, cache))
    model = load_model("tiny", CPU, cache, PipelineOptions(memory_mode=memory_mode))
    assert model.options["memory_mode"] == memory_mode and model.options["vae_tiling"]
    assert model.t2v.vae.use_tiling
    hooked = [name for name, module in model.t2v.transformer.named_modules() if hasattr(module, "_diffusers_hook")]
    assert hooked or hasattr(model.t2v.transformer, "_hf_hook")  # group offload's hooks, or accelerate's
    torch.testing.assert_close(latents(model), plain, rtol=0, atol=0)


def test_vae_tiling_decodes_in_tiles_within_three_levels(cache):
    plain = PipelineRunner(load_model("tiny", CPU, cache, PipelineOptions(vae_tiling="off")))
    tiled = PipelineRunner(load_model("tiny", CPU, cache, PipelineOptions(vae_tiling="on")))
    tiles = count_calls(tiled.model.t2v.vae.decoder)
    untiled = count_calls(plain.model.t2v.vae.decoder)
    # 384x384: over the 256-pixel tile, so 2x2 overlapping tiles instead of one decode.
    latents_in = torch.randn(1, 48, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    difference = (plain._decode(latents_in).float() - tiled._decode(latents_in).float()).abs()
    assert tiles[0] > untiled[0] > 0
    # Tiles are blended where they overlap: on the tiny model's random weights (whose output is
    # noise, the worst case for seams) the frames differ by under 3 levels of 255 on average.
    assert difference.mean() < 3


def test_fast_mode_skips_blocks_stays_close_and_is_off_again_afterwards(cache):
    model = load_model("tiny", CPU, cache)
    last_block = count_calls(model.t2v.transformer.blocks[-1].ffn)  # runs only when the block does
    quality = latents(model, steps=10)
    quality_calls, last_block[0] = last_block[0], 0
    fast = latents(model, steps=10, speed="fast")
    assert last_block[0] < quality_calls  # whole steps served from the cache
    # The tiny model's latents are of order 1: fast mode moves them by under 5%.
    assert (fast - quality).abs().max() < 0.05
    assert not torch.equal(fast, quality)
    torch.testing.assert_close(latents(model, steps=10), quality, rtol=0, atol=0)


def test_the_attention_backend_is_the_fastest_installed():
    hopper, ada, turing = (9, 0), (8, 9), (7, 5)
    assert pick_attention_backend(hopper, {"flash_attn_interface", "sageattention", "flash_attn"}) == "_flash_3"
    assert pick_attention_backend(ada, {"flash_attn_interface", "sageattention"}) == "sage"
    assert pick_attention_backend(ada, {"flash_attn"}) == "flash"
    assert pick_attention_backend(hopper, set()) == "_native_cudnn"
    assert pick_attention_backend(turing, {"flash_attn", "sageattention"}) == "native"


def test_a_named_attention_backend_is_set_on_every_attention(cache):
    model = load_model("tiny", CPU, cache, PipelineOptions(attention_backend="_native_efficient"))
    assert model.options["attention_backend"] == "_native_efficient"
    blocks = model.t2v.transformer.blocks
    backends = {attention.processor._attention_backend.value for b in blocks for attention in (b.attn1, b.attn2)}
    assert backends == {"_native_efficient"}
