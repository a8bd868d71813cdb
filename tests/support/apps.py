"""The applications on the session's Ray cluster, each under a route prefix of its own.

A Serve config is declarative: an application left out of a deploy is deleted. So every deploy
sends every application the session holds, and Serve leaves the unchanged ones as they are. A
test that breaks an application (kills a replica, restarts it, updates it) gets one of its own,
`model: simulated` (steps that sleep), and nothing has to be restored after it."""

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import ray
import yaml
from ray import serve

from serve_app.benchmark.local_cluster import deploy_config, wait_running
from serve_app.deployments import GENERATOR, gang_rank_prefix
from support.polling import poll
from support.service import ROOT, TEST_ARGS

# The simulator's factor on the L40 latency model: SLOW (256x256x121, 100 steps) takes about 5 s,
# 0.05 s a step; SMALL takes a few milliseconds.
TIME_SCALE = 0.1
# The jobs replicas' heartbeat and the silence after which another adopts their jobs: short here.
HANDOVER_ARGS = {"jobs_heartbeat_s": 0.2, "jobs_silent_s": 1.5}


@dataclass(frozen=True)
class DeployedApp:
    name: str
    url: str
    client: httpx.Client  # with the first test key


def local_app() -> dict:
    """The application of serve_config.local.yaml."""
    return copy.deepcopy(yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())["applications"][0])


class Apps:
    """Deploys applications beside each other on the connected cluster, on one HTTP port."""

    def __init__(self, http_options: dict) -> None:
        self._http_options = http_options
        self._apps: dict[str, dict] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http_options['port']}"

    def config(self) -> dict:
        """The Serve config of every application held."""
        return {
            "proxy_location": "HeadOnly",
            "http_options": self._http_options,
            "applications": list(self._apps.values()),
        }

    def deploy(self, app: dict, ready_within_s: float = 240) -> str:
        """Add or replace `app` (by name); its URL, once it runs and its `/readyz` says ready."""
        if app["name"] not in self._apps:
            return self.deploy_all([app], ready_within_s)[0]
        # An update: Serve's own wait sees the new config through (the status still reads RUNNING,
        # the old one's, until the controller takes it).
        self._apps[app["name"]] = copy.deepcopy(app)
        deploy_config(self.config(), ready_within_s=None)
        wait_ready(self.url(app["name"]), ready_within_s)
        return self.url(app["name"])

    def deploy_all(self, apps: list[dict], ready_within_s: float = 240) -> list[str]:
        """`deploy` for several new applications at once: Serve starts their replicas together. Waits for each to
        run (Serve's status) and to be ready, `ready_within_s` in all (not Serve's own 60 s: on a
        busy 2-core machine a module's applications take longer to start together)."""
        for app in apps:
            self._apps[app["name"]] = copy.deepcopy(app)
        deploy_config(self.config(), ready_within_s=None, wait=False)
        deadline = time.monotonic() + ready_within_s
        for app in apps:
            wait_running(app["name"], deadline)
            wait_ready(self.url(app["name"]), max(1.0, deadline - time.monotonic()))
        return [self.url(app["name"]) for app in apps]

    def url(self, name: str) -> str:
        return self.base_url + self._apps[name]["route_prefix"].rstrip("/")

    def __contains__(self, name: str) -> bool:
        return name in self._apps

    def app(self, name: str) -> dict:
        """A copy of the application `name` as deployed, to change and deploy again."""
        return copy.deepcopy(self._apps[name])

    def remove(self, name: str) -> None:
        """Delete the application without waiting for its replicas to stop."""
        del self._apps[name]
        serve.delete(name, _blocking=False)

    def simulated(self, name: str, data_dir: Path, fast_handover: bool = True, **args: object) -> dict:
        """An application `name` under `/name`: the local config's deployments (its default
        model's Generator only) with no CPU asked, the test caps, `model: simulated`, a fast
        handover unless told otherwise (its heartbeat is database work five times a second), and
        `args`."""
        app = local_app()
        app.update(name=name, route_prefix=f"/{name}")
        app["args"] = {
            **TEST_ARGS, **(HANDOVER_ARGS if fast_handover else {}),
            "model": "simulated", "simulated_time_scale": TIME_SCALE, "device": "cpu",
            "data_dir": str(data_dir), "cache_dir": str(data_dir / "cache"), **args,
        }  # fmt: skip
        # One model: the local config's other models' Generator deployments are not in this app.
        app["deployments"] = [d for d in app["deployments"] if not d["name"].startswith(f"{GENERATOR}-")]
        for deployment in app["deployments"]:
            deployment["ray_actor_options"] = {"num_cpus": 0, "num_gpus": 0}
        return app


def wait_ready(url: str, within_s: float = 120) -> None:
    """Until `url/readyz` answers 200 (a generator replica has its model loaded)."""

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False  # the proxy is being replaced

    poll(ready, timeout_s=within_s, every_s=0.2, what=f"{url} being ready")


def kill_replica(app: str, deployment: str) -> None:
    """Kill the replica's worker process (ray.kill is a SIGKILL), as a crash or an OOM kill would."""
    (name,) = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")
    ]
    ray.kill(ray.get_actor(name, namespace="serve"))


def kill_gang_rank(app: str, deployment: str, rank: int) -> None:
    """Kill one of the other ranks of the replica of `deployment` (a gang of several GPUs), as a
    crash would."""
    (actor,) = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(gang_rank_prefix(app, deployment)) and actor["name"].endswith(f"#{rank}")
    ]
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
