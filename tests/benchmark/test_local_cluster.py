"""Autoscaling and the capacity simulation, proven on a local multi-node Ray cluster: a head
without GPU and two worker nodes that declare one GPU each (Ray's accounting places the replicas;
the generators are the capacity simulator's). Both scenarios run one after the other on one
cluster, in a process of their own since it starts its own cluster (`support/gpu_cluster.py`):
autoscaling on queue depth from zero to one replica per GPU and back, then the capacity simulation
(Poisson arrivals at 60 % of the GPUs, its queue wait against M/M/c)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.service import NO_LOAD_TEST_FAILURES, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]  # the scenarios' process has 420 s


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-cluster")
    run = subprocess.run(
        [sys.executable, "-m", "support.gpu_cluster", str(out), "--gpu-nodes", "2", "--time-scale", "0.005",
         "--utilisation", "0.6", "--run-time", "70s", "--users", "2"],
        capture_output=True, text=True, timeout=420, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
    )  # fmt: skip
    if (out / "autoscaling.json").exists():
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        shutil.copy(out / "autoscaling.json", ROOT / "test-artifacts" / "autoscaling.json")
    return run, out


def test_generators_scale_from_zero_to_one_per_gpu_and_back(scenarios):
    run, out = scenarios
    assert (out / "autoscaling.json").exists(), run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads((out / "autoscaling.json").read_text())
    assert figures["statuses"] == ["completed"] * 6
    assert figures["replicas_before"] == 0 and figures["cold_start_s"] is not None
    # Six jobs queued and three replicas allowed, but two GPUs: two replicas, never a third.
    assert figures["full_scale_s"] is not None and figures["most_replicas_running"] == 2
    nodes = {worker.split(",")[0] for worker in figures["workers"]}
    assert len(nodes) == 2 and f"node {figures['head_node']}" not in nodes
    assert all(worker.endswith("GPU 0") for worker in figures["workers"])
    # And back to none once idle.
    assert figures["replicas_after"] == 0


def test_the_capacity_simulation_scales_out_and_compares_the_queue_with_mmc(scenarios):
    run, out = scenarios
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (out / "simulation" / "report.md").read_text()
    assert "**capacity simulator** (L40: 20 s + 3.6 s per transformer pass at 1280x704x121)" in report, report
    # It scaled out to both GPU nodes (from one, or from none where the first sample came before it).
    assert "open loop at" in report and re.search(r"generator replicas seen: (0, )?1, 2\n", report), report
    assert "| 30 steps |" in report and "guide (L40) x 0.005" in report, report
    theory = report.split("## Queue wait against queueing theory")[1]
    assert "replicas were running" in theory and "| mean |" in theory and "M/M/c" in theory, report
    assert NO_LOAD_TEST_FAILURES in report, report
