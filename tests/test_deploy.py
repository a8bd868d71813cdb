"""The deploy files: the KubeRay manifest agrees with serve_config.yaml and with itself, the
image is built on the pinned Ray version, and the dashboard shows metrics that exist."""

import json
import re
from pathlib import Path

import ray
import yaml
from ray.serve.schema import ServeDeploySchema
from test_configs import unknown_keys

from serve_app import metrics
from serve_app.auth import KEYS_ENV
from serve_app.webhooks import SECRET_ENV

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# What the manifest may set differently from serve_config.yaml: paths on its volumes.
STORAGE_ARGS = {"model", "data_dir", "results_url"}


def manifest() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "rayservice.yaml").read_text()))


def rayservice() -> dict:
    (service,) = [doc for doc in manifest() if doc["kind"] == "RayService"]
    return service


def serve_config_v2() -> dict:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def by_name(items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in items}


def containers(service: dict) -> list[dict]:
    cluster = service["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def test_serve_config_v2_is_valid_for_ray_and_agrees_with_serve_config_yaml():
    config = serve_config_v2()
    ServeDeploySchema.model_validate(config)
    assert unknown_keys(config) == []
    production = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert config["http_options"] == production["http_options"]
    assert config["proxy_location"] == production["proxy_location"]
    (app,), (prod_app,) = config["applications"], production["applications"]
    for key in ("name", "route_prefix", "import_path"):
        assert app[key] == prod_app[key]
    assert {k: v for k, v in app["args"].items() if k not in STORAGE_ARGS} == {
        k: v for k, v in prod_app["args"].items() if k not in STORAGE_ARGS
    }
    deployments, prod_deployments = by_name(app["deployments"]), by_name(prod_app["deployments"])
    assert {name: deployments[name] for name in prod_deployments} == prod_deployments
    # The only addition: the Jobs replica placed on the head, whose volume holds the database.
    assert set(deployments) - set(prod_deployments) == {"Jobs"}
    assert deployments["Jobs"] == {"name": "Jobs", "ray_actor_options": {"num_cpus": 0, "resources": {"wan_state": 1}}}


def test_the_cluster_fits_the_application():
    service = rayservice()
    spec, config = service["spec"], serve_config_v2()
    cluster = spec["rayClusterConfig"]
    app = config["applications"][0]
    generator = by_name(app["deployments"])["Generator"]
    head = cluster["headGroupSpec"]
    (gpu,) = cluster["workerGroupSpecs"]

    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    # The head runs no jobs, and offers the resource that pins the Jobs replica.
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert json.loads(json.loads(head["rayStartParams"]["resources"])) == {"wan_state": 1}
    # One GPU per worker pod, one GPU per generator replica, as many pods as replicas at most.
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == generator["ray_actor_options"]["num_gpus"] == 1
    assert gpu["maxReplicas"] == generator["autoscaling_config"]["max_replicas"]
    assert gpu["minReplicas"] == generator["autoscaling_config"]["min_replicas"]
    assert gpu["template"]["spec"]["tolerations"] and gpu["template"]["spec"]["nodeSelector"]
    # The old cluster outlives its longest job after an upgrade.
    assert spec["rayClusterDeletionDelaySeconds"] > generator["graceful_shutdown_timeout_s"] >= 15 * 60


def test_images_ports_secrets_and_volumes_are_consistent():
    service = rayservice()
    config = serve_config_v2()
    args = config["applications"][0]["args"]
    all_containers = containers(service)
    dockerfile = (DEPLOY / "Dockerfile").read_text()

    assert len({c["image"] for c in all_containers}) == 1
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-py311-gpu$", dockerfile, re.M)
    assert "pip install --no-cache-dir . " in dockerfile and "COPY --chown=ray:users serve_app" in dockerfile
    assert f"EXPOSE {config['http_options']['port']}" in dockerfile

    for container in all_containers:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == config["http_options"]["port"]
        assert ports["metrics"] == 8080
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert env[KEYS_ENV]["name"] == "wan-api-keys" and not env[KEYS_ENV].get("optional")
        assert env[SECRET_ENV]["name"] == "wan-webhook-secret"
    cluster = service["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"

    claims = {doc["metadata"]["name"] for doc in manifest() if doc["kind"] == "PersistentVolumeClaim"}
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    mounted: dict[str, set[str]] = {}
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for container in pod["spec"]["containers"]:
            for mount in container["volumeMounts"]:
                volume = volumes[mount["name"]]
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
                mounted.setdefault(mount["mountPath"], set()).add(container["name"])
    # The paths in the application's arguments are on volumes, where the processes using them run.
    # State and results on one volume that every pod mounts (read by every ingress replica, and
    # shared by the old and the new cluster's heads during an upgrade).
    assert args["data_dir"] == "/data/state" and args["results_url"] == "/data/results"
    assert mounted["/data"] == {"ray-head", "ray-worker"}
    (data,) = [
        doc for doc in manifest() if doc["kind"] == "PersistentVolumeClaim" and doc["metadata"]["name"] == "wan-data"
    ]
    assert data["spec"]["accessModes"] == ["ReadWriteMany"]
    assert args["model"].startswith("/models/") and mounted["/models"] == {"ray-worker"}


def test_the_dashboard_shows_only_metrics_that_exist():
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"ray_(wan_\w+?)(?:_total|_bucket|_count|_sum)?\b", expr)}
    source = Path(metrics.__file__).read_text()
    defined = set(re.findall(r'"(wan_\w+)"', source))
    assert used and used <= defined
    assert defined <= used  # every metric is on the dashboard
