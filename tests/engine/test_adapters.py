"""LoRA adapters on the tiny pipeline, on the CPU, without Ray: PEFT-made random adapters of the
tiny transformer (diffusers' keys, and lightx2v/Kohya `diffusion_model.` keys) change the video;
at scale 0, or in the next request without them, nothing is left of them, bit for bit; two combine
as `set_adapters` says; one of another base is refused before any denoising, and remembered; the
least recently used is evicted."""

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.service import SMALL

from serve_app.common.outbound import OutboundPolicy
from serve_app.config import PipelineOptions
from serve_app.engine.adapters import Adapters
from serve_app.engine.errors import LoraRefused
from serve_app.engine.lora_files import LoraFiles, LoraPolicy
from serve_app.engine.model import load_model
from serve_app.engine.pipeline import PipelineRunner
from serve_app.engine.tiny import random_lora
from serve_app.messages import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, LoraChoice, LoraSource

pytestmark = pytest.mark.model

REQUEST = GenerationRequest(
    prompt="a lantern", negative_prompt=DEFAULT_NEGATIVE_PROMPT, guidance_scale=5.0, fps=24, seed=7, model="tiny",
    shift=3.0, **SMALL,
)  # fmt: skip
POLICY = LoraPolicy(max_bytes=2**20, cache_bytes=2**24, fetch_timeout_s=5)


class Events:
    def __init__(self) -> None:
        self.loads: list[float] = []
        self.hits = 0
        self.evictions = 0

    def loaded(self, seconds: float) -> None:
        self.loads.append(seconds)

    def hit(self) -> None:
        self.hits += 1

    def evicted(self) -> None:
        self.evictions += 1


@pytest.fixture(scope="module")
def model(tiny_cache):
    return load_model("tiny", torch.device("cpu"), tiny_cache, PipelineOptions())


@pytest.fixture(scope="module")
def pristine(model):
    """The tiny transformer as loaded, before any adapter."""
    return copy.deepcopy(model.t2v.transformer)


