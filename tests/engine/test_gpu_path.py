"""The path a GPU replica takes, run on the CPU: the tiny checkpoint loaded in bfloat16 through the
replica's own code (`dtype: bfloat16`, which `auto` means on a GPU), in every memory mode.

Each test would have caught a fault that kept replicas from starting or halved their speed on a
GPU: `from_pipe` casting the shared modules to float32, batched guidance running every pass twice
when the text encoder's dtype differs from the transformer's."""

import collections
import io

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.config import PipelineOptions
from serve_app.engine.model import LoadedModel, load_model
from serve_app.engine.pipeline import PipelineRunner
from serve_app.engine.speedups import BatchedGuidance
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest

# The tiny pipeline runs here: seconds a test, not part of `make test-fast`.
pytestmark = pytest.mark.model

CPU = torch.device("cpu")
BF16 = PipelineOptions(dtype="bfloat16")


@pytest.fixture(scope="module")
def cache(tiny_cache):
    return tiny_cache  # the run's one tiny checkpoint


def parameter_dtypes(module: torch.nn.Module) -> dict[str, torch.dtype]:
    return {name: parameter.dtype for name, parameter in module.named_parameters()}


def kept_in_float32(name: str, module: torch.nn.Module) -> bool:
    """What diffusers' from_pretrained keeps in float32: a `_keep_in_fp32_modules` name in the path."""
    return bool(set(module._keep_in_fp32_modules or ()) & set(name.split(".")))


def png(size=(64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def request(**fields) -> GenerationRequest:
    defaults = dict(
        prompt="a red fox in fresh snow", negative_prompt=DEFAULT_NEGATIVE_PROMPT, width=64, height=64, num_frames=25,
        num_inference_steps=3, guidance_scale=5.0, fps=24, seed=7, model="tiny", shift=5.0,
    )  # fmt: skip
    return GenerationRequest(**{**defaults, **fields})


@pytest.mark.parametrize("memory_mode", ["full", "text_encoder_offload", "model_offload", "group_offload"])
def test_a_bf16_replica_keeps_bf16_weights_and_float32_where_it_must(cache, memory_mode):
    model = load_model("tiny", CPU, cache, PipelineOptions(dtype="bfloat16", memory_mode=memory_mode))
    assert model.options["dtype"] == "bfloat16" and model.plan.memory_mode == memory_mode
    for pipe in (model.t2v, model.i2v):
        transformer = parameter_dtypes(pipe.transformer)
        expected = {
            name: torch.float32 if kept_in_float32(name, pipe.transformer) else torch.bfloat16 for name in transformer
        }
        assert transformer == expected
        assert set(transformer.values()) == {torch.bfloat16, torch.float32}
        assert set(parameter_dtypes(pipe.text_encoder).values()) == {torch.bfloat16}
        # The VAE decodes in float32: a bf16 Wan2.2 VAE visibly degrades the video.
        assert set(parameter_dtypes(pipe.vae).values()) == {torch.float32}
    # One set of weights for both pipelines.
    assert model.i2v.transformer is model.t2v.transformer and model.i2v.text_encoder is model.t2v.text_encoder


@pytest.fixture(scope="module")
def bf16(cache) -> LoadedModel:
    return load_model("tiny", CPU, cache, BF16)


@pytest.fixture(scope="module")
def bf16_sequential(cache) -> LoadedModel:
    return load_model("tiny", CPU, cache, PipelineOptions(dtype="bfloat16", cfg_batch=False))


@pytest.mark.parametrize("image", [False, True], ids=["t2v", "ti2v"])
@pytest.mark.parametrize(
    "fields",
    [{}, {"speed_mode": "fast", "num_inference_steps": 6}, {"guidance_scale": 1.0}],
    ids=["quality", "fast", "no-guidance"],
)
@pytest.mark.parametrize("batched", [True, False], ids=["cfg-batched", "cfg-sequential"])
def test_bf16_generations_make_a_video_in_every_mode(bf16, bf16_sequential, image, fields, batched):
    runner = PipelineRunner(bf16 if batched else bf16_sequential)
    result = runner.run(request(image_png=png() if image else None, **fields))
    assert result.video_mp4[4:8] == b"ftyp" and result.thumbnail_jpeg[:2] == b"\xff\xd8"


@torch.inference_mode()
def denoised(model: LoadedModel, generation: GenerationRequest) -> torch.Tensor:
    runner = PipelineRunner(model)
    return runner.denoise(generation, runner.encode_prompts(generation)).float()


def test_bf16_batched_guidance_matches_guidance_one_pass_at_a_time(bf16, bf16_sequential):
    for generation in (request(), request(image_png=png())):
        batched, sequential = denoised(bf16, generation), denoised(bf16_sequential, generation)
        # bf16 has 8 bits of mantissa: a batch of two sums in another order, well within that.
        assert (batched - sequential).abs().max() < 0.05
        assert np.isfinite(batched.numpy()).all()


def test_batched_guidance_runs_one_pass_a_step_when_the_text_encoder_has_another_dtype(cache):
    model = load_model("tiny", CPU, cache, BF16)
    # A float32 text encoder beside a bf16 transformer: the embeddings change dtype on their way
    # to the transformer, which must not turn the unconditional call into a second batch of two.
    model.t2v.text_encoder.float()
    calls = [0]
    model.t2v.transformer.blocks[0].register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    PipelineRunner(model).run(request(num_inference_steps=4))
    assert calls[0] == 4


def test_batched_guidance_refuses_calls_out_of_order():
    hook = BatchedGuidance()
    hook.fn_ref = type("Ref", (), {"original_forward": staticmethod(lambda hidden_states, **kw: (hidden_states,))})()
    latents, text, negative = torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), 2.0)
    step = {"timestep": torch.zeros(1), "encoder_hidden_states_image": None}
    with hook.guiding(negative):
        with pytest.raises(RuntimeError, match="without its conditional one"):
            hook.new_forward(None, latents, encoder_hidden_states=negative, **step)
        hook.new_forward(None, latents, encoder_hidden_states=text, **step)
        # The negative embeddings in another dtype are not the unconditional call's: its passes would
        # differ from the batch's.
        with pytest.raises(RuntimeError, match="was not its unconditional one"):
            hook.new_forward(None, latents, encoder_hidden_states=negative.to(torch.bfloat16), **step)
        # Nor are other latents.
        with pytest.raises(RuntimeError, match="was not its unconditional one"):
            hook.new_forward(None, latents + 1, encoder_hidden_states=negative, **step)


def test_dtypes_are_reported_with_every_job(bf16):
    description = PipelineRunner(bf16).description
    assert description["dtype"] == "bfloat16" and description["memory_mode"] == "full"
    counts = collections.Counter(str(p.dtype) for p in bf16.t2v.transformer.parameters())
    assert counts["torch.bfloat16"] > counts["torch.float32"] > 0
