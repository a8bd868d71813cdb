"""The benchmarks' CPU paths with the tiny model: the one-configuration benchmark, the memory plan
printout, the GPU check (with what a GPU machine lacks made unimportable), and the docs' GPU table
generated from the check's files."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from support.compiling import COMPILE_WARM_UP
from support.service import ROOT

from serve_app.benchmark import __main__ as benchmark_cli
from serve_app.benchmark import gang_check, gpu_check, results
from serve_app.benchmark.measure import BENCHMARK_CACHE, transformer_flops
from serve_app.capacity import GiB
from serve_app.engine.full_size import TRANSFORMER_CONFIG
from serve_app.engine.tiny import ensure_tiny_checkpoint

pytestmark = pytest.mark.e2e


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_the_benchmark_runs_on_a_cpu_in_bf16_and_writes_its_figures(tmp_path):
    out = tmp_path / "cpu.json"
    done = run("-m", "serve_app.benchmark", "--model", "tiny", "--device", "cpu", "--size", "64x64", "--frames", "25",
               "--steps", "3", "--arg", "dtype=bfloat16", "--arg", "cfg_batch=false", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["options"]["cfg_batch"] is False and figures["size"] == "64x64x25"
    assert figures["plan"] == "full, VAE tiling off, guidance one pass at a time"
    assert figures["dtypes"]["vae"] == {"float32": 140} and set(figures["dtypes"]["transformer"]) == {
        "bfloat16",
        "float32",
    }
    stages = ("text_encoding_s", "denoising_s", "decoding_s", "transfer_s", "encoding_s")
    assert figures["total_s"] == pytest.approx(sum(figures[name] for name in stages), abs=1e-3)
    assert figures["step_s"] == pytest.approx(figures["denoising_s"] / 3, abs=1e-4)
    assert figures["peak_gpu_memory_gib"] is None and figures["predicted_peak_gib"] is None
    # Two passes a step (guidance), each counted on the tiny transformer's own config.
    tiny_config = json.loads((ensure_tiny_checkpoint(BENCHMARK_CACHE) / "transformer" / "config.json").read_text())
    assert figures["transformer_flops_per_step"] == 2 * transformer_flops(tiny_config, 64, 64, 25) > 0
    assert figures["matmul_peak_tflops"] > 0 and figures["ratio_to_floor"] > 1
    for line in ("denoising", "ratio to the floor", "matmul peak (measured)", "copy to host", "plan"):
        assert line in done.stdout


def test_a_bad_app_argument_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as refused:  # argparse's error: in this process, not one of its own
        benchmark_cli.main(["--plan", "--arg", "compile=fast"])  # --plan: were it accepted, meta tensors only
    stderr = capsys.readouterr().err
    assert refused.value.code == 2 and "compile" in stderr and "'off', 'regional' or 'full'" in stderr


def test_the_plan_printout_builds_nothing_and_chooses_as_a_replica_would(tmp_path):
    out = tmp_path / "plan.json"
    done = run("-m", "serve_app.benchmark", "--plan", "--size", "1280x704", "--frames", "121", "--gpu-gib", "44",
               "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["chosen"] == "text_encoder_offload, VAE tiling off, guidance batched"
    assert figures["usable_gib"] == pytest.approx(44 * 0.9, abs=0.01)
    assert not figures["plans"][0]["fits"] and figures["plans"][1]["fits"]
    assert "chosen" in done.stdout and "largest at this size" in done.stdout


def test_one_full_size_pass_at_1280x704x121_is_517_tflop():
    # 27,280 tokens, 30 layers of width 3072, counted on a meta copy.
    assert transformer_flops(TRANSFORMER_CONFIG, 1280, 704, 121) == pytest.approx(517e12, rel=0.005)


# The GPU machine has torch, transformers and accelerate, and not Ray or the web framework: a
# `sitecustomize` on the path refuses them, in the check's process and in the ranks it starts.
NOT_INSTALLED = """import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("ray", "fastapi", "starlette"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
"""


@pytest.mark.compiles
def test_gpu_check_sh_runs_every_section_without_ray_or_fastapi_and_writes_only_to_its_folder(tmp_path):
    # The script itself, on the CPU with `tiny`: python3 on PATH is this interpreter, with pip
    # stubbed (nothing to install here) and the serving libraries refused; there is no nvidia-smi.
    # --gpus 2 on the CPU: the gang sections run two processes over gloo, each a gang's rank.
    bin_dir, site = tmp_path / "bin", tmp_path / "site"
    bin_dir.mkdir()
    site.mkdir()
    (site / "sitecustomize.py").write_text(NOT_INSTALLED)
    stub = bin_dir / "python3"
    pip_stubbed = '[ "$1 $2" = "-m pip" ] && exit 0'
    stub.write_text(f'#!/bin/sh\n{pip_stubbed}\nPYTHONPATH={site}:$PYTHONPATH exec {sys.executable} "$@"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    options = ["--model", "tiny", "--device", "cpu", "--size", COMPILE_WARM_UP, "--steps", "2", "--gpus", "2",
               "--skip", "compile_full"]  # fmt: skip
    # OUT_DIR relative to where it is called from, not to the repository.
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "results", *options], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "results"
    (path,) = out.glob("cpu-*.json")
    assert {p.name for p in out.iterdir()} == {path.name, "gpu-check.log", "nvidia-smi.csv"}
    assert str(path) in (out / "gpu-check.log").read_text()
    figures = json.loads(path.read_text())
    assert figures["steps"] == 2 and figures["size"] == COMPILE_WARM_UP
    assert figures["plan"] == "full, VAE tiling off, guidance batched"
    # What the check is for first, so that a budget spent early still measured it.
    assert list(figures)[-len(gpu_check.SECTIONS) :] == list(gpu_check.SECTIONS)
    assert gpu_check.SECTIONS[:4] == ("default", "memory_model", "compile_regional", "compile_full")
    assert figures["cuda_alloc_conf"] == "expandable_segments:True"
    sections = ("default", "turbo", "cfg_batch_off", "attention_backends", "fast_mode", "vae_tiling", "text_encoder")
    for section in (*sections, "compile_regional"):
        assert "error" not in figures[section], figures[section]
    assert figures["compile_full"] == {"skipped": "asked for (--skip)"}
    default = figures["default"]
    assert set(default["seconds_per_job"]) == {"20", "30", "50", "100"} and default["step_s"] > 0
    # Each option's latents against the default's, on the same seed.
    assert figures["cfg_batch_off"]["max_latent_difference"] < 1e-4
    # Exactly the default's latents: the sections after compilation measure the default
    # configuration again (its guidance hook back, no compiled block left).
    assert figures["attention_backends"]["native"]["max_latent_difference"] == 0
    assert "unavailable" in figures["attention_backends"]["flash"]
    assert 0 <= figures["fast_mode"]["blocks_skipped_share"] < 1
    turbo = figures["turbo"]  # FastWan2.2's recipe: 3 passes, then the decode
    assert (turbo["model"], turbo["transformer_passes"]) == ("fastwan2.2-ti2v-5b", 3)
    assert 0 < turbo["decoding_share"] < 1
    # The gang sections: a replica of two ranks against the one-process default.
    for name, parallelism in (("gang_auto", {"cfg": 2, "ulysses": 1}), ("gang_ulysses", {"cfg": 1, "ulysses": 2})):
        gang = figures[name]
        assert gang["parallelism"] == parallelism and gang["step_s"] > 0 and gang["speedup"] > 0, gang
        # The same latents as one process (test_parallel.py gives the tolerance).
        assert gang["max_latent_difference"] < 1e-4
        assert gang["plan_per_rank"] == "full, VAE tiling off, guidance " + (
            "one pass at a time" if parallelism["cfg"] == 2 else "batched"
        )
    assert figures["gang_auto"]["bytes_per_step_per_rank"]["cfg_all_gather"] > 0
    assert figures["gang_ulysses"]["bytes_per_step_per_rank"]["ulysses_all_to_all"] > 0
    refused = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--only", "nothing"],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "invalid choice: 'nothing'" in refused.stdout


def test_the_gang_sections_ranks_refuse_a_split_of_another_size_before_starting():
    # The sections share one set of rank processes (gpu_check.sh's test above measures both
    # splits on them): a split for another number of ranks could never meet on it.
    with gang_check.Ranks("tiny", "cpu", COMPILE_WARM_UP, 2, world=2) as ranks:
        with pytest.raises(ValueError, match="a split of 4 ranks, measured on 2"):
            ranks.measure(gang_check.splits(4)["gang_ulysses"])
        assert ranks.processes == []


def test_a_section_runs_unless_skipped_not_asked_for_or_over_the_budget(tmp_path):
    ran = []
    check = gpu_check.Check(tmp_path / "figures.json", budget_s=60, skip=["b"], only=["a", "b", "c"])
    for name, estimate_s in (("a", 1), ("b", 1), ("c", 600), ("d", 1)):
        check.section(name, estimate_s, lambda name=name: ran.append(name) or {"ran": True})
    assert ran == ["a"]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["a"]["ran"] and figures["b"] == {"skipped": "asked for (--skip)"}
    assert figures["c"]["skipped"].startswith("about 600 s needed")
    assert figures["d"] == {"skipped": "not asked for (--only)"}


def test_gpu_gib_caps_the_process_and_plans_for_that_much(monkeypatch):
    # torch.cuda faked: the cap is a CUDA allocator setting, and this machine has no GPU.
    fractions = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=140 * GiB))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device: fractions.append(f))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (139 * GiB, 140 * GiB))
    cuda = torch.device("cuda")
    assert gpu_check.planned_free_bytes(cuda, 44) == 44 * GiB and fractions == [44 / 140]
    assert gpu_check.planned_free_bytes(cuda, None) == 139 * GiB and fractions == [44 / 140]
    with pytest.raises(ValueError, match="this GPU has 140.0 GiB"):
        gpu_check.planned_free_bytes(cuda, 160)
    with pytest.raises(ValueError, match="this run has none"):
        gpu_check.planned_free_bytes(torch.device("cpu"), 44)


def test_the_docs_gpu_table_is_generated_from_the_results_files():
    # Fails when a results file was added or changed without regenerating the table.
    done = run("-m", "serve_app.benchmark.results", "--check")
    assert done.returncode == 0, done.stderr


def test_the_gpu_table_says_not_measured_where_no_run_exists_and_reads_a_run(tmp_path):
    assert "| 80 GB (A100, H100) | not measured |" in results.table(tmp_path)
    figures = {
        "started": "2026-11-25T20:00:00+00:00", "gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 79.1,
        "plan": "full, VAE tiling off, guidance batched",
        "default": {"step_s": 1.9, "seconds_per_job": {"20": 60.0, "30": 79.0, "50": 117.0, "100": 212.0},
                    "peak_gpu_memory_gib": 40.2, "predicted_peak_gib": 41.9, "ratio_to_floor": 1.6},
    }  # fmt: skip
    (tmp_path / "nvidia-h100-80gb-hbm3-2026-11-25.json").write_text(json.dumps(figures))
    row = results.table(tmp_path).splitlines()[4]
    assert row.startswith(
        "| 80 GB (A100, H100) | NVIDIA H100 80GB HBM3 | full, VAE tiling off, guidance batched | 1.9 |"
    )
    assert "| 1.9 | 60 / 79 / 117 / 212 | 40.2 (41.9) | 1.6x |" in row
    # An H200 capped to 44 GiB stands for the 48 GB class, with its own speed, said so; a run on an
    # L40 itself would come first.
    capped = {**figures, "gpu": "NVIDIA H200", "gpu_memory_gib": 44, "gpu_gib_cap": 44,
              "plan": "text_encoder_offload, VAE tiling off, guidance batched"}  # fmt: skip
    (tmp_path / "nvidia-h200-44gib-2026-11-25.json").write_text(json.dumps(capped))
    row = results.table(tmp_path).splitlines()[3]
    assert row.startswith("| 48 GB (L40, L40S) | NVIDIA H200 capped at 44 GiB (its speed, not the class's) |")
    l40 = {**figures, "gpu": "NVIDIA L40S", "gpu_memory_gib": 44.4, "started": "2026-11-01T00:00:00+00:00"}
    (tmp_path / "nvidia-l40s-2026-11-01.json").write_text(json.dumps(l40))
    assert results.table(tmp_path).splitlines()[3].startswith("| 48 GB (L40, L40S) | NVIDIA L40S |")