@pytest.fixture(scope="module")
def files(tmp_path_factory, pristine) -> dict[str, LoraChoice]:
    """Adapters as files: two of diffusers' keys, one of lightx2v's, one of another base."""
    folder = tmp_path_factory.mktemp("loras")
    style, motion = random_lora(pristine, seed=1), random_lora(pristine, seed=2)
    # lightx2v / Kohya: `diffusion_model.` and Wan's own layer names, lora_down / lora_up.
    names = {"attn1": "self_attn", "attn2": "cross_attn", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o"}
    kohya = {}
    for key, value in random_lora(pristine, seed=3).items():
        parts = key.removeprefix("transformer.").replace("to_out.0", "to_out").split(".")
        parts = [names.get(part, names["to_out.0"] if part == "to_out" else part) for part in parts]
        kohya["diffusion_model." + ".".join(parts).replace("lora_A", "lora_down").replace("lora_B", "lora_up")] = value
    # Another base: the same layers, wider (as Wan2.1-14B's 5120 features are to the 5B's 3072).
    other_base = {key: torch.zeros(4, 96) if "lora_A" in key else value for key, value in style.items()}
    choices = {}
    for name, tensors in {"style": style, "motion": motion, "kohya": kohya, "other": other_base}.items():
        path = folder / f"{name}.safetensors"
        save_file(tensors, path)
        choices[name] = LoraChoice(path=name, scale=1.0, source=LoraSource(kind="path", location=str(path)))
    return choices


@pytest.fixture
def runner(model, tmp_path) -> PipelineRunner:
    """A runner whose adapters are all deleted after each test."""
    adapters = Adapters(model.t2v, LoraFiles(tmp_path, POLICY, OutboundPolicy()), 2, Events())
    yield PipelineRunner(model, adapters=adapters)
    for name in model.t2v.get_list_adapters().get("transformer", []):
        model.t2v.delete_adapters(name)


def latents(runner: PipelineRunner, *loras: LoraChoice) -> torch.Tensor:
    request = REQUEST.model_copy(update={"loras": loras})
    runner.adapters.activate(request.loras)
    with torch.inference_mode():
        return runner.denoise(request, runner.encode_prompts(request))


def scaled(choice: LoraChoice, scale: float) -> LoraChoice:
    return choice.model_copy(update={"scale": scale})


def test_an_adapter_changes_the_video_and_leaves_nothing_in_the_next_request(runner, files):
    before = latents(runner)
    styled = latents(runner, files["style"])
    after = latents(runner)
    assert not torch.equal(styled, before)
    assert torch.equal(after, before)  # none active: bit-identical to a replica that never loaded one


def test_at_scale_0_an_adapter_changes_nothing(runner, files):
    assert torch.equal(latents(runner, scaled(files["style"], 0.0)), latents(runner))


def test_two_adapters_combine_as_their_weights_fused_by_hand(runner, files, tiny_cache):
    combined = latents(runner, scaled(files["style"], 0.7), scaled(files["motion"], 1.5))
    # W + 0.7 B1 A1 + 1.5 B2 A2 on a transformer as loaded (alpha = rank: each scaled by 1).
    fresh = load_model("tiny", torch.device("cpu"), tiny_cache, PipelineOptions())
    fused = fresh.t2v.transformer.state_dict()
    for choice in (scaled(files["style"], 0.7), scaled(files["motion"], 1.5)):
        tensors = load_file(choice.source.location)
        for key in tensors:
            if ".lora_A." in key:
                layer = key.removeprefix("transformer.").split(".lora_A.")[0]
                delta = tensors[key.replace("lora_A", "lora_B")] @ tensors[key]
                fused[f"{layer}.weight"] = fused[f"{layer}.weight"] + choice.scale * delta
    fresh.t2v.transformer.load_state_dict(fused)
    by_hand = latents(PipelineRunner(fresh, adapters=runner.adapters))
    torch.testing.assert_close(combined, by_hand, rtol=1e-4, atol=1e-4)


def test_lightx2v_keys_load_and_change_the_video(runner, files):
    assert not torch.equal(latents(runner, files["kohya"]), latents(runner))


def test_an_adapter_of_another_base_is_refused_naming_it_and_remembered(runner, files):
    with pytest.raises(LoraRefused) as refused:
        latents(runner, files["style"], files["other"])
    assert refused.value.param == "loras[1].path" and "another base" in refused.value.message
    # Remembered: refused before the file is read again; the replica is unaffected.
    runner.adapters._files = None  # any read would now fail
    with pytest.raises(LoraRefused, match="another base"):
        latents(runner, files["other"])
    assert torch.equal(latents(runner), latents(runner))


def test_the_least_recently_used_adapter_is_evicted(runner, files):
    events = runner.adapters._events
    for name in ("style", "motion", "style", "kohya"):  # 2 a replica: motion goes, style stays
        latents(runner, files[name])
    assert events.evictions == 1 and events.hits == 1 and len(events.loads) == 3
    assert len(runner.adapters.loaded) == 2
    latents(runner, files["style"])
    assert events.hits == 2


def test_a_run_reports_each_adapter_its_sha256_and_its_load_time(runner, files):
    request = REQUEST.model_copy(update={"loras": (files["style"],)})
    first, second = runner.run(request), runner.run(request)
    (applied,) = first.loras
    assert applied.path == "style" and applied.scale == 1.0 and len(applied.sha256) == 64
    assert first.timings.lora_loading_s > 0 and second.timings.lora_loading_s == 0


def test_with_compile_adapters_swap_in_place_and_nothing_recompiles(runner, files, tiny_cache, tmp_path):
    options = PipelineOptions(compile="regional", lora_slots=2, lora_rank=8)
    compiled = load_model("tiny", torch.device("cpu"), tiny_cache, options)
    lora_files = LoraFiles(tmp_path / "compiled", POLICY, OutboundPolicy())
    hot = PipelineRunner(compiled, adapters=Adapters(compiled.t2v, lora_files, 2, slots=compiled.lora_slots))
    plain = latents(hot)  # compiles, with both slots at scale 0 (what the warm-up does)
    mixed = (scaled(files["style"], 0.5), files["kohya"])
    with torch._dynamo.config.patch(error_on_recompile=True):
        styled = latents(hot, files["style"])
        both = latents(hot, *mixed)
        swapped = latents(hot, files["motion"])  # into the least recently used slot: style's
        after = latents(hot)

    assert torch.equal(after, plain)  # the slots at scale 0 add exact zeros
    # The same videos as the adapters loaded and combined by set_adapters, eagerly.
    for got, loras in ((styled, (files["style"],)), (both, mixed), (swapped, (files["motion"],))):
        torch.testing.assert_close(got, latents(runner, *loras), rtol=1e-3, atol=1e-3)
    with pytest.raises(LoraRefused, match="rank is 16, over the 8"):  # the slots' rank
        hot.adapters._check_fits(
            {"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(16, 24)}, "loras[0].path"
        )
