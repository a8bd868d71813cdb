"""Each speed and memory option against the plain path, on the CPU with the tiny model: the same
latents within a stated tolerance, and proof that the option did what it says (fewer transformer
calls, compiled blocks and no compilation after the warm-up, offload hooks, tiles, skipped
blocks, the attention kernel that works). Their speed is the GPU check's business
(`serve_app.benchmark.gpu_check`), not a test's."""

import dataclasses
import logging

import pytest
import torch
from PIL import Image
from support.compiling import COMPILE_WARM_UP

from serve_app.config import PipelineOptions
from serve_app.engine.errors import ModelLoadError
from serve_app.engine.model import LoadedModel, decode_to_uint8, load_model
from serve_app.engine.pipeline import PipelineRunner
from serve_app.engine.speedups import AUTO_ATTENTION, set_first_working_backend
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest

# The tiny pipeline runs here: seconds a test, not part of `make test-fast`.
pytestmark = pytest.mark.model

CPU = torch.device("cpu")
# Float32 on a CPU: batching or compiling changes only the order of floating-point sums.
SAME = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def cache(tiny_cache):
    return tiny_cache  # the run's one tiny checkpoint


def generation(steps: int = 3, width: int = 64, image: bytes | None = None, **fields) -> GenerationRequest:
    defaults = dict(
        prompt="a fox in the snow", negative_prompt=DEFAULT_NEGATIVE_PROMPT, height=64, width=width, num_frames=25,
        num_inference_steps=steps, guidance_scale=5.0, fps=24, seed=3, image_png=image, model="tiny", shift=5.0,
    )  # fmt: skip
    return GenerationRequest(**{**defaults, **fields})


@torch.inference_mode()
def latents(model: LoadedModel, request: GenerationRequest | None = None, batched: bool = True) -> torch.Tensor:
    """Denoise as the runner does, stopping at the latents; `batched=False`: without the guidance hook."""
    runner = PipelineRunner(model if batched else dataclasses.replace(model, guidance=None))
    request = request or generation()
    return runner.denoise(request, runner.encode_prompts(request))


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def png(size=(64, 64)) -> bytes:
    from io import BytesIO

    out = BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_guidance_in_one_batch_gives_the_same_latents_with_half_the_transformer_calls(cache):
    model = load_model("tiny", CPU, cache)
    assert model.options["cfg_batch"] and model.plan.cfg_batch
    first_block = count_calls(model.t2v.transformer.blocks[0])
    plain = latents(model, batched=False)
    plain_calls, first_block[0] = first_block[0], 0
    batched = latents(model)
    assert plain_calls == 2 * 3 and first_block[0] == 3
    torch.testing.assert_close(batched, plain, **SAME)
    # Text+image to video too: its first frame is conditioned the same way.
    with_image = generation(image=png())
    torch.testing.assert_close(latents(model, with_image), latents(model, with_image, batched=False), **SAME)


@pytest.mark.parametrize("memory_mode", ["full", "model_offload"])
def test_batched_guidance_lasts_generation_after_generation_in_every_placement(cache, memory_mode):
    # diffusers re-runs enable_model_cpu_offload at the end of every call of a model-offloaded
    # pipeline, which reset the transformer's forward: block 0 ran [3, 6, 6] times in three
    # 3-step generations, guidance one pass at a time from the second on.
    model = load_model("tiny", CPU, cache, PipelineOptions(memory_mode=memory_mode))
    first_block = count_calls(model.t2v.transformer.blocks[0])
    runner = PipelineRunner(model)
    calls = []
    for request in (generation(), generation(image=png()), generation()):
        runner.run(request)
        calls.append(first_block[0])
        first_block[0] = 0
    assert calls == [3, 3, 3]


def test_the_compiled_forward_lasts_generation_after_generation_with_model_offload(cache):
    # Model offload's hook calls the guidance hook, which calls the compiled forward: one batched
    # call a step in each generation means the compiled forward ran, not the model's own. Eagerly
    # (`force_eager`): which forward runs is the point here; compiling is tested above.
    model = load_model("tiny", CPU, cache, PipelineOptions(memory_mode="model_offload", compile="full"))
    compiled = model.guidance.fn_ref.original_forward
    assert hasattr(compiled, "_torchdynamo_orig_callable")
    first_block = count_calls(model.t2v.transformer.blocks[0])
    calls = []
    with torch.compiler.set_stance("force_eager"):
        for _ in range(2):
            latents(model)
            calls.append(first_block[0])
            first_block[0] = 0
    assert calls == [3, 3] and model.guidance.fn_ref.original_forward is compiled


def test_cfg_batch_off_runs_guidance_one_pass_at_a_time(cache):
    model = load_model("tiny", CPU, cache, PipelineOptions(cfg_batch=False))
    assert model.guidance is None and not model.plan.cfg_batch and model.options["cfg_batch"] is False


