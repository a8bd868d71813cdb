"""The capacity simulation: a local multi-node Ray cluster of simulated GPU nodes serving the
app with the production config's models simulated (the default, and those the mix names, such as
`fastwan2.2-ti2v-5b@3:1`: each with its own Generator deployment and its own passes), loaded by
Locust with Poisson arrivals at a chosen utilisation, reported like any load test, with the queue
wait measured beside what M/M/c predicts (for one model; with several, their deployments share the
GPU nodes).

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

import yaml

from loadtests.__main__ import main as run_load_test
from loadtests.mix import parse_mix
from serve_app.benchmark.local_cluster import cluster_config, free_port, serve_on_gpu_cluster
from serve_app.benchmark.results import ROOT
from serve_app.config import AppArgs
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


def simulated_models(steps_mix: str) -> list[dict]:
    """The production config's models that the mix asks for (and the default), simulated: each
    with its recipe, so that the latency model counts its transformer passes."""
    production = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]["args"]["models"]
    asked = {choice.model for choice in parse_mix(steps_mix)}
    unknown = asked - {None} - {model["id"] for model in production}
    if unknown:
        raise ValueError(f"the mix names models that serve_config.yaml does not serve: {sorted(unknown)}")
    chosen = [model for index, model in enumerate(production) if index == 0 or model["id"] in asked]
    return [{**model, "checkpoint": "simulated", "revision": None} for model in chosen]


def mean_service_s(steps_mix: str, time_scale: float) -> float:
    """The latency model's mean job time over the mix ('20:2,fastwan2.2-ti2v-5b@3:1'), each job's
    passes by its model's guidance."""
    mix = parse_mix(steps_mix)
    recipes = {spec.id: spec.recipe for spec in AppArgs(models=simulated_models(steps_mix)).served_models}
    default = next(iter(recipes))
    total = sum(mix.values())
    seconds = sum(
        weight * l40_seconds(*SIZE, FRAMES, choice.steps, guidance=recipes[choice.model or default].guidance)
        for choice, weight in mix.items()
    )
    return seconds / total * time_scale


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu-nodes", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=0.02, help="0.02: a 6-minute job takes 7.2 s")
    parser.add_argument("--utilisation", type=float, default=0.8, help="arrival rate / capacity of all GPUs")
    parser.add_argument("--steps-mix", default="20:2,30:4,50:3,100:1")
    parser.add_argument("--run-time", default="5m")
    parser.add_argument("--users", type=int, default=4, help="Locust users sharing the arrivals")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def simulation_config(opts: argparse.Namespace, port: int, data_dir: str) -> dict:
    """The Serve config of the simulation, served on `port`, its data in `data_dir`."""
    args = {
        "models": simulated_models(opts.steps_mix),
        "simulated_time_scale": opts.time_scale,
        "data_dir": data_dir,
        "max_queued_jobs": 10_000,
        "max_jobs_per_key": 10_000,
    }
    return cluster_config(port, args, {**AUTOSCALING, "max_replicas": opts.gpu_nodes})


def load(url: str, opts: argparse.Namespace, command: str) -> int:
    """Load the simulation's app at `url` with Poisson arrivals for `opts.run_time`, and write the
    report (`command`: how the run was started); Locust's exit status."""
    service_s = mean_service_s(opts.steps_mix, opts.time_scale)
    arrival_rate = opts.utilisation * opts.gpu_nodes / service_s
    print(f"mean job {service_s:.2f} s; {arrival_rate:.3f} jobs/s for {opts.utilisation:.0%} of {opts.gpu_nodes} GPUs")
    return run_load_test(
        [
            "--host", url, "--api-key", KEY, "--users", str(opts.users), "--spawn-rate", str(opts.users),
            "--run-time", opts.run_time, "--user-classes", "JobsUser", "--steps-mix", opts.steps_mix,
            "--size", f"{SIZE[0]}x{SIZE[1]}", "--frames", str(FRAMES),
            "--arrival-rate", f"{arrival_rate:.4f}", "--out", str(opts.out),
        ],
        command=command,
    )  # fmt: skip


def main() -> int:
    opts = parse_options()
    with (
        tempfile.TemporaryDirectory(prefix="wan-simulation-") as data_dir,
        serve_on_gpu_cluster(opts.gpu_nodes, simulation_config(opts, free_port(), data_dir), KEY) as url,
    ):
        return load(url, opts, shlex.join(["python", "-m", "loadtests.simulate", *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
