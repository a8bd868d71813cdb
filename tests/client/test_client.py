"""The Python client and the `wan-client` command, against the live local service."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.media import probe_mp4
from support.service import API_KEYS, SLOW, SMALL

from serve_app.client import WanClient, WanError

WAN_CLIENT = Path(sys.executable).parent / "wan-client"  # the console script, as installed
SMALL_FLAGS = ["--height", "64", "--width", "64", "--num-frames", "25", "--num-inference-steps", "4"]


def cli(service: str, *args: str, key: str = API_KEYS[0], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "WAN_API_URL": service, "WAN_API_KEY": key}
    return subprocess.Popen(
        [str(WAN_CLIENT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def test_the_cli_generates_a_video_with_progress(service, tmp_path):
    out, thumb, details = tmp_path / "cat.mp4", tmp_path / "cat.jpg", tmp_path / "cat.json"
    run = cli(service, "generate", "A cat dancing on a stage", *SMALL_FLAGS, "--seed", "8", "-o", str(out),
              "--thumbnail", str(thumb), "--details", str(details), "--speed-mode", "fast")  # fmt: skip
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert probe_mp4(out.read_bytes())["frames"] == 25
    assert thumb.read_bytes().startswith(b"\xff\xd8")
    job = json.loads(details.read_text())
    assert job["status"] == "completed" and job["details"]["seed"] == 8 and job["details"]["speed_mode"] == "fast"
    # Not a terminal here: one line per change, rising to 100%.
    percents = [int(line.split("]")[1].split("%")[0]) for line in stderr.splitlines() if line.startswith("[")]
    assert percents == sorted(percents) and percents[-1] == 100 and len(percents) >= 3
    assert f"saved {out}: 64x64, 1.04 s, seed 8" in stderr


def test_python_m_runs_the_same_command(service):
    env = {**os.environ, "WAN_API_URL": service, "WAN_API_KEY": API_KEYS[0]}
    run = subprocess.run([sys.executable, "-m", "serve_app.client", "list"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_cli_shows_the_servers_message_for_a_bad_key_and_a_bad_parameter(service, tmp_path):
    run = cli(service, "generate", "x", *SMALL_FLAGS, "-o", str(tmp_path / "x.mp4"), key="wrong")
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 1 and stderr.strip() == "error: Invalid API key. (unauthorized)"

    run = cli(service, "generate", "x", "--height", "100", "-o", str(tmp_path / "x.mp4"))
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 1
    assert "height: must be a multiple of 32; nearest valid values: 96 or 128" in stderr
    assert not (tmp_path / "x.mp4").exists()


def test_ctrl_c_cancels_the_job_on_the_server(service, tmp_path, client):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SLOW.items()]
    # As from a terminal: a shell that runs the tests in the background leaves SIGINT ignored in
    # its children, and Python then turns no SIGINT into KeyboardInterrupt.
    run = cli(service, "generate", "a slow one", *flags, "-o", str(tmp_path / "slow.mp4"),
              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    job_id = run.stderr.readline().split()[1]  # "job video_... queued"
    while "in_progress" not in run.stderr.readline():
        pass
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130 and f"cancelled job {job_id}" in stderr
    assert client.get(f"/v1/videos/{job_id}").json()["status"] == "cancelled"


def test_the_python_client_follows_a_job_and_predicts(service):
    seen = []
    with WanClient(service, API_KEYS[0]) as wan:
        job, video = wan.generate("a kite", on_progress=lambda j: seen.append(j.progress), seed=4, **SMALL)
        assert job.status == "completed" and seen[-1] == 100 and seen == sorted(seen)
        predicted, details = wan.predict("a kite", seed=4, **SMALL)
        assert predicted == video and details["seed"] == 4
        assert wan.list_jobs(limit=1).data[0].details.prompt == "a kite"
        with pytest.raises(WanError) as bad:
            wan.submit("a kite", num_frames=26)
        assert (bad.value.status, bad.value.code, bad.value.param) == (400, "invalid_request", "num_frames")


def test_the_client_and_the_cli_pick_a_model(service, tmp_path):
    with WanClient(service, API_KEYS[0]) as client:
        assert [model["id"] for model in client.models()] == ["tiny", "tiny-turbo"]
        job, video = client.generate("a kite", model="tiny-turbo", height=64, width=64, num_frames=25, seed=2)
        assert job.details.model == "tiny-turbo" and job.details.num_inference_steps == 3
        with pytest.raises(WanError) as refused:
            client.submit("a kite", model="tiny-turbo", num_inference_steps=8)
        assert refused.value.param == "num_inference_steps" and "3 to 3" in refused.value.message
    out, details = tmp_path / "kite.mp4", tmp_path / "kite.json"
    run = cli(service, "generate", "a kite", "--model", "tiny-turbo", "--height", "64", "--width", "64",
              "--num-frames", "25", "--seed", "2", "-o", str(out), "--details", str(details))  # fmt: skip
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert out.read_bytes() == video  # the same model, request and seed: the same bytes
    assert json.loads(details.read_text())["details"]["model"] == "tiny-turbo"
    listing = cli(service, "models")
    stdout, stderr = listing.communicate(timeout=60)
    assert listing.returncode == 0, stderr
    assert "tiny-turbo  3 steps (3-3), guidance 1, shift 5 at 1280x704" in stdout
