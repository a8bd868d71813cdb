"""Several models, API side, in-process (`support.api`, no Ray): `GET /v1/models`, a request's
`model` (JSON and form) with its steps, guidance and shift filled in from the model's recipe, and
every bad value of every new field as a 400 naming it in our error shape."""

import pytest
import yaml
from fastapi.testclient import TestClient
from support.api import AUTH, api
from support.service import ROOT

# The local config's models: `tiny` (Wan2.2's recipe, the default) and `tiny-turbo` (FastWan2.2's).
MODELS = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())["applications"][0]["args"]["models"]
SMALL = {"prompt": "a kite", "width": 64, "height": 64, "num_frames": 25}


@pytest.fixture
def served(tmp_path):
    app, jobs = api(tmp_path, models=MODELS)
    return TestClient(app, raise_server_exceptions=False), jobs


def submitted(served, **body) -> dict:
    client, jobs = served
    response = client.post("/v1/videos", json={**SMALL, **body}, headers=AUTH)
    assert response.status_code == 202, response.text
    return jobs.submitted[-1].request.model_dump(exclude={"image_png"})


def multipart(**fields) -> dict:
    """Form fields, sent as multipart/form-data as the OpenAI SDK sends them."""
    return {name: (None, str(value)) for name, value in fields.items()}


def refused(served, param: str, form: bool = False, **body) -> str:
    client, jobs = served
    if form:
        response = client.post("/v1/videos", files=multipart(**SMALL, **body), headers=AUTH)
    else:
        response = client.post("/predict", json={**SMALL, **body}, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_request"
    assert not jobs.submitted  # refused before it reached the queue
    return error["message"]


def test_v1_models_lists_the_served_models_default_first_in_openais_shape(served):
    client, _ = served
    assert client.get("/v1/models").status_code == 401
    listing = client.get("/v1/models", headers=AUTH).json()
    assert listing["object"] == "list"
    tiny, turbo = listing["data"]
    assert [tiny["id"], turbo["id"]] == ["tiny", "tiny-turbo"]
    assert {"id", "object", "created", "owned_by", "defaults", "limits"} <= set(turbo)
    assert tiny["object"] == turbo["object"] == "model" and isinstance(turbo["created"], int)
    assert tiny["defaults"] == {"num_inference_steps": 50, "guidance_scale": 5.0, "shift": 5.0}
    assert turbo["defaults"] == {"num_inference_steps": 3, "guidance_scale": 1.0, "shift": 5.0}
    assert turbo["limits"]["num_inference_steps"] == {"min": 3, "max": 3}
    assert tiny["limits"]["num_inference_steps"] == {"min": 1, "max": 100}
    assert (tiny["shift"], turbo["shift"]) == ("by_size", "fixed")


def test_omitted_fields_take_the_models_defaults_and_the_shift_follows_the_size(served):
    default = submitted(served)
    assert (default["model"], default["num_inference_steps"], default["guidance_scale"]) == ("tiny", 50, 5.0)
    assert default["shift"] == 3.0  # below 720p
    assert submitted(served, width=1280, height=704, num_frames=25)["shift"] == 5.0  # 720p
    assert submitted(served, width=704, height=1280, num_frames=25)["shift"] == 5.0  # 720p, portrait
    assert submitted(served, shift=7.5)["shift"] == 7.5
    turbo = submitted(served, model="tiny-turbo")
    assert (turbo["num_inference_steps"], turbo["guidance_scale"], turbo["shift"]) == (3, 1.0, 5.0)


def test_the_job_and_its_details_name_the_model(served):
    client, _ = served
    job = client.post("/v1/videos", json={**SMALL, "model": "tiny-turbo"}, headers=AUTH).json()
    assert job["details"]["model"] == "tiny-turbo" and job["details"]["num_inference_steps"] == 3


def test_a_form_picks_the_model_as_the_openai_sdk_sends_it(served):
    client, jobs = served
    fields = multipart(prompt="a kite", model="tiny-turbo", size="64x64", seconds="1")
    response = client.post("/v1/videos", files=fields, headers=AUTH)
    assert response.status_code == 202, response.text
    assert jobs.submitted[-1].request.model == "tiny-turbo"
    assert response.json()["details"]["requested"]["model"] == "tiny-turbo"


@pytest.mark.parametrize("form", [False, True])
@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "sora-2"}, "model", "This server serves: tiny, tiny-turbo"),
        ({"model": ""}, "model", ""),
        ({"model": "m" * 65}, "model", ""),
        ({"model": "tiny-turbo", "num_inference_steps": 4}, "num_inference_steps", "tiny-turbo: 3 to 3"),
        ({"model": "tiny-turbo", "num_inference_steps": 2}, "num_inference_steps", "tiny-turbo: 3 to 3"),
        ({"model": "tiny-turbo", "guidance_scale": 5.0}, "guidance_scale", "range is 1.0 to 1.0"),
        ({"model": "tiny-turbo", "shift": 3.0}, "shift", "fixed timesteps [1000, 757, 522]"),
        ({"model": "tiny-turbo", "speed_mode": "fast"}, "speed_mode", "step cache has nothing to reuse"),
        ({"num_inference_steps": 101}, "num_inference_steps", ""),
        ({"num_inference_steps": 0}, "num_inference_steps", ""),
        ({"guidance_scale": 0.5}, "guidance_scale", ""),
        ({"shift": 0}, "shift", ""),
        ({"shift": -1.0}, "shift", ""),
        ({"shift": 20.5}, "shift", ""),
        ({"shift": "high"}, "shift", ""),
    ],
)
def test_every_bad_value_of_the_model_fields_is_a_400_naming_it(served, body, param, says, form):
    assert says in refused(served, param, form=form, **body)


@pytest.mark.parametrize("body", [{"model": 3}, {"model": ["tiny"]}, {"shift": "5"}, {"shift": True}])
def test_a_model_field_of_the_wrong_json_type_is_a_400(served, body):
    refused(served, next(iter(body)), **body)
