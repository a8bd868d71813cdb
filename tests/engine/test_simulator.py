"""The capacity simulator (`model: simulated`): its latency model against the guide's table, the
generator it makes (time, progress, cancel, a real placeholder MP4), its labels when deployed,
and the capacity simulation on a multi-node cluster of simulated GPUs."""

import asyncio
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
from support.media import probe_mp4
from support.service import API_KEYS, NO_LOAD_TEST_FAILURES, ROOT

from loadtests.report import GUIDE_L40_S
from serve_app.config import AppArgs
from serve_app.engine.errors import GenerationCancelled
from serve_app.engine.generator import Generator
from serve_app.engine.simulator import l40_seconds
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


@pytest.fixture
def simulator(apps, tmp_path):
    """An app of its own, `model: simulated` at 0.001 of an L40's time, with no cap on the size."""
    yield apps.deploy(apps.simulated("simulator", tmp_path, simulated_time_scale=0.001, max_video_pixels=None))
    apps.remove("simulator")


def test_a_deployed_simulator_says_so_in_its_status_and_in_every_job(simulator):
    ready = httpx.get(f"{simulator}/readyz")
    assert ready.json() == {"status": "ready", "generator_replicas": 1}
    api = httpx.Client(base_url=simulator, headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=60)
    assert api.get("/v1/status").json() == {
        "model": "simulated", "models": ["simulated"], "generator_replicas": 1, "generators": {}
    }  # fmt: skip
    body = {"prompt": "a lantern", "width": 1280, "height": 704, "num_frames": 121, "num_inference_steps": 30}
    predicted = api.post("/predict", json=body)
    assert predicted.status_code == 200, predicted.text
    details = predicted.json()["details"]
    assert details["model"] == "simulated"
    assert details["timings"]["denoising_s"] >= 30 * 7.2 * 0.001
    runtime = api.get("/v1/status").json()["generators"]
    assert list(runtime.values()) == [{
        "model": "simulated", "checkpoint": "simulated", "device": "none (simulated)", "time_scale": 0.001,
        "latency_model": "L40: 20 s + 3.6 s per transformer pass at 1280x704x121",
    }]  # fmt: skip


@pytest.mark.e2e
@pytest.mark.timeout(330)  # a cluster of its own; the subprocess has 300 s
def test_the_capacity_simulation_scales_out_and_compares_the_queue_with_mmc(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.simulate", "--gpu-nodes", "2", "--time-scale", "0.005",
         "--utilisation", "0.6", "--run-time", "70s", "--users", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    assert "**capacity simulator** (L40: 20 s + 3.6 s per transformer pass at 1280x704x121)" in report, report
    # It scaled out to both GPU nodes (from zero, where the first sample came before the first replica).
    assert "open loop at" in report and re.search(r"generator replicas seen: (0, )?1, 2\n", report), report
    assert "| 30 steps |" in report and "guide (L40) x 0.005" in report, report
    theory = report.split("## Queue wait against queueing theory")[1]
    assert "replicas were running" in theory and "| mean |" in theory and "M/M/c" in theory, report
    assert NO_LOAD_TEST_FAILURES in report, report
