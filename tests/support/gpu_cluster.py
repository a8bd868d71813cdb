"""The end-to-end scenarios of a local multi-node cluster of simulated GPU nodes, one after the
other on one cluster (starting one is much of either's time on 2 cores): autoscaling from zero
(`serve_app.benchmark.autoscaling`, its figures to `OUT/autoscaling.json`), then the capacity
simulation (`loadtests.simulate`, its options after `OUT`, its report to `OUT/simulation`).
Exits with the simulation's status.

    PYTHONPATH=tests python -m support.gpu_cluster OUT --gpu-nodes 2 --run-time 45s ...
"""

import json
import shlex
import sys
import tempfile
from pathlib import Path

from ray import serve

from loadtests import simulate
from serve_app.benchmark import autoscaling
from serve_app.benchmark.local_cluster import deploy_running, free_port, gpu_cluster
from serve_app.deployments import APP

AUTOSCALING_JOBS = 6


def main(out: Path, simulation_argv: list[str]) -> int:
    opts = simulate.parse_options([*simulation_argv, "--out", str(out / "simulation")])
    port = free_port()  # Serve's HTTP options are fixed by the first deploy
    with gpu_cluster(opts.gpu_nodes, [autoscaling.KEY, simulate.KEY]):
        with tempfile.TemporaryDirectory(prefix="wan-autoscaling-") as data_dir:
            url = deploy_running(autoscaling.scenario_config(opts.gpu_nodes, port, data_dir))
            figures = autoscaling.measure(url, opts.gpu_nodes, AUTOSCALING_JOBS)
            (out / "autoscaling.json").write_text(json.dumps(figures, indent=2))
            serve.delete(APP)
        with tempfile.TemporaryDirectory(prefix="wan-simulation-") as data_dir:
            url = deploy_running(simulate.simulation_config(opts, port, data_dir))
            return simulate.load(url, opts, shlex.join(["python", "-m", "loadtests.simulate", *simulation_argv]))


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
