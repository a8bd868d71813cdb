"""The capacity simulator (`model: simulated`): its latency model against the guide's table, the
generator it makes (time, progress, cancel, a real placeholder MP4) and its labels when deployed.
The capacity simulation on a multi-node cluster of simulated GPUs: tests/benchmark/test_local_cluster.py."""

import asyncio
import threading
import time

import httpx
import pytest
from support.apps import TIME_SCALE
from support.media import probe_mp4

from loadtests.report import GUIDE_L40_S
from serve_app.config import AppArgs
from serve_app.engine.errors import GenerationCancelled
from serve_app.engine.generator import Generator
from serve_app.engine.simulator import L40_STEP_S, l40_seconds
from serve_app.messages import GenerationRequest, GenerationResult, Progress, Started

REQUEST = GenerationRequest(
    prompt="a lantern", negative_prompt="", guidance_scale=5.0, fps=24, seed=1,
    width=1280, height=704, num_frames=121, num_inference_steps=20, model="simulated", shift=5.0,
)  # fmt: skip


def test_the_latency_model_lies_inside_every_range_of_the_guides_l40_table():
    for steps, (low, high) in GUIDE_L40_S.items():
        assert low <= l40_seconds(1280, 704, 121, steps) <= high, steps
    assert l40_seconds(640, 352, 121, 50) == pytest.approx(l40_seconds(1280, 704, 121, 50) / 4)


def test_a_simulated_job_takes_the_models_time_reports_each_step_and_makes_a_real_mp4():
    scale = 0.002
    generator = Generator(AppArgs(model="simulated", simulated_time_scale=scale))

    async def events():
        return [event async for event in generator.generate(REQUEST)]

    started = time.perf_counter()
    started_event, *progress, result = asyncio.run(events())
    elapsed = time.perf_counter() - started
    expected = l40_seconds(1280, 704, 121, 20) * scale
    assert elapsed >= expected
    assert isinstance(started_event, Started) and started_event.capacity is None
    assert started_event.runtime["model"] == "simulated"
    assert [event.step for event in progress] == list(range(1, 21))
    assert all(isinstance(event, Progress) and event.total == 20 for event in progress)
    assert isinstance(result, GenerationResult) and result.model == "simulated"
    stages = result.timings
    assert stages.text_encoding_s + stages.denoising_s + stages.decoding_s >= expected * 0.99
    video = probe_mp4(result.video_mp4)
    assert (video["width"], video["height"], video["frames"], video["fps"]) == (64, 36, 121, 24)
    assert result.thumbnail_jpeg.startswith(b"\xff\xd8")


def test_a_cancelled_simulated_job_stops_at_once():
    generator = Generator(AppArgs(model="simulated", simulated_time_scale=0.01))  # 7.4 s for 100 steps
    cancel = threading.Event()
    steps: list[int] = []
    threading.Timer(0.3, cancel.set).start()
    started = time.perf_counter()
    with pytest.raises(GenerationCancelled):
        generator.runner.run(REQUEST.model_copy(update={"num_inference_steps": 100}), steps.append, cancel)
    assert time.perf_counter() - started < 1.0
    assert 0 < len(steps) < 100


def test_a_deployed_simulator_says_so_in_its_status_and_in_every_job(shared_simulated_app):
    ready = httpx.get(f"{shared_simulated_app.url}/readyz")
    assert ready.json() == {"status": "ready", "generator_replicas": 1}
    api = shared_simulated_app.client
    # A quarter of the latency model's reference volume: 4 steps of 7.2 s / 4 each on an L40.
    body = {"prompt": "a lantern", "width": 640, "height": 352, "num_frames": 121, "num_inference_steps": 4}
    predicted = api.post("/predict", json=body)
    assert predicted.status_code == 200, predicted.text
    details = predicted.json()["details"]
    assert details["model"] == "simulated"
    assert details["timings"]["denoising_s"] >= 4 * L40_STEP_S / 4 * TIME_SCALE
    status = api.get("/v1/status").json()
    assert status["model"] == "simulated" and status["models"] == ["simulated"] and status["generator_replicas"] == 1
    assert list(status["generators"].values()) == [{
        "model": "simulated", "checkpoint": "simulated", "device": "none (simulated)", "time_scale": TIME_SCALE,
        "latency_model": "L40: 20 s + 3.6 s per transformer pass at 1280x704x121",
    }]  # fmt: skip
