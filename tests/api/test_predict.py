"""POST /predict end to end: real Ray Serve, real HTTP, the real pipeline with tiny weights."""

import base64

from support.media import png_bytes, probe_mp4
from support.service import SMALL, TIMINGS

from serve_app.messages import DEFAULT_NEGATIVE_PROMPT


def predict(client, **body):
    response = client.post("/predict", json={"prompt": "a red fox running through snow", **body})
    assert response.status_code == 200, response.text
    data = response.json()
    return base64.b64decode(data["video_base64"]), data["details"]


def test_text_to_video_returns_the_requested_mp4(client):
    video, details = predict(client, height=64, width=96, num_frames=29, num_inference_steps=2, fps=12, seed=7)
    assert probe_mp4(video) == {
        "format": "mov,mp4,m4a,3gp,3g2,mj2",
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "width": 96,
        "height": 64,
        "fps": 12.0,
        "frames": 29,
        "faststart": True,
    }
    assert details["mode"] == "t2v"
    assert details["model"] == "tiny"
    assert {k: details[k] for k in ("height", "width", "num_frames", "num_inference_steps", "fps", "seed")} == {
        "height": 64,
        "width": 96,
        "num_frames": 29,
        "num_inference_steps": 2,
        "fps": 12,
        "seed": 7,
    }
    assert details["guidance_scale"] == 5.0
    assert set(details["timings"]) == TIMINGS


def test_defaults_are_the_guides_and_the_negative_prompt_is_the_authors(client):
    _, details = predict(client, **SMALL)
    assert details["negative_prompt"] == DEFAULT_NEGATIVE_PROMPT
    assert details["guidance_scale"] == 5.0 and details["fps"] == 24
    assert isinstance(details["seed"], int)

    _, details = predict(client, negative_prompt="", **SMALL)
    assert details["negative_prompt"] == ""


def test_a_drawn_seed_is_reported_and_reproduces(client):
    # Same seed, same bytes, is the pipeline's (tests/engine/test_pipeline.py); here: the seed
    # drawn for a request without one is the one that made its video.
    drawn, details = predict(client, **SMALL)
    replay, _ = predict(client, seed=details["seed"], **SMALL)
    assert drawn == replay


def test_negative_prompt_changes_the_video(client):
    with_default, _ = predict(client, seed=5, **SMALL)
    without, _ = predict(client, seed=5, negative_prompt="", **SMALL)
    assert with_default != without


def test_text_and_image_to_video_with_base64_and_data_url(client):
    image = base64.b64encode(png_bytes((120, 80))).decode()
    raw, details = predict(client, image_base64=image, seed=3, **SMALL)
    assert details["mode"] == "ti2v"
    assert "image_base64" not in details
    assert probe_mp4(raw)["frames"] == 25

    data_url, _ = predict(client, image_base64=f"data:image/png;base64,{image}", seed=3, **SMALL)
    assert data_url == raw
    text_only, _ = predict(client, seed=3, **SMALL)
    assert text_only != raw


def test_text_and_image_to_video_from_an_allow_listed_url(client, image_server):
    video, details = predict(client, image_url=f"{image_server}/cat.png", seed=3, **SMALL)
    assert details["mode"] == "ti2v"
    assert details["image_url"] == f"{image_server}/cat.png"
    assert probe_mp4(video)["width"] == 64

    redirected, _ = predict(client, image_url=f"{image_server}/to-cat", seed=3, **SMALL)
    assert redirected == video


def test_guidance_one_runs_without_the_negative_pass(client):
    # Without guidance the negative prompt is never encoded, so it cannot change the video.
    video, details = predict(client, guidance_scale=1.0, seed=9, **SMALL)
    other_negative, _ = predict(client, guidance_scale=1.0, seed=9, negative_prompt="", **SMALL)
    assert details["guidance_scale"] == 1.0
    assert video == other_negative
    assert probe_mp4(video)["frames"] == 25


def test_fast_mode_is_reported_and_changes_the_video(client):
    # Shift 5 (the default at 720p; 64x64 defaults to 3): on tiny, its schedule has steps alike
    # enough for the cache to skip some, which 3's does not at 8 steps.
    body = {"prompt": "a lantern", **SMALL, "num_inference_steps": 8, "seed": 5, "shift": 5.0}
    quality = client.post("/predict", json=body).json()
    fast = client.post("/predict", json={**body, "speed_mode": "fast"}).json()
    assert quality["details"]["speed_mode"] == "quality" and fast["details"]["speed_mode"] == "fast"
    assert fast["video_base64"] != quality["video_base64"]
    # The seed still reproduces a fast video.
    assert client.post("/predict", json={**body, "speed_mode": "fast"}).json()["video_base64"] == fast["video_base64"]
    assert probe_mp4(base64.b64decode(fast["video_base64"]))["frames"] == 25


def test_operational_routes_are_open_and_documented(service, client):
    import httpx

    assert client.post("/predict", json={"prompt": "a lantern", **SMALL}).status_code == 200

    health = httpx.get(f"{service}/healthz")
    assert health.json() == {"status": "ok"}
    assert len(health.headers.get_list("x-request-id")) == 1
    # Open, and saying nothing but whether it serves: no model path, nodes, GPUs or options.
    assert httpx.get(f"{service}/readyz").json() == {"status": "ready", "generator_replicas": 1}
    assert httpx.get(f"{service}/v1/status").status_code == 401
    status = client.get("/v1/status").json()
    assert (status["model"], status["models"], status["generator_replicas"]) == ("tiny", ["tiny", "tiny-turbo"], 1)
    # With its first job, the replica said how it runs the model (of each model, once it ran one).
    (runtime,) = [runtime for runtime in status["generators"].values() if runtime["model"] == "tiny"]
    assert runtime == {
        "model": "tiny", "checkpoint": "tiny", "revision": None, "device": "cpu", "dtype": "float32",
        "memory_mode": "full", "attention_backend": "native", "compile": "off", "cfg_batch": True, "vae_tiling": False,
    }  # fmt: skip
    spec = httpx.get(f"{service}/openapi.json").json()
    assert {"/predict", "/v1/videos", "/v1/videos/{video_id}/content", "/v1/videos/{video_id}/events"} <= set(
        spec["paths"]
    )
    create = spec["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert set(create) == {"application/json", "multipart/form-data"}
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["prompt"]
    assert body["properties"]["num_frames"]["default"] == 121
    assert httpx.get(f"{service}/docs").status_code == 200
