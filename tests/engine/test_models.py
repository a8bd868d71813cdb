"""Several models, engine side, on the CPU: `tiny-turbo` loads through FastWan2.2's layout (a
model_index.json naming WanDMDPipeline, which diffusers lacks) into the pipeline we run, and
samples by its DMD recipe: the recipe's timesteps, one transformer pass a step, the re-noising
drawn from the request's own generator (the same seed, the same bytes, whatever the global RNG
does), and not tiny's video. Also each request's shift, and the hub commit a revision resolved."""

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import yaml
from support.service import ROOT

from serve_app.config import AppArgs
from serve_app.engine.model import load_model, resolved_commit
from serve_app.engine.pipeline import PipelineRunner
from serve_app.engine.tiny import TINY_TURBO, ensure_tiny_checkpoint
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest

# The tiny pipeline runs here: seconds a test, not part of `make test-fast`.
pytestmark = pytest.mark.model

CPU = torch.device("cpu")
# The local config's models: `tiny` (Wan2.2's recipe) and `tiny-turbo` (FastWan2.2's).
SPECS = {
    spec.id: spec
    for spec in AppArgs.model_validate(
        yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())["applications"][0]["args"]
    ).served_models
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models-cache")


@pytest.fixture(scope="module")
def runners(cache) -> dict[str, PipelineRunner]:
    return {name: PipelineRunner(load_model(spec.checkpoint, CPU, cache), spec) for name, spec in SPECS.items()}


def request(model: str, **fields) -> GenerationRequest:
    recipe = SPECS[model].recipe
    defaults = dict(
        prompt="a kite over the dunes", negative_prompt=DEFAULT_NEGATIVE_PROMPT, height=64, width=64, num_frames=25,
        num_inference_steps=recipe.default_steps, guidance_scale=recipe.default_guidance, fps=24, seed=5,
        model=model, shift=recipe.shift_for(64, 64),
    )  # fmt: skip
    return GenerationRequest(**{**defaults, **fields})


@contextmanager
def transformer_timesteps(runner: PipelineRunner) -> Iterator[list[list[float]]]:
    """The timesteps of every transformer call in the block, one list a call."""
    seen: list[list[float]] = []

    def record(module, args, kwargs) -> None:
        seen.append(sorted(set(kwargs["timestep"].flatten().tolist()), reverse=True))

    hook = runner.model.t2v.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield seen
    finally:
        hook.remove()


def test_tiny_turbo_has_fastwans_layout_and_tinys_text_encoder_and_vae(cache, runners):
    folder = ensure_tiny_checkpoint(cache, TINY_TURBO)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanDMDPipeline"
    assert (index["transformer"], index["vae"]) == (
        ["diffusers", "WanTransformer3DModel"],
        ["diffusers", "AutoencoderKLWan"],
    )
    turbo, tiny = runners["tiny-turbo"].model.t2v, runners["tiny"].model.t2v
    # Loaded into diffusers' WanPipeline, with the recipe's scheduler made for each generation.
    assert type(turbo).__name__ == "WanPipeline" and turbo.config.expand_timesteps is True
    for module in ("text_encoder", "vae"):
        for (name, mine), theirs in zip(
            getattr(turbo, module).state_dict().items(), getattr(tiny, module).state_dict().values(), strict=True
        ):
            assert torch.equal(mine, theirs), name
    assert not torch.equal(turbo.transformer.proj_out.weight, tiny.transformer.proj_out.weight)
    assert runners["tiny-turbo"].description["model"] == "tiny-turbo"


def test_tiny_turbo_samples_at_the_recipe_timesteps_one_pass_a_step(runners):
    runner = runners["tiny-turbo"]
    steps = []
    with transformer_timesteps(runner) as seen:
        result = runner.run(request("tiny-turbo"), report=steps.append)
    assert SPECS["tiny-turbo"].recipe.timesteps == [1000, 757, 522]
    # Guidance off: one transformer call a step, at each of the recipe's timesteps.
    assert seen == [[1000.0], [757.0], [522.0]]
    assert [(p.step, p.total) for p in steps] == [(1, 3), (2, 3), (3, 3)]
    scheduler = runner.model.t2v.scheduler
    torch.testing.assert_close(scheduler.sigmas, torch.tensor([1.0, 0.757, 0.522, 0.0]))
    assert scheduler.config.stochastic_sampling and result.model == "tiny-turbo"


def test_without_guidance_tiny_makes_one_transformer_call_a_step(runners):
    runner = runners["tiny"]
    with transformer_timesteps(runner) as seen:
        runner.run(request("tiny", num_inference_steps=2, guidance_scale=1.0))
    assert len(seen) == 2


def test_the_same_seed_makes_the_same_bytes_whatever_the_global_rng_and_not_tinys(runners):
    turbo = runners["tiny-turbo"]
    torch.manual_seed(1)
    first = turbo.run(request("tiny-turbo")).video_mp4
    torch.manual_seed(2)  # DMD's re-noising draws from the request's generator, never from here
    assert turbo.run(request("tiny-turbo")).video_mp4 == first
    assert turbo.run(request("tiny-turbo", seed=6)).video_mp4 != first
    tiny = runners["tiny"].run(request("tiny", num_inference_steps=3, guidance_scale=1.0)).video_mp4
    assert tiny != first


def test_the_request_shift_moves_unipcs_schedule(runners):
    runner = runners["tiny"]
    low = runner.run(request("tiny", num_inference_steps=2, shift=3.0)).video_mp4
    sigmas_low = runner.model.t2v.scheduler.sigmas.clone()
    high = runner.run(request("tiny", num_inference_steps=2, shift=5.0)).video_mp4
    assert runner.model.t2v.scheduler.config.flow_shift == 5.0
    assert sigmas_low[1] < runner.model.t2v.scheduler.sigmas[1] and low != high


def test_a_revision_resolves_to_the_commit_in_the_hub_cache(tmp_path, monkeypatch):
    # The layout from_pretrained leaves in the hub cache: refs/<revision> names the snapshot's commit.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--FastVideo--FastWan2.2-TI2V-5B-FullAttn-Diffusers"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    assert resolved_commit("FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers", None) == commit
    assert resolved_commit("FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers", "main") == commit
    assert resolved_commit("FastVideo/FastWan2.2-TI2V-5B-FullAttn-Diffusers", commit) == commit
    assert resolved_commit(str(tmp_path), None) is None  # a local folder has no commit