@pytest.mark.compiles
@pytest.mark.parametrize("mode", ["regional", "full"])
def test_after_the_warm_up_no_request_compiles_again_and_the_latents_are_the_same(cache, mode):
    plain = load_model("tiny", CPU, cache, PipelineOptions(cfg_batch=False))
    model = load_model("tiny", CPU, cache, PipelineOptions(compile=mode))
    transformer = model.t2v.transformer
    if mode == "regional":
        # Each block's own forward is compiled: the step cache's hooks wrap it, never enter it.
        assert all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in transformer.blocks)
    else:
        # The guidance hook wraps the model's forward, compiled by torch.compile.
        assert hasattr(model.guidance.fn_ref.original_forward, "_torchdynamo_orig_callable")
    runner = PipelineRunner(model)
    torch._dynamo.utils.counters.clear()
    runner.warm_up(COMPILE_WARM_UP)
    # One graph for guidance's batch of two, one for a batch of one (dynamo specialises a size of 1):
    # a text+image request takes the text-only graph (`full`: 4 before its `None` image was left out).
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    requests = [
        generation(),  # guidance in a batch of two
        generation(guidance_scale=1.0),  # a batch of one
        generation(speed_mode="fast"),  # the step cache around the blocks
        generation(guidance_scale=1.0, speed_mode="fast"),
        generation(width=128, steps=2),  # another size: dynamic shapes
        generation(),  # quality again, after the step cache's hooks came and went
        generation(image=png()),  # text+image: the pipeline passes encoder_hidden_states_image=None
        generation(image=png(), guidance_scale=1.0),
        generation(image=png(), speed_mode="fast"),
    ]
    with torch._dynamo.config.patch(error_on_recompile=True):
        outputs = [latents(model, request) for request in requests]
    torch.testing.assert_close(outputs[0], latents(plain, batched=False), **SAME)
    torch.testing.assert_close(outputs[5], outputs[0], **SAME)


@pytest.mark.parametrize("memory_mode", ["text_encoder_offload", "model_offload", "group_offload"])
def test_offloaded_models_give_the_same_latents(cache, memory_mode):
    plain = latents(load_model("tiny", CPU, cache))
    model = load_model("tiny", CPU, cache, PipelineOptions(memory_mode=memory_mode))
    assert model.plan.memory_mode == memory_mode == model.options["memory_mode"]
    if memory_mode == "text_encoder_offload":
        # Away from the device between jobs (on a CPU replica the device is the CPU itself).
        assert next(model.t2v.text_encoder.parameters()).device == CPU
    else:
        hooked = [name for name, module in model.t2v.transformer.named_modules() if hasattr(module, "_diffusers_hook")]
        assert hooked or hasattr(model.t2v.transformer, "_hf_hook")  # group offload's hooks, or accelerate's
    torch.testing.assert_close(latents(model), plain, rtol=0, atol=0)


def test_vae_tiling_decodes_in_tiles_within_three_levels(cache):
    plain = load_model("tiny", CPU, cache, PipelineOptions(vae_tiling="off"))
    tiled = load_model("tiny", CPU, cache, PipelineOptions(vae_tiling="on"))
    assert tiled.plan.vae_tiling and tiled.t2v.vae.use_tiling and not plain.t2v.vae.use_tiling
    tiles = count_calls(tiled.t2v.vae.decoder)
    untiled = count_calls(plain.t2v.vae.decoder)
    # 576x576: over the 512-pixel tile, so 2x2 overlapping tiles instead of one decode.
    latents_in = torch.randn(1, 48, 2, 36, 36, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        difference = decode_to_uint8(plain.t2v.vae, latents_in).float() - decode_to_uint8(tiled.t2v.vae, latents_in)
    assert tiles[0] > untiled[0] > 0
    # Tiles are blended where they overlap: on the tiny model's random weights (whose output is
    # noise, the worst case for seams) the frames differ by under 3 levels of 255 on average.
    assert difference.abs().mean() < 3


def test_fast_mode_skips_blocks_stays_close_and_is_off_again_afterwards(cache):
    model = load_model("tiny", CPU, cache)
    last_block = count_calls(model.t2v.transformer.blocks[-1].ffn)  # runs only when the block does
    quality = latents(model, generation(steps=10))
    quality_calls, last_block[0] = last_block[0], 0
    fast = latents(model, generation(steps=10, speed_mode="fast"))
    assert last_block[0] < quality_calls  # whole steps served from the cache
    # The tiny model's latents are of order 1: fast mode moves them by under 5%.
    assert (fast - quality).abs().max() < 0.05
    assert not torch.equal(fast, quality)
    torch.testing.assert_close(latents(model, generation(steps=10)), quality, rtol=0, atol=0)


def test_auto_never_picks_sageattention_for_you():
    # SageAttention quantises queries and keys to 8 bits: close to, not the same as, the others.
    assert "sage" not in AUTO_ATTENTION and AUTO_ATTENTION[-1] == "native"


def test_a_backend_that_fails_its_first_call_falls_back_to_the_next_with_a_warning(cache, caplog):
    model = load_model("tiny", CPU, cache)
    # cuDNN attention passes diffusers' checks on this machine, and fails on a CPU tensor: a real failure.
    with caplog.at_level(logging.WARNING, logger="serve_app.engine.speedups"):
        chosen = set_first_working_backend(model.t2v.transformer, ("_native_cudnn", "native"), CPU)
    assert chosen == "native"
    assert "_native_cudnn does not work here" in caplog.text
    torch.testing.assert_close(latents(model), latents(load_model("tiny", CPU, cache)), rtol=0, atol=0)


def test_a_named_backend_that_is_not_installed_stops_the_replica_with_what_to_install(cache):
    # diffusers' own check: flash-attn >= 2.6.3 is not installed here.
    with pytest.raises(ModelLoadError, match=r"attention_backend 'flash'.*flash-attn>=2\.6\.3"):
        load_model("tiny", CPU, cache, PipelineOptions(attention_backend="flash"))


def test_a_named_attention_backend_is_set_on_every_attention(cache):
    model = load_model("tiny", CPU, cache, PipelineOptions(attention_backend="_native_flash"))
    assert model.options["attention_backend"] == "_native_flash"
    blocks = model.t2v.transformer.blocks
    backends = {attention.processor._attention_backend.value for b in blocks for attention in (b.attn1, b.attn2)}
    assert backends == {"_native_flash"}
