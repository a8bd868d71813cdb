"""Loading checkpoints: `tiny` through the real from_pretrained path, and a checkpoint that
cannot be loaded fails the replica's start with a message that says what to do."""

import json
import shutil

import huggingface_hub
import pytest
from ray import serve
from transformers import T5Tokenizer

from serve_app.app import build_app
from serve_app.config import AppArgs
from serve_app.engine.checkpoint import check_tokenizer, missing_files
from serve_app.engine.errors import ModelLoadError
from serve_app.engine.model import load_model, resolve_device
from serve_app.engine.tiny import ensure_tiny_checkpoint

# The tiny pipeline runs here: seconds a test, not part of `make test-fast`.
pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tiny_dir(tiny_cache):
    return ensure_tiny_checkpoint(tiny_cache)


def test_tiny_has_the_real_layout_and_loads_through_from_pretrained(tiny_dir):
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["expand_timesteps"] is True
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    model = load_model(str(tiny_dir), resolve_device("cpu"), tiny_dir.parent)
    vae = model.t2v.vae.config
    assert (vae.z_dim, vae.patch_size, vae.scale_factor_spatial, vae.is_residual) == (48, 2, 16, True)
    transformer = model.t2v.transformer.config
    assert (transformer.in_channels, transformer.out_channels, tuple(transformer.patch_size)) == (48, 48, (1, 2, 2))
    assert model.t2v.scheduler.config.flow_shift == 5.0
    # One copy of the weights: the image-to-video pipeline shares every module.
    assert model.i2v.transformer is model.t2v.transformer
    assert model.i2v.vae is model.t2v.vae
    assert model.i2v.config.expand_timesteps is True


def test_tiny_is_built_once(tiny_dir):
    stamp = (tiny_dir / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_checkpoint(tiny_dir.parent) == tiny_dir
    assert (tiny_dir / "model_index.json").stat().st_mtime_ns == stamp


def test_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match=r"(?s)nowhere' is not a folder.*Hugging Face id.*`tiny`"):
        load_model(str(tmp_path / "nowhere"), resolve_device("cpu"), tmp_path)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No hub, and an empty Hugging Face cache of the test's own. (The variables are read when
    huggingface_hub is imported, which has happened by now: the constants are what it checks.)"""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_unreachable_hub_id_says_what_to_do(tmp_path, offline):
    with pytest.raises(ModelLoadError) as refused:
        load_model("no-such-org/no-such-model", resolve_device("cpu"), tmp_path)
    message = str(refused.value)
    assert "Could not load the Wan2.2 checkpoint 'no-such-org/no-such-model'" in message
    assert "holds no snapshot of 'no-such-org/no-such-model' at main" in message
    # huggingface_hub 1.x has no `huggingface-cli download`.
    assert "`hf download" in message and "huggingface-cli" not in message


def test_offline_with_a_partial_cache_names_the_missing_files(tiny_dir, tmp_path, offline):
    # The cache's layout: the snapshot of a commit, and the branch that points to it.
    repo = offline / "models--wan-org--wan-ti2v"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as refused:
        load_model("wan-org/wan-ti2v", resolve_device("cpu"), tmp_path)
    message = str(refused.value)
    assert f"{snapshot} lacks 1 of the checkpoint's files: transformer/diffusion_pytorch_model.safetensors." in message
    assert ".bin" not in message  # diffusers' fallback to pickles no longer speaks for us


def test_a_sharded_model_missing_a_shard_is_named(tiny_dir, tmp_path):
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_dir, folder)
    encoder = folder / "text_encoder"
    (encoder / "model.safetensors").rename(encoder / "model-00001-of-00002.safetensors")
    shards = {"shared.weight": "model-00001-of-00002.safetensors", "encoder.weight": "model-00002-of-00002.safetensors"}
    (encoder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    assert missing_files(folder) == ["text_encoder/model-00002-of-00002.safetensors"]
    assert missing_files(tiny_dir) == []


def test_folder_with_missing_files_fails_cleanly(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(
        ModelLoadError, match=r"Could not load.*lacks 2 .*transformer/config.json, transformer/diffusion_pytorch_model"
    ):
        load_model(str(broken), resolve_device("cpu"), tmp_path)


def test_a_checkpoint_without_tokenizer_json_is_refused_not_loaded_with_a_4_token_tokenizer(tiny_dir, tmp_path):
    broken = tmp_path / "no-tokenizer-json"
    shutil.copytree(tiny_dir, broken)
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match=r"lacks 1 of the checkpoint's files: tokenizer/tokenizer.json"):
        load_model(str(broken), resolve_device("cpu"), tmp_path)
    # What transformers makes of that folder: a tokenizer that knows 4 tokens, "a red fox" all unknown.
    fallback = T5Tokenizer.from_pretrained(broken / "tokenizer")
    assert len(fallback) == 4
    with pytest.raises(ModelLoadError, match="has 4 tokens and its text encoder 150 embeddings"):
        check_tokenizer(fallback, vocab_size=150)
    with pytest.raises(ModelLoadError, match=r"encodes 'a red fox' as \[.*\], which decodes to"):
        check_tokenizer(fallback, vocab_size=4)


def test_a_tokenizer_that_is_not_the_text_encoders_is_refused_at_load(tiny_dir, tmp_path):
    # Every file is there, but tokenizer.json is another tokenizer's (the 4-token fallback, saved).
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_dir, other)
    (other / "tokenizer" / "tokenizer.json").unlink()
    T5Tokenizer.from_pretrained(other / "tokenizer").save_pretrained(other / "tokenizer")
    assert (other / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(ModelLoadError, match=r"Could not load.*has 4 tokens and its text encoder 150 embeddings"):
        load_model(str(other), resolve_device("cpu"), tmp_path)


def test_a_checkpoint_that_is_not_ti2v_is_refused(tiny_dir, tmp_path):
    other = tmp_path / "wan21"
    shutil.copytree(tiny_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    index["expand_timesteps"] = False
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="not a Wan2.2 TI2V checkpoint"):
        load_model(str(other), resolve_device("cpu"), tmp_path)


def test_cuda_without_a_gpu_is_a_clear_error():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="sees no GPU"):
        resolve_device("cuda")


# `service`: Serve runs with the session's HTTP options, which the first `serve.run` would fix.
def test_replica_that_cannot_load_its_model_fails_the_deployment(service, tmp_path):
    app = build_app(
        AppArgs(
            model=str(tmp_path / "missing"),
            device="cpu",
            max_constructor_retries=1,
            allow_unauthenticated=True,
            data_dir=tmp_path / "data",
        )
    )
    with pytest.raises(RuntimeError, match="Deploying application broken failed"):
        serve.run(app, name="broken", route_prefix="/broken")
    # What `serve status` shows the operator: the replica's own reason.
    message = serve.status().applications["broken"].deployments["Generator"].message
    serve.delete("broken")
    assert "is not a folder" in message and "`tiny`" in message
