"""Every invalid input of the guide's table and of our contract: a 400 (or 413) in our error
shape naming the field, and the service keeps working afterwards."""

import base64
import json

import pytest
from support.media import png_bytes
from support.service import SMALL

BAD_BODIES = [
    # (body, param, words the message must contain)
    ({}, "prompt", "required"),
    ({"prompt": ""}, "prompt", "at least 1"),
    ({"prompt": "   "}, "prompt", "must contain text"),
    ({"prompt": 42}, "prompt", "string"),
    ({"prompt": "x" * 10_001}, "prompt", "at most"),
    ({"prompt": "a", "negative_prompt": 3}, "negative_prompt", "string"),
    ({"prompt": "a", "height": 700}, "height", "672 or 704"),
    ({"prompt": "a", "height": 16}, "height", "greater than or equal to 32"),
    ({"prompt": "a", "height": 4096}, "height", "less than or equal to 2048"),
    ({"prompt": "a", "height": "704"}, "height", "integer"),
    ({"prompt": "a", "height": 704.5}, "height", "integer"),
    ({"prompt": "a", "width": 1300}, "width", "1280 or 1312"),
    ({"prompt": "a", "width": 0}, "width", "greater than or equal to 32"),
    ({"prompt": "a", "num_frames": 24}, "num_frames", "greater than or equal to 25"),
    ({"prompt": "a", "num_frames": 26}, "num_frames", "25 or 29"),
    ({"prompt": "a", "num_frames": 125}, "num_frames", "less than or equal to 121"),
    ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps", "greater than or equal to 1"),
    ({"prompt": "a", "num_inference_steps": 101}, "num_inference_steps", "less than or equal to 100"),
    ({"prompt": "a", "guidance_scale": 0.5}, "guidance_scale", "greater than or equal to 1"),
    ({"prompt": "a", "guidance_scale": 20.5}, "guidance_scale", "less than or equal to 20"),
    ({"prompt": "a", "guidance_scale": "high"}, "guidance_scale", "number"),
    ({"prompt": "a", "speed_mode": "turbo"}, "speed_mode", "'quality' or 'fast'"),
    ({"prompt": "a", "fps": 0}, "fps", "greater than or equal to 1"),
    ({"prompt": "a", "fps": 61}, "fps", "less than or equal to 60"),
    ({"prompt": "a", "seed": -1}, "seed", "greater than or equal to 0"),
    ({"prompt": "a", "seed": 2**64}, "seed", "less than or equal to"),
    ({"prompt": "a", "seed": "42"}, "seed", "integer"),
    ({"prompt": "a", "num_frame": 25}, "num_frame", "unknown field"),
    ({"prompt": "a", "image_url": "http://x/a.png", "image_base64": "AAAA"}, None, "at most one"),
    ({"prompt": "a", "image_base64": "not base64!", **SMALL}, "image_base64", "not valid base64"),
    ({"prompt": "a", "image_base64": base64.b64encode(b"plain text").decode(), **SMALL}, "image_base64", "decoded"),
    ({"prompt": "a", "image_url": ""}, "image_url", "at least 1"),
]


@pytest.mark.parametrize(("body", "param", "words"), BAD_BODIES, ids=[str(case[1]) for case in BAD_BODIES])
def test_bad_body_is_a_400_naming_the_field(client, body, param, words):
    response = client.post("/predict", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] == "invalid_request"
    assert words in error["message"]


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"{not json", "Malformed JSON"), (b"[1, 2]", "JSON object"), (b"", "empty"), (b'"prompt"', "JSON object")],
)
def test_body_that_is_not_a_json_object_is_a_400(client, raw, words):
    response = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_body_over_the_cap_is_a_413(client):
    body = json.dumps({"prompt": "a", "negative_prompt": "x" * (3 * 2**20)})
    response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_image_over_the_byte_cap_is_a_413(client):
    # 1.5 MiB of base64 payload against the test's 1 MiB image cap (the body cap is 2 MiB).
    response = client.post("/predict", json={"prompt": "a", "image_base64": "A" * (2 * 2**20 - 4096), **SMALL})
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "image_base64"


def test_image_over_the_pixel_cap_is_a_413_before_decoding(client):
    huge = base64.b64encode(png_bytes((2500, 2000), (0, 0, 0))).decode()  # 5 MP, a few KB compressed
    response = client.post("/predict", json={"prompt": "a", "image_base64": huge, **SMALL})
    assert response.status_code == 413
    assert "pixel limit" in response.json()["error"]["message"]


def test_unknown_route_and_method_keep_the_error_shape(client):
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    response = client.get("/predict")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_service_still_generates_after_bad_inputs(client):
    for body, _, _ in BAD_BODIES[:5]:
        client.post("/predict", json=body)
    response = client.post("/predict", json={"prompt": "still fine", **SMALL})
    assert response.status_code == 200


def test_a_video_over_the_pixel_cap_is_refused_before_any_work(client):
    response = client.post("/v1/videos", json={"prompt": "big", "width": 512, "height": 512, "num_frames": 49})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "512x512 with 49 frames is 12,845,056 pixels, over this server's limit of 7,929,856 (what its GPUs can "
        "hold). Use a smaller size or fewer frames."
    )


def test_a_flood_of_unknown_fields_is_a_400_naming_the_cap(client):
    body = {"prompt": "a", **{f"f{i}": 1 for i in range(100_000)}}  # 1.5 MB, under the test cap of 2 MB
    response = client.post("/predict", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == "The body has 100001 fields, over the limit of 64."


def test_json_sent_as_text_plain_is_a_415_and_starts_nothing(client):
    before = client.get("/v1/videos", params={"limit": 100}).json()["data"]
    response = client.post("/v1/videos", content=json.dumps({"prompt": "a"}), headers={"Content-Type": "text/plain"})
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert client.get("/v1/videos", params={"limit": 100}).json()["data"] == before
