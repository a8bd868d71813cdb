"""The memory model of the full-size Wan2.2-TI2V-5B, traced on the meta device (no GPU, no
weights), the plans it chooses per GPU class at the guide's default size, and what a replica
refuses."""

import functools

import pytest
import torch

from serve_app.capacity import PLANS, Capacity, GiB, Plan, StageFit
from serve_app.config import PipelineOptions
from serve_app.engine import memory
from serve_app.engine.errors import ModelLoadError
from serve_app.engine.full_size import full_size_pipeline
from serve_app.engine.memory import PIPELINE_LATENTS, LiveBytes, MemoryTracer, meta_copy, module_bytes, peak_bytes
from serve_app.engine.model import decode_to_uint8, memory_tracer, plan_memory, usable_bytes
from serve_app.engine.speedups import set_vae_tiling

SIZE = (1280, 704, 121)  # the guide's default
OPTIONS = PipelineOptions(warmup_size="1280x704x121")


def latent_shape(width: int, height: int, frames: int) -> tuple[int, ...]:
    return (1, 48, (frames - 1) // 4 + 1, height // 16, width // 16)


def denoising_step(transformer: torch.nn.Module, width: int, height: int, frames: int):
    """One transformer call with guidance in a batch of two, beside the pipeline's own latents."""
    shape = latent_shape(width, height, frames)

    def step():
        latents = [torch.empty(shape, device="meta") for _ in range(PIPELINE_LATENTS)]
        return latents, transformer(
            hidden_states=torch.empty(2, *shape[1:], device="meta", dtype=torch.bfloat16),
            timestep=torch.empty(2, shape[2] * shape[3] * shape[4] // 4, device="meta"),
            encoder_hidden_states=torch.empty(2, 512, 4096, device="meta", dtype=torch.bfloat16),
            return_dict=False,
        )

    return step


@pytest.fixture(scope="module")
def pipe():
    """Full size, bf16 as on a GPU, on the meta device."""
    return full_size_pipeline(torch.device("meta"), torch.bfloat16)


@pytest.fixture(scope="module")
def tracer(pipe) -> MemoryTracer:
    return memory_tracer(pipe, OPTIONS)


def test_weights_are_the_modules_own(tracer):
    gib = {name: round(size / GiB, 1) for name, size in tracer.weights.items()}
    # UMT5-XXL and the transformer in bf16 (its norms and embeddings float32), the VAE float32.
    assert gib == {"text_encoder": 10.6, "transformer": 9.3, "vae": 2.6}


@pytest.mark.slow
def test_the_random_full_size_modules_are_built_in_bf16_straight():
    # Built in float32 and then cast, they once took 43.7 GiB on the GPU check's device before its
    # memory plan was made: more than a 24 or 48 GB card has, and counted as used on an 80 GB one.
    counter = LiveBytes()
    with counter:
        pipe = full_size_pipeline(torch.device("meta"), torch.bfloat16)
    weights = sum(module_bytes(module) for module in (pipe.transformer, pipe.text_encoder, pipe.vae))
    assert counter.peak < 1.01 * weights < 23 * GiB


def test_the_outputs_the_tracer_remembers_count_what_pytorchs_kernels_make(tracer, monkeypatch):
    # The tiled decode at 512x320 (six tiles): without remembering, first time, and all remembered.
    set_vae_tiling(tracer.vae, True)
    latents = functools.partial(torch.empty, latent_shape(512, 320, 9), device="meta")
    decode = functools.partial(peak_bytes, lambda: decode_to_uint8(tracer.vae, latents()))
    memory._META_OUTPUTS.clear()
    with monkeypatch.context() as patch:
        patch.setattr(memory, "_signature", lambda func, args, kwargs: None)
        kernels = decode()
    assert not memory._META_OUTPUTS
    first, remembered = decode(), decode()
    assert kernels == first == remembered > 0 and memory._META_OUTPUTS
    # A view, an in-place operation and an `out=` one are never remembered: their storage is an input's.
    x = torch.empty(4, 4, device="meta")
    assert memory._signature(torch.ops.aten.add.Tensor, (x, x), {}) is not None
    for func in (torch.ops.aten.t.default, torch.ops.aten.add_.Tensor, torch.ops.aten.add.out):
        assert memory._signature(func, (x, x), {}) is None


def test_80_gib_gets_the_fastest_plan(tracer):
    capacity = plan_memory(tracer, 80 * GiB, OPTIONS)
    assert capacity.plan == PLANS[0] == Plan(memory_mode="full", vae_tiling=False, cfg_batch=True)


@pytest.mark.parametrize(
    ("free_gib", "expected"),
    [
        # A 48 GB L40: the untiled float32 decode beside every weight is over; without the text
        # encoder (10.6 GiB, on the GPU only for the prompts) it fits.
        (44, Plan(memory_mode="text_encoder_offload", vae_tiling=False, cfg_batch=True)),
        # A 24 GB card: one model at a time, guidance one pass at a time, the VAE in tiles (whose
        # trace takes seconds more).
        pytest.param(22, Plan(memory_mode="model_offload", vae_tiling=True, cfg_batch=False), marks=pytest.mark.slow),
    ],
)
def test_the_chosen_plan_fits_the_card_at_1280x704x121(tracer, free_gib, expected):
    capacity = plan_memory(tracer, free_gib * GiB, OPTIONS)
    assert capacity.plan == expected
    peak = capacity.peak_bytes(*SIZE, guidance=True, image=True)
    assert peak <= usable_bytes(free_gib * GiB) < free_gib * GiB
    # And every faster plan would not have.
    faster = PLANS[: PLANS.index(expected)]
    assert all(not tracer.capacity(plan, capacity.budget_bytes).fits(*SIZE, True, True) for plan in faster)


@pytest.mark.slow  # traces every plan (or the tiled decoder): seconds
def test_a_card_no_plan_fits_stops_the_replica_with_what_it_can_make(tracer):
    with pytest.raises(ModelLoadError, match=r"No allowed memory plan fits warmup_size 1280x704x121.*Set warmup_size"):
        plan_memory(tracer, 4 * GiB, OPTIONS)


@pytest.mark.slow  # traces three more sizes: seconds
def test_the_fits_match_a_direct_trace_at_other_sizes(tracer):
    # The fits come from 9- and 13-frame traces at 1280x704 and 640x352: check them at sizes
    # they were not fitted on, against a trace of the whole video.
    set_vae_tiling(tracer.vae, False)
    for width, height, frames in ((960, 544, 81), (832, 480, 49)):
        latents = functools.partial(torch.empty, latent_shape(width, height, frames), device="meta")
        decode = peak_bytes(lambda: decode_to_uint8(tracer.vae, latents()))  # noqa: B023
        assert tracer.decoding(False).bytes(width, height, frames) == pytest.approx(decode, rel=0.01)
        step = peak_bytes(denoising_step(tracer.transformer, width, height, frames))
        assert tracer.denoising(2).bytes(width, height, frames) == pytest.approx(step, rel=0.01)


def test_two_layers_peak_like_the_whole_stack(pipe, tracer):
    # The tracer runs two layers of each stack; the whole of each, once, to show it is the same.
    text_encoder, transformer = meta_copy(pipe.text_encoder), meta_copy(pipe.transformer)
    assert len(transformer.blocks) == 30 and len(tracer.transformer.blocks) == 2
    ids = functools.partial(torch.zeros, 1, 512, dtype=torch.long, device="meta")
    assert peak_bytes(lambda: text_encoder(input_ids=ids())) == peak_bytes(lambda: tracer.text_encoder(input_ids=ids()))
    assert peak_bytes(denoising_step(transformer, 960, 544, 81)) == peak_bytes(
        denoising_step(tracer.transformer, 960, 544, 81)
    )


def test_batched_guidance_doubles_the_denoising_activations(tracer):
    one, two = (tracer.denoising(batch).bytes(*SIZE) for batch in (1, 2))
    assert 5 * GiB < one < 5.5 * GiB and two == pytest.approx(2 * one, rel=0.02)


@pytest.mark.slow  # traces every plan (or the tiled decoder): seconds
def test_tiling_decodes_in_a_fraction_of_the_memory(tracer):
    untiled, tiled = (tracer.decoding(tiled).bytes(*SIZE) for tiled in (False, True))
    assert untiled > 18 * GiB and tiled < untiled / 2


# What a replica refuses, from a Capacity alone (the jobs deployment checks it, without torch).

CAPACITY = Capacity(
    plan=Plan(memory_mode="full", vae_tiling=False, cfg_batch=True),
    budget_bytes=41 * GiB,
    stages={
        "text_encoding": StageFit(fixed=23 * GiB),
        "image_encoding": StageFit(fixed=23 * GiB, per_pixel=2000),
        "denoising_batch_1": StageFit(fixed=22 * GiB, per_pixel=150, per_voxel=50),
        "denoising_batch_2": StageFit(fixed=22 * GiB, per_pixel=300, per_voxel=100),
        "decoding": StageFit(fixed=22 * GiB, per_pixel=21500, per_voxel=12),
    },
)


def test_a_video_that_fits_is_not_refused():
    assert CAPACITY.refusal(640, 352, 121, guidance=True, image=True) is None


def test_a_refusal_names_the_need_the_budget_and_the_largest_videos_that_fit():
    message = CAPACITY.refusal(1280, 704, 121, guidance=True, image=False)
    assert message.startswith("1280x704 with 121 frames needs about 41.3 GiB of GPU memory")
    assert "have 41.0 GiB for a video (full, VAE tiling off, guidance batched)" in message
    frames = CAPACITY.largest_frames(1280, 704, guidance=True, image=False)
    width, height = CAPACITY.largest_size(1280, 704, 121, guidance=True, image=False)
    assert f"At 1280x704 they make up to {frames} frames." in message
    assert f"With 121 frames, up to {width}x{height}." in message
    assert frames % 4 == 1 and CAPACITY.fits(1280, 704, frames, True, False)
    assert not CAPACITY.fits(1280, 704, frames + 4, True, False)
    assert width % 32 == 0 and height % 32 == 0 and CAPACITY.fits(width, height, 121, True, False)


def test_without_guidance_or_without_batching_the_batch_of_one_counts():
    denoising_bound = CAPACITY.model_copy(update={"stages": {**CAPACITY.stages, "decoding": StageFit(fixed=0)}})
    batch_of_two = denoising_bound.stages["denoising_batch_2"].bytes(1280, 704, 121)
    batch_of_one = denoising_bound.stages["denoising_batch_1"].bytes(1280, 704, 121)
    assert denoising_bound.peak_bytes(1280, 704, 121, guidance=True, image=False) == batch_of_two
    assert denoising_bound.peak_bytes(1280, 704, 121, guidance=False, image=False) == batch_of_one
    sequential = denoising_bound.model_copy(
        update={"plan": Plan(memory_mode="full", vae_tiling=False, cfg_batch=False)}
    )
    assert sequential.peak_bytes(1280, 704, 121, guidance=True, image=False) == batch_of_one
