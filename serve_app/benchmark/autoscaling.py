"""Autoscaling on queue depth, on a local multi-node Ray cluster of simulated GPU nodes.

    python -m serve_app.benchmark.autoscaling [--gpu-nodes 2] [--jobs 4] [--json out.json]

A head node with no GPU and `--gpu-nodes` worker nodes that each declare one GPU (Ray's
accounting is what places replicas). The generators are the capacity simulator's (`model:
simulated`): each job takes 2 % of the time an L40 would, about 5 s, and no CPU, so that what is
measured is Serve's scaling, not this machine's speed. The
generator deployment scales from zero, up to one replica per GPU, with one replica more allowed
than there are GPUs, to show that it is never placed without one, and back to zero when idle.
It prints what it measured: cold start, time to full scale, the most replicas running, where
each job ran, and the time back to zero.
"""

import argparse
import json
import tempfile
import time
from typing import Any

import httpx

from serve_app.benchmark.local_cluster import cluster_config, free_port, generator_replicas, serve_on_gpu_cluster
from serve_app.messages import JobStatus

KEY = "autoscaling-bench-key"
# 236 s on an L40 by the simulator's latency model; TIME_SCALE of that here.
JOB = {"prompt": "a windmill", "height": 704, "width": 1280, "num_frames": 121, "num_inference_steps": 30}
TIME_SCALE = 0.02
AUTOSCALING = {
    "min_replicas": 0,
    "initial_replicas": 0,
    "upscale_delay_s": 1,
    "downscale_delay_s": 5,
    "downscale_to_zero_delay_s": 5,
    "metrics_interval_s": 1,
    "look_back_period_s": 2,
}


def run(gpu_nodes: int, jobs: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="wan-autoscaling-") as data_dir,
        serve_on_gpu_cluster(gpu_nodes, scenario_config(gpu_nodes, free_port(), data_dir), KEY) as url,
    ):
        return measure(url, gpu_nodes, jobs)


def scenario_config(gpu_nodes: int, port: int, data_dir: str) -> dict[str, Any]:
    """The Serve config of the scenario, served on `port`, its data in `data_dir`."""
    args = {"model": "simulated", "simulated_time_scale": TIME_SCALE, "data_dir": data_dir}
    # One replica more allowed than there are GPUs, to show that none is placed without one.
    return cluster_config(port, args, {**AUTOSCALING, "max_replicas": gpu_nodes + 1})


def measure(url: str, gpu_nodes: int, jobs: int) -> dict[str, Any]:
    """Submit `jobs` jobs at once to the scenario's app at `url` (no generator replica yet), follow
    the replicas until every job ends and they are back to none; the figures."""
    import ray

    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    idle = generator_replicas().get("RUNNING", 0)
    started = time.monotonic()
    ids = [api.post("/v1/videos", json=JOB).raise_for_status().json()["id"] for _ in range(jobs)]
    first = full = None
    most_running = 0
    states_seen: set[str] = set()
    while True:
        states = generator_replicas()
        states_seen |= {state for state, count in states.items() if count}
        running = states.get("RUNNING", 0)
        most_running = max(most_running, running)
        now = time.monotonic() - started
        first = first if first is not None or running < 1 else now
        full = full if full is not None or running < gpu_nodes else now
        finished = [api.get(f"/v1/videos/{job_id}").json() for job_id in ids]
        if all(JobStatus(job["status"]).is_terminal for job in finished):
            break
        time.sleep(0.25)
    done = time.monotonic()
    deadline = done + 120
    while (
        generator_replicas().get("RUNNING", 0) or generator_replicas().get("STOPPING", 0)
    ) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {
        "head_node": ray.get_runtime_context().get_node_id()[:12],
        "gpu_nodes": gpu_nodes,
        "jobs": jobs,
        "replicas_before": idle,
        "cold_start_s": round(first, 1) if first is not None else None,
        "full_scale_s": round(full, 1) if full is not None else None,
        "most_replicas_running": most_running,
        "replica_states_seen": sorted(states_seen),
        "all_jobs_s": round(done - started, 1),
        "back_to_zero_s": round(time.monotonic() - done, 1),
        "replicas_after": sum(generator_replicas().values()),
        "statuses": [job["status"] for job in finished],
        "workers": [job["worker"] for job in finished],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-nodes", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--json", help="also write the figures here")
    opts = parser.parse_args()
    figures = run(opts.gpu_nodes, opts.jobs)
    print(json.dumps(figures, indent=2))
    if opts.json:
        with open(opts.json, "w") as out:
            json.dump(figures, out, indent=2)


if __name__ == "__main__":
    main()
