"""The capacity simulation: a local multi-node Ray cluster of simulated GPU nodes serving the
app with `model: simulated`, loaded by Locust with Poisson arrivals at a chosen utilisation,
reported like any load test, with the queue wait measured beside what M/M/c predicts.

    python -m loadtests.simulate --gpu-nodes 3 --utilisation 0.8 --run-time 5m --out report/

Everything but the generation is real: Ray Serve, the jobs queue, autoscaling (from one replica
up to one per GPU node), storage, HTTP. Each job takes `--time-scale` x the time the L40
latency model gives it.
"""

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from loadtests.__main__ import main as run_load_test
from loadtests.mix import parse_mix
from serve_app.benchmark.local_cluster import cluster_config, free_port, serve_on_gpu_cluster
from serve_app.engine.simulator import l40_seconds

KEY = "capacity-simulation-key"
SIZE, FRAMES = (1280, 704), 121
AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "upscale_delay_s": 2,
    # Longer than any gap between jobs at this load: once scaled up, the cluster stays up.
    "downscale_delay_s": 120,
    "metrics_interval_s": 1,
    "look_back_period_s": 2,
}


def mean_service_s(steps_mix: str, time_scale: float) -> float:
    """The latency model's mean job time over the step mix ('20:2,30:4': steps:weight)."""
    mix = parse_mix(steps_mix)
    total = sum(mix.values())
    return sum(weight * l40_seconds(*SIZE, FRAMES, steps) for steps, weight in mix.items()) / total * time_scale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-nodes", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=0.02, help="0.02: a 6-minute job takes 7.2 s")
    parser.add_argument("--utilisation", type=float, default=0.8, help="arrival rate / capacity of all GPUs")
    parser.add_argument("--steps-mix", default="20:2,30:4,50:3,100:1")
    parser.add_argument("--run-time", default="5m")
    parser.add_argument("--users", type=int, default=4, help="Locust users sharing the arrivals")
    parser.add_argument("--out", type=Path, required=True)
    opts = parser.parse_args()
    service_s = mean_service_s(opts.steps_mix, opts.time_scale)
    arrival_rate = opts.utilisation * opts.gpu_nodes / service_s
    print(f"mean job {service_s:.2f} s; {arrival_rate:.3f} jobs/s for {opts.utilisation:.0%} of {opts.gpu_nodes} GPUs")

    with tempfile.TemporaryDirectory(prefix="wan-simulation-") as data_dir:
        args = {
            "model": "simulated",
            "simulated_time_scale": opts.time_scale,
            "data_dir": data_dir,
            "max_queued_jobs": 10_000,
            "max_jobs_per_key": 10_000,
        }
        config = cluster_config(free_port(), args, {**AUTOSCALING, "max_replicas": opts.gpu_nodes})
        with serve_on_gpu_cluster(opts.gpu_nodes, config, KEY) as url:
            return run_load_test(
                [
                    "--host", url, "--api-key", KEY, "--users", str(opts.users), "--spawn-rate", str(opts.users),
                    "--run-time", opts.run_time, "--user-classes", "JobsUser", "--steps-mix", opts.steps_mix,
                    "--size", f"{SIZE[0]}x{SIZE[1]}", "--frames", str(FRAMES),
                    "--arrival-rate", f"{arrival_rate:.4f}", "--out", str(opts.out),
                ],
                command=shlex.join(["python", "-m", "loadtests.simulate", *sys.argv[1:]]),
            )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
