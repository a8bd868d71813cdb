"""Loading checkpoints: `tiny` through the real from_pretrained path, and a checkpoint that
cannot be loaded fails the replica's start with a message that says what to do."""

import json
import shutil

import huggingface_hub
import pytest
from ray import serve

from serve_app.app import build_app
from serve_app.config import AppArgs
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


def test_unreachable_hub_id_says_what_to_do(tmp_path, monkeypatch):
    # This machine has no hub; make that immediate. (The variable is read when huggingface_hub is
    # imported, which has happened by now: the constant is what its downloads check.)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match=r"(?s)Could not load the Wan2.2 checkpoint 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model", resolve_device("cpu"), tmp_path)


def test_folder_with_missing_files_fails_cleanly(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ModelLoadError, match="Could not load"):
        load_model(str(broken), resolve_device("cpu"), tmp_path)


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


def test_replica_that_cannot_load_its_model_fails_the_deployment(ray_cluster, tmp_path):
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
