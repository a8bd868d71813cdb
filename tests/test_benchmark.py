"""The GPU benchmark's CPU path with the tiny model, its FLOP counter against the full-size
model's arithmetic, and the memory model it fits to GPU runs."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from serve_app.benchmark import BENCHMARK_CACHE, TRANSFORMER_CONFIG, memory_model, transformer_flops
from serve_app.tiny import ensure_tiny_checkpoint


def test_the_benchmark_runs_on_a_cpu_and_writes_its_figures(tmp_path):
    out = tmp_path / "cpu.json"
    run = subprocess.run(
        [sys.executable, "-m", "serve_app.benchmark", "--model", "tiny", "--device", "cpu", "--size", "64x64",
         "--frames", "25", "--steps", "3", "--arg", "cfg_batch=false", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["options"]["cfg_batch"] is False and figures["size"] == "64x64x25"
    stages = ("text_encoding_s", "denoising_s", "decoding_s", "transfer_s", "encoding_s")
    assert figures["total_s"] == pytest.approx(sum(figures[name] for name in stages), abs=1e-3)
    assert figures["step_s"] == pytest.approx(figures["denoising_s"] / 3, abs=1e-4)
    assert figures["peak_gpu_memory_gib"] is None
    # Two passes a step (guidance), each counted on the tiny transformer's own config.
    tiny_config = json.loads((ensure_tiny_checkpoint(BENCHMARK_CACHE) / "transformer" / "config.json").read_text())
    assert figures["transformer_flops_per_step"] == 2 * transformer_flops(tiny_config, 64, 64, 25) > 0
    assert figures["matmul_peak_tflops"] > 0 and figures["ratio_to_floor"] > 1
    for line in ("denoising", "ratio to the floor", "matmul peak (measured)", "copy to host"):
        assert line in run.stdout


def test_a_bad_app_argument_is_a_clear_error():
    run = subprocess.run(
        [sys.executable, "-m", "serve_app.benchmark", "--arg", "compile=fast"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2 and "compile" in run.stderr and "'off', 'regional' or 'full'" in run.stderr


def test_one_full_size_pass_at_1280x704x121_is_517_tflop():
    # 27,280 tokens, 30 layers of width 3072: the arithmetic, counted on a meta copy.
    assert transformer_flops(TRANSFORMER_CONFIG, 1280, 704, 121) == pytest.approx(517e12, rel=0.005)


def test_the_memory_model_sizes_max_video_pixels_per_gpu_class():
    # Peaks of 30 GiB + 0.1 GiB per megavoxel, as GPU runs would report them.
    runs = [
        {"size": size, "peak_gpu_memory_gib": 30 + 0.1 * volume / 1e6}
        for size, volume in (("640x352x121", 640 * 352 * 121), ("1280x704x121", 1280 * 704 * 121))
    ]
    fitted = memory_model(runs)
    assert fitted["fixed_gib"] == pytest.approx(30) and fitted["gib_per_megavoxel"] == pytest.approx(0.1)
    limits = fitted["max_video_pixels"]
    assert limits["24 GB (RTX 4090, L4)"] == 0  # the weights alone do not fit
    assert limits["80 GB (A100, H100)"] == pytest.approx((80 * 0.9 - 30) / 0.1 * 1e6, rel=1e-6)
    with pytest.raises(ValueError, match="two sizes"):
        memory_model(runs[:1])
