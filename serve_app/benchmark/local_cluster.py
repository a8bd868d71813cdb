"""A local multi-node Ray cluster of simulated GPU nodes, serving the app: a head node without
GPU and worker nodes that each declare one GPU. Ray's accounting is what places the generator
replicas, one per "GPU"; the work itself runs on the CPU. Used by the autoscaling benchmark, the
capacity simulation and the tests (which deploy their configs with `deploy_config`)."""

import os
import random
import secrets
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from serve_app.config import AppArgs
from serve_app.deployments import (
    APP,
    GENERATOR,
    GPUS_PER_GENERATOR,
    INGRESS,
    app_status,
    generator_names,
    replica_states,
)

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

LOOPBACK = "127.0.0.1"


# Between Ray's worker ports (its default min/max_worker_port: 10002-19999) and the kernel's
# ephemeral ones (Linux's default ip_local_port_range: 32768-60999), from which every bind to port
# 0 draws, Ray's own components' among them: a port found free there could be taken before its
# user binds it (a multi-node scenario's Serve proxy, bound a minute after its port was chosen,
# once failed to).
FREE_PORTS = range(20000, 32768)


def free_port() -> int:
    """A port of 127.0.0.1 that nothing holds, in `FREE_PORTS`."""
    for port in random.sample(FREE_PORTS, 100):
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port among 100 of {FREE_PORTS}")


def cluster_config(port: int, args: dict[str, Any], autoscaling: dict[str, Any]) -> dict[str, Any]:
    """A Serve config of the app whose generators (one deployment per model) ask for one GPU a
    replica and autoscale."""
    generators = [
        {
            "name": name,
            # A GPU from Ray's point of view, though the work runs on the CPU.
            "ray_actor_options": {"num_gpus": GPUS_PER_GENERATOR, "num_cpus": 1},
            "autoscaling_config": {"target_ongoing_requests": 1, **autoscaling},
            "graceful_shutdown_timeout_s": 30,
        }
        for name in generator_names(AppArgs.model_validate(args)).values()
    ]
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port, "request_timeout_s": 600},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serve_app.app:build_app",
                "args": args,
                "deployments": [
                    {"name": INGRESS, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0}},
                    *generators,
                ],
            }
        ],
    }


def deploy_config(config: dict[str, Any], ready_within_s: float | None = 120, wait: bool = True) -> str:
    """Deploy a Serve config on the connected Ray cluster the way `serve run CONFIG` does, and
    return its URL once `/readyz` says ready (None: at once, for generators that scale from zero).
    `wait=False`: without waiting for Serve to say the applications run (its own wait is 60 s)."""
    import httpx
    from ray.serve._private import api as serve_private_api
    from ray.serve.schema import ServeDeploySchema

    # Private API, but it is exactly what `serve run CONFIG` calls (ray/serve/scripts.py).
    schema = ServeDeploySchema.model_validate(config)
    client = serve_private_api.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema, _blocking=wait)
    url = f"http://127.0.0.1:{schema.http_options.port}"
    if ready_within_s is None:
        return url
    deadline = time.monotonic() + ready_within_s
    while httpx.get(f"{url}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} was not ready within {ready_within_s:g} s")
        time.sleep(0.5)
    return url


def local_head(**node_args: Any) -> "Cluster":
    """A Ray head of this process's own (never a cluster another process started), for a driver
    that takes no logs (`log_to_driver=False`): no dashboard, and no log monitor, which forwards the
    workers' logs to drivers (15 core-s of a test run)."""
    from ray.cluster_utils import Cluster

    return Cluster(
        initialize_head=True, head_node_args={"include_dashboard": False, "include_log_monitor": False, **node_args}
    )


@contextmanager
def gpu_cluster(gpu_nodes: int, api_keys: Sequence[str]) -> Iterator[None]:
    """Start the cluster, accepting `api_keys`, and connect to it; shut everything down after."""
    import ray
    from ray import serve

    os.environ["WAN_API_KEYS"] = ",".join(api_keys)  # inherited by the nodes' processes
    os.environ.setdefault("WAN_KEY_ID_SECRET", secrets.token_hex(32))
    cluster = local_head(num_cpus=2, num_gpus=0)
    for _ in range(gpu_nodes):
        cluster.add_node(num_cpus=2, num_gpus=GPUS_PER_GENERATOR)  # one generator replica a node
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def deploy_running(config: dict[str, Any]) -> str:
    """Deploy `config` on the connected cluster and return its base URL once every application
    runs: within 240 s, not Serve's own 60 s (on a busy 2-core machine the nodes take longer to
    start the apps)."""
    url = deploy_config(config, ready_within_s=None, wait=False)
    deadline = time.monotonic() + 240
    for app in config["applications"]:
        wait_running(app["name"], deadline)
    return url


@contextmanager
def serve_on_gpu_cluster(gpu_nodes: int, config: dict[str, Any], api_key: str) -> Iterator[str]:
    """Start the cluster, deploy `config` and yield its base URL; shut everything down after."""
    with gpu_cluster(gpu_nodes, [api_key]):
        yield deploy_running(config)


def wait_running(name: str, deadline: float) -> None:
    """Until Serve says the application `name` runs (every deployment healthy), by `deadline`."""
    while (status := app_status(name)) != "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"application {name} not running: {status}")
        time.sleep(0.5)


def generator_replicas() -> dict[str, int]:
    """The default model's generator replicas by state."""
    return replica_states(APP, GENERATOR)
