"""Autoscaling on queue depth, one replica per GPU, proven on a multi-node local Ray cluster: a
head without GPU and two worker nodes that declare one GPU each (Ray's accounting places the
replicas; the generators are the capacity simulator's). The scenario is the autoscaling benchmark's, in a
process of its own since it starts its own cluster."""

import json
import subprocess
import sys

import pytest
from support.service import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(330)  # a cluster of its own; the subprocess has 300 s
def test_generators_scale_from_zero_to_one_per_gpu_and_back(tmp_path):
    figures_path = ROOT / "test-artifacts" / "autoscaling.json"
    figures_path.parent.mkdir(exist_ok=True)
    run = subprocess.run(
        [sys.executable, "-m", "serve_app.benchmark.autoscaling", "--gpu-nodes", "2", "--jobs", "6", "--json",
         str(figures_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    assert figures["statuses"] == ["completed"] * 6
    assert figures["replicas_before"] == 0 and figures["cold_start_s"] is not None
    # Six jobs queued and three replicas allowed, but two GPUs: two replicas, never a third.
    assert figures["full_scale_s"] is not None and figures["most_replicas_running"] == 2
    nodes = {worker.split(",")[0] for worker in figures["workers"]}
    assert len(nodes) == 2 and f"node {figures['head_node']}" not in nodes
    assert all(worker.endswith("GPU 0") for worker in figures["workers"])
    # And back to none once idle.
    assert figures["replicas_after"] == 0
